"""The decoded-column cache over the parts the catalog says are active: once a part is
replaced (here by an erasure's rewrite without one device's rows), scans read the new part and
never the replaced one's cached columns, though those stay in memory until evicted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from libs.common.day_files import DayExportSettings, active_parts
from libs.common.day_files.erasure_rewrite import rewrite_part_without
from services.query.event_scan import open_scan
from tests.support.analytics_dataset import generate_events
from tests.support.tier_layouts import TierLayout, tier_layout

pytestmark = pytest.mark.infra

FIRST_DAY = datetime(2025, 4, 1, tzinfo=UTC)
DAYS = 3
END = FIRST_DAY + timedelta(days=DAYS)


async def _rows_of(layout: TierLayout, distinct_id: str) -> tuple[int, int, int]:
    """(the device's rows, all rows) read through the cached views, and the files the column
    cache served to the scan."""
    columns = layout.engine.columns
    served = columns.served
    async with await open_scan(
        layout.deps, "acme", FIRST_DAY, END, include_bots=True, with_persons=False
    ) as scan:
        assert scan.cached_columns or not columns.served
        view = "events_scan_cached" if scan.cached_columns else "events_scan"
        ((mine, every),) = await scan.query(
            f"SELECT count(*) FILTER (WHERE distinct_id = ?), count(*) FROM {view}", [distinct_id]
        )
    columns.settle()  # the files read from Parquet are now cached
    return mine, every, columns.served - served


async def test_a_replaced_part_is_never_read_from_the_cache(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    events = generate_events("acme", FIRST_DAY, DAYS, devices=20, seed=7)
    day = FIRST_DAY.date()
    device = next(e.distinct_id for e in events if e.ts.date() == day)
    async with tier_layout(
        "all_exported", pool, events, tmp_path, column_cache_bytes=64 * 1024**2
    ) as layout:
        parts = await active_parts(pool, "acme", day, END.date())
        mine, every, served = await _rows_of(layout, device)
        assert mine > 0 and served == 0
        assert await _rows_of(layout, device) == (mine, every, len(parts))

        first = next(p for p in parts if p.day == day)
        rewrite = await rewrite_part_without(
            pool, layout.store, first, {device}, DayExportSettings(work_dir=tmp_path / "rewrite")
        )
        assert rewrite.outcome == "rewritten" and rewrite.rows_removed > 0
        cached_before = len(layout.engine.columns)
        # The old part's columns are still cached, but the scan reads the new part (from
        # Parquet, then from the cache), without the device's rows.
        removed = rewrite.rows_removed
        assert await _rows_of(layout, device) == (
            mine - removed,
            every - removed,
            len(parts) - 1,
        )
        assert len(layout.engine.columns) == cached_before + 1
        assert await _rows_of(layout, device) == (mine - removed, every - removed, len(parts))
