"""Rebuilds the B-tree indexes that interleaved writes left loose, once their rows stop moving.

A B-tree page that fills up in the middle of the key range splits in half. Rows that arrive in
key order (live events of one project, by time) fill pages to the fillfactor, but a backfill or
an import interleaves projects and days, and rollup upserts land all over their key range: the
demo's day partitions' indexes were ~55 % full and the rollups' primary key 52 %
(docs/storage.md, "Index compaction"). Nothing shrinks them afterwards: vacuum frees dead
entries, not half-empty pages.

So each tiering pass rebuilds, with `REINDEX INDEX CONCURRENTLY` (writes and reads go on; it
waits for the transactions already running), the B-tree indexes of
- the day partitions of `event_rows` whose day ended more than a day ago (`CLOSED_AFTER`), and
- `rollups` and `session_rollups`, whose past buckets no longer change,
when an index was never rebuilt, or has grown past `REBUILD_GROWTH` times its size at the last
rebuild scaled by its table's rows since (late rows or a new backfill loosened it again).
`index_compactions` (migration 0033) keeps each rebuild's size and rows. An index of fewer than
`MIN_PAGES` pages is left alone (nothing to gain).

Between passes the tiering service looks every minute for the tables no write touched in the
last two minutes (`QuietTables`) and compacts those alone, so a backfill's days are packed a few
minutes after it ends.

One compactor at a time (an advisory lock; another tiering instance skips the step). A rebuild
interrupted (a lock timeout, a crash) leaves an invalid `<index>_ccnew` or `_ccold` index that
writes would keep maintaining: the next pass drops it first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import structlog

from libs.common.event_partitions import partition_name
from libs.common.observability import error_text

log = structlog.get_logger(__name__)

COMPACTION_LOCK = 0x5354524358  # "STRCX"
CLOSED_AFTER = timedelta(days=1)
REBUILD_GROWTH = 1.5
MIN_PAGES = 4
PAGE_BYTES = 8192
_TABLES = ("rollups", "session_rollups")
# How long a rebuild waits for a lock (the transactions it must outlast, an ACCESS EXCLUSIVE
# drop of its partition) before it gives up until the next pass.
_LOCK_TIMEOUT = "30s"

# The B-tree indexes that may be compacted, with their size now, their table's rows (the
# planner's estimate) and what the last rebuild recorded.
_CANDIDATES = """
SELECT x.relname AS index_name, t.relname AS table_name, pg_relation_size(x.oid) AS bytes,
    greatest(t.reltuples, 0)::float8 AS table_rows,
    c.index_bytes AS last_bytes, c.table_rows AS last_rows
FROM pg_index AS i
JOIN pg_class AS x ON x.oid = i.indexrelid
JOIN pg_class AS t ON t.oid = i.indrelid
JOIN pg_namespace AS n ON n.oid = t.relnamespace AND n.nspname = current_schema()
JOIN pg_am AS am ON am.oid = x.relam AND am.amname = 'btree'
LEFT JOIN index_compactions AS c ON c.index_name = x.relname
WHERE i.indisvalid
    AND (t.relname = ANY($1::text[])
         OR (t.relispartition AND t.relname ~ '^events_[0-9]{8}$' AND t.relname < $2))
