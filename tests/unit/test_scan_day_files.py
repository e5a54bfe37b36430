"""The scan view over day files: parts written before a column existed read it as NULL beside
newer parts, each file's columns are read from its footer once, not at every scan, the
folders a file lies in never stand in for its columns, and scans open side by side each read
their own files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from libs.common.day_files.layout import EVENT_FILE_SCHEMA
from services.query.event_scan import _build_view
from services.query.person_aliases import ALIAS_SCHEMA
from services.query.scan_engine import FileColumns, ScanEngine

DAY = datetime(2024, 3, 1, tzinfo=UTC)


def day_file(path: Path, prefix: str, count: int, *, without: tuple[str, ...] = ()) -> Path:
    """`count` pageviews of one device in a Parquet part lacking the columns `without`."""
    columns: dict[str, pa.Array] = {}
    for field in EVENT_FILE_SCHEMA:
        if field.name in without:
            continue
        if field.name == "ts":
            values: list[object] = [DAY + timedelta(minutes=i) for i in range(count)]
        elif field.name == "event_id":
            values = [f"{prefix}-{i}" for i in range(count)]
        elif field.name in ("project_id", "name", "type", "distinct_id"):
            values = {"project_id": "acme", "name": "$pageview", "type": "page"}.get(
                field.name, "device-1"
            )
            values = [values] * count
        elif field.name == "received_at":
            values = [DAY] * count
        elif pa.types.is_boolean(field.type):
            values = [False] * count
        elif field.name == "country":
            values = ["FR"] * count
        else:
            values = [None] * count
        columns[field.name] = pa.array(values, field.type)
    pq.write_table(pa.table(columns), path)
    return path


def open_scan_view(
    engine: ScanEngine, paths: list[Path], files: FileColumns | None = None
) -> duckdb.DuckDBPyConnection:
    """A connection of `engine` with the scan's views over `paths` (one day, no hot rows)."""
    con = engine.connection()
    _build_view(
        con,
        paths=[str(p) for p in paths],
        hot=[],
        aliases=ALIAS_SCHEMA.empty_table(),
        persons=None,
        start=DAY,
        end=DAY + timedelta(days=1),
        include_bots=False,
        unkeyed_paths=frozenset(str(p) for p in paths),
        file_columns=files or FileColumns(),
    )
    return con


def scan_rows(
    engine: ScanEngine, paths: list[Path], files: FileColumns
) -> list[tuple[object, ...]]:
    con = open_scan_view(engine, paths, files)
    try:
        sql = "SELECT event_id, country, non_interactive FROM events_scan ORDER BY event_id"
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_part_written_before_a_column_existed_reads_it_as_null(tmp_path: Path) -> None:
    old = day_file(tmp_path / "old.parquet", "old", 2, without=("country", "non_interactive"))
    new = day_file(tmp_path / "new.parquet", "new", 3)
    engine = ScanEngine()
    try:
        for order in ([old, new], [new, old]):
            assert scan_rows(engine, order, FileColumns()) == [
                ("new-0", "FR", False),
                ("new-1", "FR", False),
                ("new-2", "FR", False),
                ("old-0", None, None),
                ("old-1", None, None),
            ]
    finally:
        engine.close()


def test_a_files_columns_are_read_once_and_again_when_the_file_is_replaced(
    tmp_path: Path,
) -> None:
    paths = [day_file(tmp_path / f"part-{i}.parquet", f"p{i}", 2) for i in range(3)]
    files = FileColumns()
    engine = ScanEngine()
    try:
        first = scan_rows(engine, paths, files)
        assert scan_rows(engine, paths, files) == first
        # Whether the parts carry person keys comes from the same read of each footer.
        assert files.unkeyed([str(p) for p in paths]) == frozenset(str(p) for p in paths)
        assert files.footers_read == 3
        # A part downloaded again holds the same rows; a file written anew at a path (a new
        # inode) is read for what it holds now.
        replaced = tmp_path / "replaced.parquet"
        day_file(replaced, "p0", 2, without=("country",))
        replaced.replace(paths[0])
        rows = scan_rows(engine, paths, files)
        assert files.footers_read == 4
        assert [r[1] for r in rows if r[0].startswith("p0")] == [None, None]
    finally:
        engine.close()


def test_folders_named_like_hive_partitions_do_not_change_what_a_file_holds(
    tmp_path: Path,
) -> None:
    # The cache's folders are `project=<id>/dt=<day>`, and its root is the operator's choice:
    # a folder named after a stored column must not replace that column's values (DuckDB's
    # Hive detection would give every row country "XX" and make every row a bot here).
    folder = tmp_path / "country=XX" / "is_bot=true" / "project=acme" / "dt=2024-03-01"
    folder.mkdir(parents=True)
    paths = [
        day_file(folder / "part-1.parquet", "a", 2),
        day_file(folder / "part-2.parquet", "b", 1),
    ]
    engine = ScanEngine()
    try:
        assert scan_rows(engine, paths, FileColumns()) == [
            ("a-0", "FR", False),
            ("a-1", "FR", False),
            ("b-0", "FR", False),
        ]
    finally:
        engine.close()


def test_scans_open_side_by_side_each_read_only_their_own_files(tmp_path: Path) -> None:
    # Each scan's file lists are variables of its own connection (services/query/
    # event_scan.py): a second scan on the shared database must not change the first's rows.
    # A quote in a folder's name reaches DuckDB as it is.
    folder = tmp_path / "o'brien"
    folder.mkdir()
    old = day_file(folder / "old.parquet", "old", 2, without=("country",))
    first = [old, day_file(folder / "first.parquet", "first", 2)]
    second = [day_file(folder / "second.parquet", "second", 1)]
    engine = ScanEngine()
    try:
        one = open_scan_view(engine, first)
        two = open_scan_view(engine, second)
        sql = "SELECT event_id, country FROM events_scan ORDER BY event_id"
        for _ in range(2):
            assert one.execute(sql).fetchall() == [
                ("first-0", "FR"),
                ("first-1", "FR"),
                ("old-0", None),
                ("old-1", None),
            ]
            assert two.execute(sql).fetchall() == [("second-0", "FR")]
        one.close()
        assert two.execute(sql).fetchall() == [("second-0", "FR")]
        two.close()
    finally:
        engine.close()
