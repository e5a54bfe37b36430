"""The rows a scan reads from PostgreSQL: whole days without day files (today, usually, and
yesterday until it is exported) and the late rows of days with files.

Days without files are kept in memory between scans, by the watermark scheme of the exports:
in one REPEATABLE READ snapshot, rows below the snapshot's xmin are final and join the cache,
rows at or above it may belong to transactions still running and serve this scan only, and the
next scan reads only rows at or past the cached watermark. Rows are never updated, but they can
be deleted (erasure): each scan counts the day's rows below the watermark, an exact check since
no new row can get an xid below it, and reloads the day when the count differs. A busy day then
costs a count and a few new rows instead of copying every row again (43k rows: ~130 ms).

A scan's cost follows the days that hold rows, never the calendar: only days whose `events`
partition exists are read or cached (a range from 1970 reads the few partitions there are),
consecutive uncached days are read as one range, and the statements are cut into pieces of
at most `_BRANCHES_PER_STATEMENT` terms (PostgreSQL parses a long UNION ALL recursively).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc

from libs.common.day_files import day_bounds
from libs.common.day_files.postgres_rows import (
    ProjectId,
    event_query,
    event_schema,
    fetch_rows,
    literal,
)

_MAX_CHUNKS = 16
_BRANCHES_PER_STATEMENT = 200
# The UTC days whose partition of `events` exists (partitions are named events_YYYYMMDD).
_PARTITION_DAYS = """
SELECT to_date(substr(c.relname, 8), 'YYYYMMDD') AS day
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_[0-9]{8}$'
"""
# Late rows are read per request (there are few); the view filters bots, instants and ranges.
LateRange = tuple[datetime, datetime, int]  # [lo, hi) with inserted_xid >= the third


@dataclass
class _CachedDay:
    rows: pa.Table  # every row of the day with inserted_xid < watermark, bots included
    watermark: int


@dataclass
class HotRead:
    """Rows for a scan, and how many of them were copied from PostgreSQL for it."""

    table: pa.Table
    rows_copied: int


class HotRows:
    """Reads a scan's PostgreSQL rows; caches days without files, at most `max_rows` rows."""

    def __init__(self, columns: Sequence[str], *, max_rows: int = 500_000) -> None:
        self.columns = tuple(columns)
        self.max_rows = max_rows
        self._days: OrderedDict[tuple[str, date], _CachedDay] = OrderedDict()
        self.rows_copied = 0  # since start (tests, metrics)
        self.reloads = 0  # days found changed below their watermark (deletions)

    def forget(self, project_id: str) -> None:
        """Drop a project's cached days; the next scan copies them again."""
        for key in [k for k in self._days if k[0] == project_id]:
            del self._days[key]

    def empty(self) -> pa.Table:
        return event_schema(self.columns).empty_table()

    async def read(
        self,
        pool: asyncpg.Pool,
        project_id: str,
        days: Sequence[date],
        late: Sequence[LateRange],
    ) -> HotRead:
        """Every row of `days` (whole UTC days) and the late rows of `late`."""
        if not days and not late:
            return HotRead(self.empty(), 0)
        project = literal(ProjectId(project_id))
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                # The first statement fixes the snapshot every read below uses.
                xmin: int = await conn.fetchval(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                )
                if days:
                    # Only days with a partition can hold rows; a partition created after
                    # this point holds no row this snapshot sees.
                    stored = {r["day"] for r in await conn.fetch(_PARTITION_DAYS)}
                    days = [d for d in days if d in stored]
                cached = {d: self._days.get((project_id, d)) for d in days}
                changed = await self._changed_days(conn, project, cached)
                for day in changed:
                    cached[day] = None
                branches = []
                for lo, hi in _runs([d for d in days if cached[d] is None]):
                    branches.append(
                        f"e.project_id = {project} AND e.ts >= {literal(lo)}"
                        f" AND e.ts < {literal(hi)}"
                    )
                for day in days:
                    entry = cached[day]
                    if entry is None:
                        continue
                    start, end = day_bounds(day)
                    branches.append(
                        f"e.project_id = {project} AND e.ts >= {literal(start)}"
                        f" AND e.ts < {literal(end)}"
                        f" AND e.inserted_xid >= {literal(entry.watermark)}"
                    )
                for lo, hi, min_xid in late:
                    branches.append(
                        f"e.project_id = {project} AND e.ts >= {literal(lo)}"
                        f" AND e.ts < {literal(hi)} AND e.inserted_xid >= {literal(min_xid)}"
                    )
                columns = (*self.columns, "inserted_xid")
                pieces = [
                    await fetch_rows(
                        conn,
                        " UNION ALL ".join(event_query(columns, where) for where in chunk),
                        columns,
                    )
                    for chunk in _chunks(branches)
                ]
                copied = pa.concat_tables(pieces) if pieces else event_schema(columns).empty_table()
        self.rows_copied += copied.num_rows
        self.reloads += len(changed)
        tables = self._remember(project_id, days, cached, copied, xmin)
        late_tables = [self._late_rows(copied, late, days)] if late else []
        if not tables and not late_tables:
            return HotRead(self.empty(), copied.num_rows)
        return HotRead(
            pa.concat_tables([*tables, *late_tables]).select(list(self.columns)),
            copied.num_rows,
        )

    async def _changed_days(
        self, conn: asyncpg.Connection, project: str, cached: dict[date, _CachedDay | None]
    ) -> list[date]:
        """Cached days whose rows below the watermark are no longer exactly the cached ones."""
        checks = []
        for day, entry in cached.items():
            if entry is None:
                continue
            start, end = day_bounds(day)
            checks.append(
                f"SELECT {literal(day)} AS day, {entry.rows.num_rows} AS cached, count(*) AS now"
                f" FROM events e WHERE e.project_id = {project} AND e.ts >= {literal(start)}"
                f" AND e.ts < {literal(end)} AND e.inserted_xid < {literal(entry.watermark)}"
            )
        changed: list[date] = []
        for chunk in _chunks(checks):
            rows = await conn.fetch(" UNION ALL ".join(chunk))
            changed.extend(r["day"] for r in rows if r["cached"] != r["now"])
        return changed

    def _remember(
        self,
        project_id: str,
        days: Sequence[date],
        cached: dict[date, _CachedDay | None],
        copied: pa.Table,
        xmin: int,
    ) -> list[pa.Table]:
        """Fold the copied rows of whole days into the cache; the rows of those days."""
        if not days:
            return []
        day_of_row = pc.cast(copied.column("ts"), pa.date32())
        final = pc.less(copied.column("inserted_xid"), xmin)
        out = []
        for day in days:
            in_day = pc.equal(day_of_row, pa.scalar(day, pa.date32()))
            new_final = copied.filter(pc.and_(in_day, final))
            pending = copied.filter(pc.and_(in_day, pc.invert(final)))
            entry = cached[day]
            base = [entry.rows] if entry is not None else []
            rows = pa.concat_tables([*base, new_final])
            if rows.column(0).num_chunks > _MAX_CHUNKS:
                rows = rows.combine_chunks()  # one chunk per scan would slow DuckDB down
            watermark = max(xmin, entry.watermark if entry is not None else 0)
            key = (project_id, day)
            self._days[key] = _CachedDay(rows, watermark)
            self._days.move_to_end(key)
            out.append(rows)
            if pending.num_rows:
                out.append(pending)
        self._trim()
        return out

    def _late_rows(
        self, copied: pa.Table, late: Sequence[LateRange], days: Sequence[date]
    ) -> pa.Table:
        """The copied rows that came from the late ranges (days with files)."""
        if not days:
            return copied
        day_of_row = pc.cast(copied.column("ts"), pa.date32())
        whole_days = pa.array(list(days), pa.date32())
        return copied.filter(pc.invert(pc.is_in(day_of_row, value_set=whole_days)))

    def _trim(self) -> None:
        total = sum(entry.rows.num_rows for entry in self._days.values())
        while total > self.max_rows and self._days:
            _, dropped = self._days.popitem(last=False)
            total -= dropped.rows.num_rows


def _runs(days: Sequence[date]) -> list[tuple[datetime, datetime]]:
    """Consecutive days as [start, end) instant ranges, one per run."""
    runs: list[tuple[datetime, datetime]] = []
    for day in sorted(days):
        start, end = day_bounds(day)
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [
        items[i : i + _BRANCHES_PER_STATEMENT]
        for i in range(0, len(items), _BRANCHES_PER_STATEMENT)
    ]