ORDER BY t.relname, x.relname
"""
# What an interrupted REINDEX CONCURRENTLY leaves behind.
_LEFTOVERS = """
SELECT x.relname FROM pg_index AS i
JOIN pg_class AS x ON x.oid = i.indexrelid
JOIN pg_namespace AS n ON n.oid = x.relnamespace AND n.nspname = current_schema()
WHERE NOT i.indisvalid AND x.relname ~ '_cc(new|old)[0-9]*$'
"""


class CompactionReport(msgspec.Struct, frozen=True):
    """What one compaction step did."""

    indexes: int = 0  # indexes rebuilt
    bytes_before: int = 0
    bytes_after: int = 0
    failed: int = 0  # rebuilds given up (a lock timeout): tried again next pass
    skipped: bool = False  # another compactor held the lock
    finished: bool = True  # False: the time budget ran out first


def needs_rebuild(
    pages: float, table_rows: float, last_bytes: int | None, last_rows: float | None
) -> bool:
    """Whether an index of `pages` pages over `table_rows` rows is worth rebuilding, given the
    size and rows of its last rebuild (None: never rebuilt)."""
    if pages < MIN_PAGES:
        return False
    if last_bytes is None or last_rows is None:
        return True
    expected = last_bytes * max(1.0, table_rows / max(last_rows, 1.0))
    return pages * PAGE_BYTES > REBUILD_GROWTH * max(expected, MIN_PAGES * PAGE_BYTES)


async def compact_indexes(
    pool: asyncpg.Pool,
    now: datetime | None = None,
    *,
    budget_s: float = 600.0,
    on_progress: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    only_tables: Collection[str] | None = None,
) -> CompactionReport:
    """Rebuild the loose indexes (module docstring), within about `budget_s` seconds; the rest
    waits for the next pass. `only_tables`: only the indexes of these tables."""
    now = now or datetime.now(UTC)
    closed_before = partition_name((now - CLOSED_AFTER).astimezone(UTC).date())
    started = time.monotonic()
    indexes = failed = bytes_before = bytes_after = 0
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", COMPACTION_LOCK):
            return CompactionReport(skipped=True)
        try:
            await conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT}'")
            for name in [r["relname"] for r in await conn.fetch(_LEFTOVERS)]:
                await _drop_leftover(conn, name)
            await conn.execute(
                "DELETE FROM index_compactions AS c WHERE NOT EXISTS (SELECT 1 FROM pg_class AS x"
                " WHERE x.relname = c.index_name AND x.relkind = 'i'"
                " AND x.relnamespace = current_schema()::regnamespace)"
            )
            for row in await conn.fetch(_CANDIDATES, list(_TABLES), closed_before):
                if time.monotonic() - started > budget_s or (should_stop and should_stop()):
                    return CompactionReport(
                        indexes, bytes_before, bytes_after, failed, finished=False
                    )
                if only_tables is not None and row["table_name"] not in only_tables:
                    continue
                if not needs_rebuild(
                    row["bytes"] / PAGE_BYTES,
                    row["table_rows"],
                    row["last_bytes"],
                    row["last_rows"],
                ):
                    continue
                after = await _rebuild(conn, row["index_name"])
                if after is None:
                    failed += 1
                    continue
                indexes += 1
                bytes_before += row["bytes"]
                bytes_after += after
                if on_progress is not None:
                    on_progress()
        finally:
            await conn.execute("RESET lock_timeout")
            await conn.execute("SELECT pg_advisory_unlock($1)", COMPACTION_LOCK)
    return CompactionReport(indexes, bytes_before, bytes_after, failed)


class QuietTables:
    """Which of the tables compaction looks at no write has touched over the last two calls
    (PostgreSQL's counts of inserted, updated and deleted rows unchanged twice: a backend
    reports its counts up to seconds late), so the tiering service can compact a backfill's
    days a few minutes after it ends instead of at the next pass. The first calls only
    count."""

    def __init__(self) -> None:
        self._changes: dict[str, int] = {}
        self._unchanged: dict[str, int] = {}

    async def settled(self, pool: asyncpg.Pool) -> set[str]:
        rows = await pool.fetch(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS changes"
            " FROM pg_stat_user_tables WHERE schemaname = current_schema()"
            " AND (relname = ANY($1::text[]) OR relname ~ '^events_[0-9]{8}$')",
            list(_TABLES),
        )
        now = {r["relname"]: int(r["changes"]) for r in rows}
        self._unchanged = {
            name: self._unchanged.get(name, 0) + 1 if self._changes.get(name) == changes else 0
            for name, changes in now.items()
        }
        self._changes = now
        return {name for name, looks in self._unchanged.items() if looks >= 2}


async def _rebuild(conn: asyncpg.Connection, index: str) -> int | None:
    """REINDEX one index concurrently and record it; its new size, None if it was given up."""
    try:
        await conn.execute(f'REINDEX INDEX CONCURRENTLY "{index}"')
    except (asyncpg.LockNotAvailableError, asyncpg.UndefinedTableError) as exc:
        # A lock wait ran out, or tiering dropped the partition meanwhile: the next pass
        # drops what the rebuild left and tries again.
        log.info("index_compaction_deferred", index=index, error=error_text(exc))
        return None
    row = await conn.fetchrow(
        "SELECT pg_relation_size(x.oid) AS bytes, greatest(t.reltuples, 0)::float8 AS table_rows"
        " FROM pg_class AS x JOIN pg_index AS i ON i.indexrelid = x.oid"
        " JOIN pg_class AS t ON t.oid = i.indrelid"
        " WHERE x.relname = $1 AND x.relnamespace = current_schema()::regnamespace",
        index,
    )
    if row is None:
        return None
    await conn.execute(
        "INSERT INTO index_compactions (index_name, compacted_at, index_bytes, table_rows)"
        " VALUES ($1, now(), $2, $3) ON CONFLICT (index_name) DO UPDATE SET"
        " compacted_at = excluded.compacted_at, index_bytes = excluded.index_bytes,"
        " table_rows = excluded.table_rows",
        index,
        row["bytes"],
        row["table_rows"],
    )
    return int(row["bytes"])


async def _drop_leftover(conn: asyncpg.Connection, index: str) -> None:
    try:
        await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{index}"')
        log.info("index_compaction_leftover_dropped", index=index)
    except asyncpg.LockNotAvailableError as exc:
        log.info("index_compaction_leftover_kept", index=index, error=error_text(exc))
