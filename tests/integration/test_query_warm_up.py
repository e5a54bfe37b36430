"""The query service's start-up warm-up: after it, an analysis over the warmed days copies
nothing from PostgreSQL and downloads no day file, and it never reaches past its window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from libs.common.day_files import DayFileCache
from libs.common.object_store import open_object_store
from libs.common.schemas.events_v1 import PAGEVIEW, EventV1
from services.query.event_scan import open_scan
from services.query.scan_engine import ScanEngine
from services.query.warm_up import warm_caches
from tests.support.tier_layouts import ScanDeps, export_acme_days, write

pytestmark = [pytest.mark.infra, pytest.mark.usefixtures("project")]

TODAY = datetime(2024, 3, 10, 15, tzinfo=UTC)
MIDNIGHT = TODAY.replace(hour=0)


def day_events(days_ago: int, count: int, project: str = "acme") -> list[EventV1]:
    start = MIDNIGHT - timedelta(days=days_ago)
    return [
        EventV1(
            event_id=f"{project}-d{days_ago}-{i}",
            project_id=project,
            type="page",
            name=PAGEVIEW,
            ts=start + timedelta(minutes=i),
            received_at=start + timedelta(minutes=i, seconds=1),
            distinct_id=f"p{i % 5}",
            path="/",
        )
        for i in range(count)
    ]


async def test_the_first_scan_after_warm_up_copies_and_downloads_nothing(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    store = open_object_store(f"file://{tmp_path / 'objects'}")
    engine = ScanEngine(DayFileCache(tmp_path / "cache", 64 * 1024**2, store))
    try:
        # Three days ago has day files; yesterday and today only rows; ten days ago is
        # outside a 7-day warm-up.
        await write(
            pool, day_events(10, 4) + day_events(3, 6) + day_events(1, 8) + day_events(0, 9)
        )
        three_days_ago = (MIDNIGHT - timedelta(days=3)).date()
        assert await export_acme_days(pool, tmp_path, store, [three_days_ago]) == 6
        deps = ScanDeps(pool, engine)

        done = await warm_caches(deps, 7, now=TODAY)

        assert done.projects == ["acme"] and not done.failed
        assert done.hot_rows == 8 + 9  # the days without files, and nothing older
        assert done.file_days == 1
        yesterday, today = (MIDNIGHT - timedelta(days=1)).date(), MIDNIGHT.date()
        assert engine.hot_rows.cached_days("acme") == [yesterday, today]
        assert engine.cache is not None
        downloads = engine.cache.stats.misses
        copied = engine.hot_rows.rows_copied

        week = (MIDNIGHT - timedelta(days=6), MIDNIGHT + timedelta(days=1))
        async with await open_scan(deps, "acme", *week, include_bots=True, now=TODAY) as scan:
            [(rows,)] = await scan.query("SELECT count(*) FROM events_scan")
        assert rows == 6 + 8 + 9
        assert engine.hot_rows.rows_copied == copied  # nothing copied again
        assert engine.cache.stats.misses == downloads  # nothing downloaded again
    finally:
        engine.close()
        await store.close()


async def test_zero_days_turns_the_warm_up_off(pool: asyncpg.Pool) -> None:
    engine = ScanEngine()
    await write(pool, day_events(0, 5))
    done = await warm_caches(ScanDeps(pool, engine), 0, now=TODAY)
    assert done.projects == [] and engine.hot_rows.rows_copied == 0


async def test_it_stops_at_the_hot_rows_budget(pool: asyncpg.Pool) -> None:
    """Past the budget a further project would only push an earlier one out: it stops."""
    await pool.execute("INSERT INTO projects (id, name) VALUES ('beta', 'Beta')")
    await write(pool, day_events(0, 50) + day_events(0, 3, "beta"))
    engine = ScanEngine(hot_rows_cache_bytes=1)  # any project's rows fill it
    done = await warm_caches(ScanDeps(pool, engine), 7, now=TODAY)
    # acme has the newest event (minute 49 vs beta's minute 2): warmed first, then full.
    assert done.projects == ["acme"] and done.stopped_full
