"""One dataset laid out over the tiers three ways, for conformance tests: every analysis must
answer the same whichever layout holds the data.

- all_hot: every day only in PostgreSQL;
- split: the earlier half of the days exported as day files (some of their events written
  after the export, so they are late rows still in PostgreSQL), the later half only hot;
- all_exported: every day exported, late rows included (as late parts).

    async with tier_layout("split", pool, events, tmp_path) as layout:
        scan = await open_scan(layout.deps, "acme", start, end, include_bots=False)
        # or over HTTP: query_client(pool, nats_url, subjects, scan_engine=layout.engine)

Layouts need a fresh database each (the `database_url`/`pool` fixtures give one per test).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg

from libs.common.day_files import DayExportSettings, DayFileCache, export_pending_days
from libs.common.object_store import ObjectStore, open_object_store
from libs.common.schemas.events_v1 import EventV1
from services.query.scan_engine import ScanEngine

LAYOUTS = ("all_hot", "split", "all_exported")


@dataclass
class ScanDeps:
    """What `open_scan` needs (QueryDeps has the same two attributes)."""

    pool: asyncpg.Pool
    scan_engine: ScanEngine


@dataclass
class TierLayout:
    name: str
    engine: ScanEngine
    store: ObjectStore
    deps: ScanDeps
    days: list[date]  # every UTC day holding events
    exported_days: list[date]  # days served from day files
    late_event_ids: set[str] = field(default_factory=set)  # written after their day's export


def is_late(event_id: str) -> bool:
    """The events held back until after their day is exported (about one in seven)."""
    return zlib.crc32(event_id.encode()) % 7 == 0


def day_of(ev: EventV1) -> date:
    return ev.ts.astimezone(UTC).date()


async def write(pool: asyncpg.Pool, events: Sequence[EventV1], batch: int = 500) -> None:
    """Store events through the aggregator's writer, in batches."""
    from services.aggregator.writer import write_events

    async with pool.acquire() as conn:
        for i in range(0, len(events), batch):
            await write_events(conn, events[i : i + batch])


def exported_days_of(layout: str, days: Sequence[date]) -> list[date]:
    """Which of the dataset's days a layout serves from day files."""
    if layout == "all_hot":
        return []
    if layout == "split":
        return list(days[: len(days) // 2])
    if layout == "all_exported":
        return list(days)
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")


@asynccontextmanager
async def tier_layout(
    layout: str,
    pool: asyncpg.Pool,
    events: Sequence[EventV1],
    directory: Path,
    *,
    cache_bytes: int = 256 * 1024 * 1024,
    column_cache_bytes: int = 0,
    move_cold: bool = False,
) -> AsyncIterator[TierLayout]:
    """Write `events` (all of one project, days before today) and arrange them as `layout`.
    `move_cold`: then run the cold move, so exported days older than the project's hot_days
    leave PostgreSQL (their late rows stay hot until exported). `column_cache_bytes`: the
    engine's decoded-column cache (services/query/column_cache.py; 0: off)."""
    projects = {ev.project_id for ev in events}
    days = sorted({day_of(ev) for ev in events})
    if days and days[-1] >= datetime.now(UTC).date():
        raise ValueError("tier layouts need events of closed days only (before today, UTC)")
    exported = exported_days_of(layout, days)
    held_back = [ev for ev in events if day_of(ev) in exported and is_late(ev.event_id)]
    held_ids = {ev.event_id for ev in held_back}
    await write(pool, [ev for ev in events if ev.event_id not in held_ids])
    store = open_object_store(f"file://{directory / f'objects-{layout}'}")
    settings = DayExportSettings(work_dir=directory / f"work-{layout}")

    async def export() -> None:
        run = await export_pending_days(
            pool, store, settings, grace=timedelta(0), projects=sorted(projects), days=exported
        )
        assert not run.failures, run.failures

    if exported:
        await export()
    await write(pool, held_back)
    if layout == "all_exported":
        await export()  # the held-back rows become late parts
    if move_cold and exported:
        from services.tiering.tier_moves import move_cold_days

        moved = await move_cold_days(pool, store, projects=sorted(projects))
        assert not moved.failures, moved.failures
    engine = ScanEngine(
        DayFileCache(directory / f"cache-{layout}", cache_bytes, store),
        column_cache_bytes=column_cache_bytes,
    )
    try:
        yield TierLayout(
            name=layout,
            engine=engine,
            store=store,
            deps=ScanDeps(pool, engine),
            days=days,
            exported_days=exported,
            late_event_ids=held_ids,
        )
    finally:
        engine.close()
        await store.close()


async def export_acme_days(
    pool: asyncpg.Pool, tmp_path: Path, store: ObjectStore, days: Sequence[date]
) -> int:
    """Export project acme's `days` as day files now (no grace period); the rows exported."""
    exported = await export_pending_days(
        pool,
        store,
        DayExportSettings(work_dir=tmp_path / "work"),
        grace=timedelta(0),
        projects=["acme"],
        days=list(days),
    )
    assert not exported.failures and exported.rows, exported
    return exported.rows
