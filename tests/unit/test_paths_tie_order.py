"""Paths over real day files, per session and per person: events of one session at one instant
follow their event ids in code-point order, whether the scan orders them by their position in a
file claiming that order (no id read), or by their ids (a file written before the claim,
PostgreSQL's rows), or, when positions cannot tell (two files, two stored keys, a file and
PostgreSQL), by the ids read again.

Each case's ids are such that an order other than code points' gives another path: `A1` (/a),
`B2` (/b), `a3` (/c) is /a -> /b -> /c by code point, but /a -> /c -> /b in a language's order
(case ignored first) and in a file sorted by stored key when `B2`'s key is the smaller."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.common.day_files.layout import EVENT_FILE_SCHEMA, TIE_ORDER, TIE_ORDER_KEY
from services.query.analyses.conditions import EventScope
from services.query.analyses.paths import paths_spec, run_paths
from services.query.analyses.requests import PathsRequest
from services.query.event_scan import ties_by_position
from services.query.person_aliases import ALIAS_SCHEMA
from services.query.scan_engine import STORED_COLUMNS, ScanEngine
from tests.support.scan_views import engine_views

DAY = datetime(2024, 3, 1, tzinfo=UTC)
TIE = DAY + timedelta(hours=5)
SESSION_MAX = timedelta(hours=1)
PAGE = {"A1": "/a", "B2": "/b", "a3": "/c"}
DEVICE, USER = 2, 3  # stored person keys: the device's, and its user's after an identify


def rows(ids: list[str], key: int = USER) -> pa.Table:
    """Pageviews of session s1 at one instant, one per id, of stored person key `key`, in
    the order given (the order they are written in)."""
    columns: dict[str, list[object]] = {}
    for field in EVENT_FILE_SCHEMA:
        values: list[object]
        if field.name == "event_id":
            values = list(ids)
        elif field.name == "path":
            values = [PAGE[i] for i in ids]
        elif field.name in ("ts", "received_at"):
            values = [TIE] * len(ids)
        elif field.name == "person_key":
            values = [key] * len(ids)
        elif field.name == "device_key":
            values = [DEVICE if key == DEVICE else None] * len(ids)
        elif pa.types.is_boolean(field.type):
            values = [False] * len(ids)
        else:
            fixed = {
                "project_id": "acme",
                "name": "$pageview",
                "type": "page",
                "distinct_id": "device-1",
                "anonymous_id": "device-1",
                "session_id": "s1",
            }
            values = [fixed.get(field.name)] * len(ids)
        columns[field.name] = values
    return pa.table(columns, schema=EVENT_FILE_SCHEMA)


def day_file(path: Path, table: pa.Table, *, claimed: bool) -> str:
    """`table` written as it is, its footer claiming the tie order or not."""
    if claimed:
        table = table.replace_schema_metadata({TIE_ORDER_KEY: TIE_ORDER})
    pq.write_table(table, path)
    return str(path)


def answer(
    files: list[str], hot: list[pa.Table], per: str = "session"
) -> tuple[dict[str, int], int, int]:
    """Paths' edges and count over these files and PostgreSQL rows, and how many event ids
    the scan gives (`events_scan_stored.tie_id`)."""
    engine = ScanEngine()
    con = engine.connection()
    hot = [t.select(list(STORED_COLUMNS)) for t in hot]
    aliases = pa.table(
        {"distinct_id": ["device-1"], "person_id": ["user-1"], "device_key": [DEVICE]}
        | {"person_key": [USER]},
        schema=ALIAS_SCHEMA,
    )
    try:
        keyed = engine_views(
            con, engine, files, hot=hot, aliases=aliases, start=DAY, end=DAY + timedelta(days=1)
        )
        assert keyed
        spec = paths_spec(PathsRequest(steps=5, per=per))
        # As open_scan says it: without PostgreSQL's rows and with every file claiming the
        # order, paths read no ids unless a tie is of two files or two stored keys.
        positioned = ties_by_position(hot, files, engine.file_columns)
        scope = EventScope(
            DAY, DAY + timedelta(days=1), person_keys=True, ties_by_position=positioned
        )
        result = run_paths(con, spec, scope, TIE - SESSION_MAX, TIE + SESSION_MAX, SESSION_MAX)
        ((ids,),) = con.sql("SELECT count(tie_id) FROM events_scan_stored").fetchall()
    finally:
        con.close()
        engine.close()
    edges = {f"{e.step}_{e.source} -> {e.step + 1}_{e.target}": e.value for e in result.edges}
    return edges, result.paths, ids


CODE_POINT_PATH = {"1_/a -> 2_/b": 1, "2_/b -> 3_/c": 1}


@pytest.mark.parametrize("per", ["session", "person"])
def test_a_file_claiming_the_tie_order_is_ordered_by_position(tmp_path: Path, per: str) -> None:
    # Written in code-point order, as the export writes; the scan gives no ids at all.
    files = [day_file(tmp_path / "p.parquet", rows(["A1", "B2", "a3"]), claimed=True)]
    assert answer(files, [], per) == (CODE_POINT_PATH, 1, 0)


@pytest.mark.parametrize("per", ["session", "person"])
def test_a_file_without_the_claim_is_ordered_by_its_ids(tmp_path: Path, per: str) -> None:
    # Written in a language's order (as exports comparing ids in the database's collation
    # did): position would give /a -> /c -> /b.
    files = [day_file(tmp_path / "p.parquet", rows(["A1", "a3", "B2"]), claimed=False)]
    assert answer(files, [], per) == (CODE_POINT_PATH, 1, 3)


@pytest.mark.parametrize("per", ["session", "person"])
@pytest.mark.parametrize("case", ["two-files", "two-stored-keys", "file-and-postgresql"])
def test_ties_positions_cannot_order_are_ordered_by_ids_read_again(
    tmp_path: Path, case: str, per: str
) -> None:
    hot: list[pa.Table] = []
    if case == "two-files":
        # The day's export and a late part, both claiming: /b arrived late.
        files = [
            day_file(tmp_path / "export.parquet", rows(["A1", "a3"]), claimed=True),
            day_file(tmp_path / "late.parquet", rows(["B2"]), claimed=True),
        ]
    elif case == "two-stored-keys":
        # /b sent before an identify (the device's key, the smaller): the file holds it first.
        both = pa.concat_tables([rows(["B2"], key=DEVICE), rows(["A1", "a3"])])
        files = [day_file(tmp_path / "p.parquet", both, claimed=True)]
    else:
        # /b arrived after the day's export, still in PostgreSQL.
        files = [day_file(tmp_path / "p.parquet", rows(["A1", "a3"]), claimed=True)]
        hot = [rows(["B2"])]
    edges, paths, _ = answer(files, hot, per)
    assert (edges, paths) == (CODE_POINT_PATH, 1)


def test_only_scans_without_postgresql_rows_and_with_every_file_claiming_skip_ids(
    tmp_path: Path,
) -> None:
    engine = ScanEngine()
    claimed = day_file(tmp_path / "c.parquet", rows(["A1", "a3"]), claimed=True)
    unclaimed = day_file(tmp_path / "u.parquet", rows(["B2"]), claimed=False)
    hot = rows(["B2"]).select(list(STORED_COLUMNS))
    try:
        assert ties_by_position([], [claimed], engine.file_columns)
        assert ties_by_position([hot.slice(0, 0)], [claimed], engine.file_columns)
        assert not ties_by_position([], [claimed, unclaimed], engine.file_columns)
        assert not ties_by_position([hot], [claimed], engine.file_columns)
    finally:
        engine.close()
