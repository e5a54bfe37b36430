"""Day files with and without person keys (migration 0024): parts written before the keys are
still day files, read by id; a scan is keyed only when every part, row and alias is."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from libs.common.day_files.layout import (
    EVENT_FILE_SCHEMA,
    LATER_COLUMNS,
    is_day_file_schema,
    with_day_file_schema,
)
from libs.common.day_files.parquet_parts import read_part_contents, write_part
from services.query.event_scan import _build_view
from services.query.person_aliases import ALIAS_SCHEMA
from services.query.scan_engine import ScanEngine

DAY = date(2025, 5, 6)
T0 = datetime(2025, 5, 6, 9, 0, tzinfo=UTC)


def rows(ids: list[tuple[str, str | None]], keys: dict[str, int] | None) -> pa.Table:
    """One pageview per (distinct_id, user_id), in the day-file schema; keys as the aggregator
    assigns them (None: a part written before the keys, without their columns)."""
    n = len(ids)
    columns: dict[str, pa.Array] = {
        "project_id": pa.array(["acme"] * n),
        "ts": pa.array([T0 + timedelta(minutes=i) for i in range(n)], pa.timestamp("us", "UTC")),
        "event_id": pa.array([f"e{i:03d}" for i in range(n)]),
        "name": pa.array(["$pageview"] * n),
        "type": pa.array(["page"] * n),
        "distinct_id": pa.array([d for d, _ in ids]),
        "user_id": pa.array([u for _, u in ids], pa.string()),
        "is_bot": pa.array([False] * n),
        "non_interactive": pa.array([False] * n),
        "received_at": pa.array([T0] * n, pa.timestamp("us", "UTC")),
    }
    if keys is not None:
        columns["person_key"] = pa.array([keys[u if u is not None else d] for d, u in ids])
        columns["device_key"] = pa.array(
            [keys[d] if u is not None and u != d else None for d, u in ids], pa.int64()
        )
    table = pa.table(columns)
    for field in EVENT_FILE_SCHEMA:
        if field.name not in table.column_names and field.name not in LATER_COLUMNS:
            table = table.append_column(field.name, pa.nulls(n, field.type))
    if keys is None:
        legacy = pa.schema([f for f in EVENT_FILE_SCHEMA if f.name not in LATER_COLUMNS])
        return table.select(legacy.names).cast(legacy)
    return table.select(EVENT_FILE_SCHEMA.names).cast(EVENT_FILE_SCHEMA)


IDS = [("d1", None), ("d2", None), ("d2", "u2"), ("d3", "u3"), ("d4", None)]
KEYS = {"d1": 0, "d2": 1, "u2": 2, "d3": 3, "u3": 4, "d4": 5, "u9": 6}
# d1 linked to u9 (a person known by no event), d3 to u3.
ALIASES = pa.table(
    {
        "distinct_id": ["d1", "d3"],
        "person_id": ["u9", "u3"],
        "device_key": [KEYS["d1"], KEYS["d3"]],
        "person_key": [KEYS["u9"], KEYS["u3"]],
    },
    schema=ALIAS_SCHEMA,
)


def scan(
    paths: list[Path], aliases: pa.Table = ALIASES
) -> tuple[ScanEngine, duckdb.DuckDBPyConnection, bool]:
    engine = ScanEngine()
    con = engine.connection()
    local = [str(p) for p in paths]
    keyed = _build_view(
        con,
        paths=local,
        hot=[],
        aliases=aliases,
        persons=None,
        start=T0 - timedelta(hours=1),
        end=T0 + timedelta(hours=1),
        include_bots=False,
        unkeyed_paths=engine.file_columns.unkeyed(local),
    )
    return engine, con, keyed


def test_keyed_parts_resolve_the_same_persons_as_ids(tmp_path: Path) -> None:
    path = tmp_path / "keyed.parquet"
    pq.write_table(rows(IDS, KEYS), path)
    engine, con, keyed = scan([path])
    assert keyed
    by_id = con.execute("SELECT event_id, person_id FROM events_scan ORDER BY 1").fetchall()
    by_key = con.execute("SELECT event_id, person_key FROM events_scan_keyed ORDER BY 1").fetchall()
    assert [p for _, p in by_id] == ["u9", "d2", "u2", "u3", "d4"]
    names = {v: k for k, v in KEYS.items()}
    assert [names[k] for _, k in by_key] == ["u9", "d2", "u2", "u3", "d4"]
    engine.close()


def test_an_alias_without_keys_or_a_part_without_keys_reads_by_id(tmp_path: Path) -> None:
    keyed_path, legacy_path = tmp_path / "keyed.parquet", tmp_path / "legacy.parquet"
    pq.write_table(rows(IDS, KEYS), keyed_path)
    pq.write_table(rows(IDS, None), legacy_path)
    assert is_day_file_schema(pq.read_schema(keyed_path))
    engine, con, keyed = scan([keyed_path, legacy_path])
    assert not keyed
    # events_scan still reads both parts, persons resolved by id.
    got = con.execute(
        "SELECT person_id, count(*) FROM events_scan GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert got == [("d2", 2), ("d4", 2), ("u2", 2), ("u3", 2), ("u9", 2)]
    missing_keys = ALIASES.set_column(2, "device_key", pa.array([None, 3], pa.int64()))
    _, _, keyed = scan([keyed_path], missing_keys)
    assert not keyed
    engine.close()


def test_parts_written_before_the_keys_verify_and_gain_null_keys(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.parquet"
    pq.write_table(rows(IDS, None), legacy)
    assert is_day_file_schema(pq.read_schema(legacy))
    assert read_part_contents(legacy, project_id="acme", day=DAY).rows == len(IDS)
    # Rewritten (erasure, merge): the day-file schema with NULL keys, so still read by id.
    table = with_day_file_schema(pq.read_table(legacy))
    assert table.schema.equals(EVENT_FILE_SCHEMA)
    assert table.column("person_key").null_count == len(IDS)
    rewritten = tmp_path / "rewritten.parquet"
    write_part(rewritten, [table], row_group_rows=1000, zstd_level=1, metadata={})
    engine, _, keyed = scan([rewritten])
    assert not keyed
    engine.close()
