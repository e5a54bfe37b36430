"""Hot-store upkeep that keeps ingestion flowing: `events` day partitions created ahead of time
and the event-id dedup table pruned past its horizon."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import msgspec

from libs.common.event_partitions import ensure_partitions_ahead


class MaintenanceReport(msgspec.Struct, frozen=True):
    """What one maintenance pass did."""

    partitions_from: date
    partitions_days: int
    event_ids_pruned: int


async def prune_event_ids(
    conn: asyncpg.Connection | asyncpg.Pool, now: datetime, horizon: timedelta
) -> int:
    """Delete dedup rows received before `now - horizon`; returns how many were deleted.

    Past the horizon a redelivered or retried event can no longer be told apart from a new one,
    so the horizon must exceed the stream retention and any client retry window.
    """
    # One statement, one scan: the table has no index on received_at (it would slow every
    # aggregator insert), and new ids never conflict with the old rows being deleted.
    status = await conn.execute("DELETE FROM event_ids WHERE received_at < $1", now - horizon)
    return int(status.rsplit(" ", 1)[-1])


async def run_maintenance(
    pool: asyncpg.Pool,
    *,
    partitions_ahead_days: int,
    dedup_horizon_days: int,
    now: datetime | None = None,
) -> MaintenanceReport:
    """One maintenance pass: partitions ahead, then dedup pruning."""
    now = now or datetime.now(UTC)
    today = now.astimezone(UTC).date()
    async with pool.acquire() as conn:
        # Today is included: a fresh database (or one whose maintenance was down for a while)
        # must still accept today's events.
        await ensure_partitions_ahead(conn, partitions_ahead_days, today=today, behind=0)
    pruned = await prune_event_ids(pool, now, timedelta(days=dedup_horizon_days))
    return MaintenanceReport(today, partitions_ahead_days + 1, pruned)
