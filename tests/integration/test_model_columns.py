"""The data model's column registry (libs/common/model) against what really exists: the migrated
database's `information_schema` (name, order, type, nullability of every column of
`event_rows`, the `events` view over it, and `sessions`) and the Arrow schema of a day file
the exporter writes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.common.day_files import DayExportSettings, export_day
from libs.common.model.columns import EVENT_COLUMNS, SESSION_COLUMNS, Column
from libs.common.object_store.file_store import FileObjectStore
from tests.support.analytics_dataset import generate_events
from tests.support.tier_layouts import write

pytestmark = pytest.mark.infra


async def _database_columns(pool: asyncpg.Pool, table: str) -> list[tuple[str, str, bool]]:
    rows = await pool.fetch(
        "SELECT column_name, data_type, is_nullable = 'YES' AS nullable"
        " FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = $1"
        " ORDER BY ordinal_position",
        table,
    )
    return [(r["column_name"], r["data_type"], r["nullable"]) for r in rows]


async def _registry_columns(
    pool: asyncpg.Pool, columns: tuple[Column, ...]
) -> list[tuple[str, str, bool]]:
    # PostgreSQL itself spells the registry's types as information_schema does
    # ('timestamptz' -> 'timestamp with time zone').
    return [
        (
            c.name,
            await pool.fetchval("SELECT format_type($1::regtype, NULL)", c.pg_type),
            c.nullable,
        )
        for c in columns
    ]


@pytest.mark.parametrize(
    ("table", "columns"), [("event_rows", EVENT_COLUMNS), ("sessions", SESSION_COLUMNS)]
)
async def test_registry_equals_the_migrated_table(
    pool: asyncpg.Pool, table: str, columns: tuple[Column, ...]
) -> None:
    stored = await _database_columns(pool, table)
    if table == "event_rows":
        # The stored rows' page, client and source keys (migrations 0029-0031), which the
        # `events` view reads through.
        assert stored[-3:] == [
            ("page_key", "bigint", True),
            ("client_key", "bigint", True),
            ("source_key", "bigint", True),
        ]
        stored = stored[:-3]
    assert await _registry_columns(pool, columns) == stored


async def test_the_events_view_reads_the_registry_columns_in_order(pool: asyncpg.Pool) -> None:
    # Every reader reads `events`: the registry's columns and types, in order (a view's
    # columns are all nullable to information_schema).
    view = [(name, kind) for name, kind, _ in await _database_columns(pool, "events")]
    registry = [(name, kind) for name, kind, _ in await _registry_columns(pool, EVENT_COLUMNS)]
    assert view == registry


async def test_day_files_hold_the_registry_columns_with_their_arrow_types(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    day = date(2024, 3, 2)
    await write(pool, generate_events("acme", datetime(2024, 3, 2, tzinfo=UTC), 1, devices=5))
    store = FileObjectStore(tmp_path / "objects")
    async with store:
        result = await export_day(
            pool, store, "acme", day, DayExportSettings(work_dir=tmp_path / "work")
        )
        assert result.part is not None
        local = tmp_path / "part.parquet"
        await store.get_to_file(result.part.object_name, local)

    expected = pa.schema(
        [
            pa.field(c.name, c.arrow_type, nullable=c.nullable)
            for c in EVENT_COLUMNS
            if not c.hot_only
        ]
    )
    assert pq.read_schema(local).remove_metadata() == expected
    assert [c.name for c in EVENT_COLUMNS if c.hot_only] == ["inserted_xid", "derived_fields"]
