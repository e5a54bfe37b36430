"""Days without day files are kept in the query process between scans: a scan copies only the
rows added since the last one (late rows of older days included), an erased person's rows are
gone from the next scan and stay gone once the request completes, a day exported and moved
cold (or deleted by retention) is read from where its rows are now, and a row committed by a
transaction that was running meanwhile is neither lost nor doubled. Each against a second
process's cache too: nothing here goes through the process that scans."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from libs.common.day_files import DayExportSettings, DayFileCache
from libs.common.erasure import request_erasure
from libs.common.object_store import ObjectStore, open_object_store
from libs.common.schemas.events_v1 import PAGEVIEW, EventV1
from services.aggregator.writer import write_events
from services.query.event_scan import open_scan
from services.query.scan_engine import ScanEngine
from services.tiering.erasure import process_erasures
from services.tiering.tier_moves import apply_retention, move_cold_days
from tests.support.tier_layouts import ScanDeps, export_acme_days, write

pytestmark = pytest.mark.infra

DAY = datetime(2024, 3, 2, tzinfo=UTC)
RANGE = (DAY, DAY + timedelta(days=2))


def events(count: int, prefix: str, day_offset: int = 0) -> list[EventV1]:
    return [
        EventV1(
            event_id=f"{prefix}-{i}",
            project_id="acme",
            type="page",
            name=PAGEVIEW,
            ts=DAY + timedelta(days=day_offset, minutes=i),
            received_at=DAY + timedelta(days=day_offset, minutes=i, seconds=1),
            distinct_id=f"d-{i % 7}",
            path=f"/{prefix}",
            is_bot=i % 5 == 0,
        )
        for i in range(count)
    ]


async def scanned_ids(deps: ScanDeps) -> list[str]:
    async with await open_scan(deps, "acme", *RANGE, include_bots=True) as scan:
        return [r[0] for r in await scan.query("SELECT event_id FROM events_scan ORDER BY 1")]


async def pg_ids(pool: asyncpg.Pool) -> list[str]:
    return [r[0] for r in await pool.fetch("SELECT event_id FROM events ORDER BY 1")]


async def test_a_scan_copies_only_rows_added_since_the_last(pool: asyncpg.Pool) -> None:
    engine = ScanEngine()
    deps = ScanDeps(pool, engine)
    await write(pool, events(100, "a") + events(50, "b", day_offset=1))
    assert await scanned_ids(deps) == await pg_ids(pool)
    assert engine.hot_rows.rows_copied == 150
    assert await scanned_ids(deps) == await pg_ids(pool)
    assert engine.hot_rows.rows_copied == 150  # nothing new: nothing copied
    await write(pool, events(10, "c", day_offset=1))
    ids = await scanned_ids(deps)
    assert ids == await pg_ids(pool) and len(ids) == 160
    assert engine.hot_rows.rows_copied == 160
    async with await open_scan(deps, "acme", *RANGE, include_bots=False) as scan:
        humans = await scan.query("SELECT count(*) FROM events_scan")
    assert humans == [(160 - 20 - 10 - 2,)]  # every fifth event of each batch is a bot


async def test_a_late_row_of_an_older_cached_day_is_read_and_kept(pool: asyncpg.Pool) -> None:
    engine = ScanEngine()
    deps = ScanDeps(pool, engine)
    await write(pool, events(30, "a") + events(20, "b", day_offset=1))
    assert len(await scanned_ids(deps)) == 50
    await write(pool, events(3, "late"))  # the first day again, after the second was read
    ids = await scanned_ids(deps)
    assert ids == await pg_ids(pool) and len(ids) == 53
    assert engine.hot_rows.rows_copied == 53
    assert await scanned_ids(deps) == ids
    assert engine.hot_rows.rows_copied == 53  # the late rows joined the cached day


@pytest.mark.usefixtures("project")
async def test_an_erased_person_is_gone_from_cached_days_and_stays_gone(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    engine = ScanEngine()
    deps = ScanDeps(pool, engine)
    third_day = events(10, "c", day_offset=2)  # outside the scanned range: never cached
    await write(pool, events(40, "a") + events(40, "b", day_offset=1) + third_day)
    assert len(await scanned_ids(deps)) == 80
    async with pool.acquire() as conn:
        status = await request_erasure(
            conn, project_id="acme", user_id=None, distinct_ids=["d-3"], key_id="test"
        )
    expected = await pg_ids(pool)
    in_range = [i for i in expected if not i.startswith("c-")]
    assert len(in_range) == 80 - 2 * 6  # d-3 sent events 3, 10, 17, 24, 31, 38 of each day
    assert await scanned_ids(deps) == in_range
    assert engine.hot_rows.reloads == 2  # both days the request deleted rows from
    # Completing the request lifts the scans' filter of the person's ids: the cache alone
    # must keep them out now.
    store = open_object_store(f"file://{tmp_path / 'objects'}")
    settings = DayExportSettings(work_dir=tmp_path / "work")
    try:
        for _ in range(5):
            run = await process_erasures(pool, store, settings)
            assert not run.failures, run.failures
            if status.id in run.completed:
                break
    finally:
        await store.close()
    assert await pool.fetchval("SELECT count(*) FROM erased_ids") == 0
    assert await scanned_ids(deps) == in_range
    copied = engine.hot_rows.rows_copied
    assert await scanned_ids(deps) == in_range
    assert engine.hot_rows.rows_copied == copied  # known requests reload nothing again


@asynccontextmanager
async def scans_over_files(
    pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[tuple[ObjectStore, ScanEngine, ScanDeps]]:
    """A file:// object store and a scan engine caching its day files, closed after use."""
    store = open_object_store(f"file://{tmp_path / 'objects'}")
    engine = ScanEngine(DayFileCache(tmp_path / "cache", 64 * 1024**2, store))
    try:
        yield store, engine, ScanDeps(pool, engine)
    finally:
        engine.close()
        await store.close()


