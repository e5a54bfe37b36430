"""The day partitions of `events`, owned here: every creator (the aggregator before a write and
ahead of time, tiering's maintenance ahead of time) and the one dropper (tiering, once a day's
rows live in day files) go through these functions, so creations serialize on one advisory lock
and drops never remove a row.

Partitions are named `events_YYYYMMDD` and cover one UTC day (`ensure_event_partitions` in
migration 0001 creates them).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog

from libs.common.observability import error_text

log = structlog.get_logger(__name__)

# One creator of partitions at a time: attaching a partition locks `event_rows` (SHARE UPDATE
# EXCLUSIVE since migration 0032; ACCESS EXCLUSIVE before, with PARTITION OF).
PARTITION_LOCK = 0x5354524150  # "STRAP"
# Tiering drops old days' partitions, so only days this recent are remembered as existing; an
# older (backfilled) day is checked on every write, which costs one cheap query.
_REMEMBER_DAYS = 1
# Dropping a partition locks `events` for a moment: wait at most this long for ingestion's
# writes, else leave the (already empty) partition for the next run.
_DROP_LOCK_TIMEOUT = "2s"


def partition_name(day: date) -> str:
    """The `events` partition of a UTC day."""
    return "events_" + day.strftime("%Y%m%d")


class EventPartitions:
    """The day partitions of `events` known to exist in one database (a per-process cache)."""

    def __init__(self) -> None:
        self._known: set[date] = set()

    def unknown(self, days: Iterable[date]) -> list[date]:
        return sorted(d for d in days if d not in self._known)

    def remember(self, days: Iterable[date], today: date) -> None:
        horizon = today - timedelta(days=_REMEMBER_DAYS)
        self._known.update(d for d in days if d >= horizon)

    def forget(self) -> None:
        """Drop the cache (after the database said a partition is missing)."""
        self._known.clear()


async def ensure_partitions(
    conn: asyncpg.Connection,
    days: Iterable[date],
    partitions: EventPartitions | None = None,
) -> None:
    """Create the `events` partitions of `days` that do not exist yet, under PARTITION_LOCK.

    Outside a transaction the creation commits at once, so the cache may remember it; inside the
    caller's transaction it could still roll back, so nothing is remembered.
    """
    known = partitions or EventPartitions()
    wanted = known.unknown(days)
    if not wanted:
        return
    remember = not conn.is_in_transaction()
    missing = await conn.fetch(
        "SELECT d FROM unnest($1::date[]) AS d"
        " WHERE to_regclass('events_' || to_char(d, 'YYYYMMDD')) IS NULL",
        wanted,
    )
    for attempt in range(3) if missing else ():
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
                await conn.execute(
                    "SELECT ensure_event_partitions(d, 1) FROM unnest($1::date[]) AS d",
                    [r["d"] for r in missing],
                )
            break
        except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
            # A creator outside the lock (a release before this one, during a rolling deploy)
            # won the race; the next attempt sees its partition and skips it.
            if attempt == 2:
                raise
    if remember:
        known.remember(wanted, datetime.now(UTC).date())


def days_ahead(today: date, ahead: int, behind: int = 0) -> list[date]:
    """`today`, the `ahead` days after it and the `behind` days before it."""
    return [today + timedelta(days=i) for i in range(-behind, ahead + 1)]


async def ensure_partitions_ahead(
    conn: asyncpg.Connection,
    ahead: int,
    partitions: EventPartitions | None = None,
    *,
    today: date | None = None,
    behind: int = 1,
) -> None:
    """Create the partitions from `behind` days before today to `ahead` days after it, so live
    writes never wait for one."""
    today = today or datetime.now(UTC).date()
    await ensure_partitions(conn, days_ahead(today, ahead, behind), partitions)


async def drop_partition_if_empty(conn: asyncpg.Connection, day: date) -> bool:
    """Drop the day's `events` partition when no project has a row in it. Under the lock no
    insert can slip in between the check and the drop; a late event afterwards recreates the
    partition (the aggregator creates missing partitions)."""
    name = partition_name(day)
    if await conn.fetchval("SELECT to_regclass($1)", name) is None:
        return False
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}'")
            await conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{name}")'):
                return False
            await conn.execute(f'DROP TABLE "{name}"')
    except (asyncpg.LockNotAvailableError, asyncpg.UndefinedTableError) as exc:
        log.info("partition_drop_deferred", partition=name, error=error_text(exc))
        return False
    log.info("partition_dropped", partition=name)
    return True
