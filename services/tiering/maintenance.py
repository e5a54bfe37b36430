"""Hot-store upkeep that keeps ingestion flowing: `events` day partitions created ahead of time
and the event-id dedup table pruned past its horizon."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import msgspec


class MaintenanceReport(msgspec.Struct, frozen=True):
    """What one maintenance pass did."""

    partitions_from: date
    partitions_days: int
    event_ids_pruned: int


async def ensure_partitions_ahead(
    conn: asyncpg.Connection | asyncpg.Pool, today: date, days_ahead: int
) -> None:
    """Create the day partitions of `events` for `today` and the `days_ahead` days after it."""
    # Today is included: a fresh database (or one whose maintenance was down for a while)
    # must still accept today's events.
    for attempt in range(3):
        try:
            await conn.execute(
                "SELECT ensure_event_partitions($1::date, $2)", today, days_ahead + 1
            )
            return
        except asyncpg.DuplicateTableError:
            # The aggregator created the same partition at the same moment (CREATE TABLE IF
            # NOT EXISTS is not race-free); the function is idempotent, so run it again.
            if attempt == 2:
                raise


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
    await ensure_partitions_ahead(pool, today, partitions_ahead_days)
    pruned = await prune_event_ids(pool, now, timedelta(days=dedup_horizon_days))
    return MaintenanceReport(today, partitions_ahead_days + 1, pruned)