async def export_first_day(pool: asyncpg.Pool, tmp_path: Path, store: ObjectStore) -> None:
    await export_acme_days(pool, tmp_path, store, [DAY.date()])


@pytest.mark.usefixtures("project")
async def test_a_day_moved_cold_is_read_from_its_files_and_one_deleted_by_retention_is_gone(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with scans_over_files(pool, tmp_path) as (store, engine, deps):
        await write(pool, events(30, "a") + events(20, "b", day_offset=1))
        before = await scanned_ids(deps)
        assert len(before) == 50
        assert engine.hot_rows.cached_days("acme") == [DAY.date(), DAY.date() + timedelta(1)]
        await export_first_day(pool, tmp_path, store)
        moved = await move_cold_days(pool, store, projects=["acme"])  # 2024: past hot_days
        assert not moved.failures and moved.rows_moved == 30
        await write(pool, events(2, "late"))  # rows of the cold day, after its export
        async with await open_scan(deps, "acme", *RANGE, include_bots=True) as scan:
            ids = [r[0] for r in await scan.query("SELECT event_id FROM events_scan ORDER BY 1")]
            assert scan.file_days == [DAY.date()]
        assert ids == sorted([*before, "late-0", "late-1"])
        # The cold day's rows are its files' now: the cache holds only the day without files.
        assert engine.hot_rows.cached_days("acme") == [DAY.date() + timedelta(1)]
        # Retention deletes both days (files and rows), the one without files included.
        await pool.execute("UPDATE projects SET retention_days = 30 WHERE id = 'acme'")
        retention = await apply_retention(pool, store, projects=["acme"])
        assert not retention.failures and retention.rows_deleted == 22
        assert await scanned_ids(deps) == await pg_ids(pool) == []


@pytest.mark.usefixtures("project")
async def test_late_rows_of_a_day_with_files_are_copied_once_until_a_part_takes_them(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with scans_over_files(pool, tmp_path) as (store, engine, deps):
        await write(pool, events(30, "a") + events(20, "b", day_offset=1))
        await export_first_day(pool, tmp_path, store)
        assert await scanned_ids(deps) == await pg_ids(pool)
        assert engine.hot_rows.rows_copied == 20  # the first day is its part's
        assert engine.hot_rows.cached_late_days("acme") == [DAY.date()]
        await write(pool, events(3, "late"))  # rows of the exported day, after its export
        ids = await scanned_ids(deps)
        assert ids == await pg_ids(pool) and len(ids) == 53
        assert engine.hot_rows.rows_copied == 23
        assert await scanned_ids(deps) == ids
        assert engine.hot_rows.rows_copied == 23  # the late rows are kept
        # The next export writes them to a part: read from there, once, and not copied.
        await export_first_day(pool, tmp_path, store)
        assert await scanned_ids(deps) == ids
        assert engine.hot_rows.rows_copied == 23
        await write(pool, events(1, "later"))
        ids = await scanned_ids(deps)
        assert ids == await pg_ids(pool) and len(ids) == 54
        assert engine.hot_rows.rows_copied == 24


@pytest.mark.usefixtures("project")
async def test_an_erased_persons_late_rows_of_a_day_with_files_stay_gone(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    settings = DayExportSettings(work_dir=tmp_path / "work")
    async with scans_over_files(pool, tmp_path) as (store, engine, deps):
        await write(pool, events(30, "a") + events(20, "b", day_offset=1))
        await export_first_day(pool, tmp_path, store)
        await write(pool, events(3, "late"))  # late-1 is d-1's
        assert len(await scanned_ids(deps)) == 53
        assert engine.hot_rows.cached_late_days("acme") == [DAY.date()]
        async with pool.acquire() as conn:
            status = await request_erasure(
                conn, project_id="acme", user_id=None, distinct_ids=["d-1"], key_id="test"
            )
        expected = await pg_ids(pool)
        assert "late-1" not in expected and len(expected) == 53 - 1 - 5 - 3
        assert await scanned_ids(deps) == expected
        # Once the request completes, no filter hides the person: the cache must not hold
        # their late row.
        for _ in range(5):
            run = await process_erasures(pool, store, settings)
            assert not run.failures, run.failures
            if status.id in run.completed:
                break
        assert await pool.fetchval("SELECT count(*) FROM erased_ids") == 0
        assert await scanned_ids(deps) == expected


async def test_rows_of_transactions_running_during_a_scan_are_not_lost_or_doubled(
    pool: asyncpg.Pool,
) -> None:
    engine = ScanEngine()
    deps = ScanDeps(pool, engine)
    await write(pool, events(20, "a"))
    assert len(await scanned_ids(deps)) == 20
    async with pool.acquire() as older:
        held = older.transaction()
        await held.start()
        await older.fetchval("SELECT pg_current_xact_id()")  # holds the snapshot xmin back
        await write(pool, events(5, "b"))  # committed above that xmin: not final yet
        async with pool.acquire() as slow:
            running = slow.transaction()
            await running.start()
            await write_events(slow, events(3, "c"))  # not committed during the next scan
            assert await scanned_ids(deps) == await pg_ids(pool)
            await running.commit()
        assert await scanned_ids(deps) == await pg_ids(pool)
        await held.commit()
    ids = await scanned_ids(deps)
    assert ids == await pg_ids(pool) and len(ids) == len(set(ids)) == 28
    assert await scanned_ids(deps) == ids


async def test_a_scan_from_1970_reads_and_caches_only_days_with_a_partition(
    pool: asyncpg.Pool,
) -> None:
    engine = ScanEngine()
    deps = ScanDeps(pool, engine)
    await write(pool, events(30, "a") + events(20, "b", day_offset=1))
    partitions = await pool.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'event_rows'::regclass"
    )
    since_1970 = (datetime(1970, 1, 1, tzinfo=UTC), DAY + timedelta(days=2))
    for _ in range(2):  # the second scan checks every cached day against PostgreSQL
        async with await open_scan(deps, "acme", *since_1970, include_bots=True) as scan:
            assert await scan.query("SELECT count(*) FROM events_scan") == [(50,)]
    assert engine.hot_rows.rows_copied == 50
    assert len(engine.hot_rows.cached_days("acme")) <= partitions < 100
