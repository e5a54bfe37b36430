"""Days without day files are kept in the query process between scans: a scan copies only the
rows added since the last one, a row deleted from a cached day (erasure) is gone from the next
scan, and a row committed by a transaction that was running meanwhile is neither lost nor
doubled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from libs.common.schemas.events_v1 import PAGEVIEW, EventV1
from services.aggregator.writer import write_events
from services.query.event_scan import open_scan
from services.query.scan_engine import ScanEngine
from tests.support.tier_layouts import ScanDeps, write

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


async def test_a_deleted_row_is_gone_from_the_next_scan(pool: asyncpg.Pool) -> None:
    engine = ScanEngine()
    deps = ScanDeps(pool, engine)
    await write(pool, events(40, "a"))
    assert len(await scanned_ids(deps)) == 40
    await pool.execute("DELETE FROM events WHERE event_id IN ('a-3', 'a-4')")  # an erasure
    ids = await scanned_ids(deps)
    assert "a-3" not in ids and "a-4" not in ids and len(ids) == 38
    assert engine.hot_rows.reloads == 1


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
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass"
    )
    since_1970 = (datetime(1970, 1, 1, tzinfo=UTC), DAY + timedelta(days=2))
    for _ in range(2):  # the second scan checks every cached day against PostgreSQL
        async with await open_scan(deps, "acme", *since_1970, include_bots=True) as scan:
            assert await scan.query("SELECT count(*) FROM events_scan") == [(50,)]
    assert engine.hot_rows.rows_copied == 50
    assert len(engine.hot_rows._days) <= partitions < 100
