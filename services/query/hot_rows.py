"""The rows a scan reads from PostgreSQL: whole days without day files (today, usually, every
day right after a backfill until its first export) and the late rows of days with files.

Days without files are kept in memory between scans, compactly (services/query/compact_rows.py:
text columns dictionary-encoded; 57 bytes a row for bench.tiers' events instead of 153 plain)
and within a byte budget, least recently used days dropped first. They are kept current by the
watermark scheme of the exports: in one REPEATABLE READ snapshot, rows below the snapshot's xmin
are final and join the cache, rows at or above it may belong to transactions still running and
serve this scan only, and the next scan reads only rows at or past the cached watermark.

Rows are never updated, and deleted only by statements that leave a trace in the same
transaction, which each scan reads in its snapshot instead of counting every cached row again
(counting costs PostgreSQL ~0.25 s of CPU per million cached rows, at every scan):
- an erasure records the UTC days it deleted rows from (`erasure_requests.hot_days`): a cached
  day that a request unseen by its rows touched is read again;
- the cold move and retention record the days they deleted rows from in `day_tiers`: such a day
  is never cached (its rows are read from PostgreSQL each time; it normally has day files and is
  not a hot day at all);
- a dropped partition leaves no row to read.

A scan's cost follows the days that hold rows, never the calendar: only days whose `events`
partition exists are read or cached (a range from 1970 reads the few partitions there are),
consecutive days are read as one range, and the statements are cut into pieces of at most
`_BRANCHES_PER_STATEMENT` terms (PostgreSQL parses a long UNION ALL recursively) and of at most
`_DAYS_PER_COPY` uncached days (their plain rows are compacted before the next piece is read).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

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
from services.query.compact_rows import append, compact

_BRANCHES_PER_STATEMENT = 200
_DAYS_PER_COPY = 7
# The UTC days whose partition of `events` exists (partitions are named events_YYYYMMDD).
_PARTITION_DAYS = """
SELECT to_date(substr(c.relname, 8), 'YYYYMMDD') AS day
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'event_rows'::regclass AND c.relname ~ '^events_[0-9]{8}$'
"""
# Late rows are read per request (there are few); the view filters bots, instants and ranges.
LateRange = tuple[datetime, datetime, int]  # [lo, hi) with inserted_xid >= the third


@dataclass(frozen=True)
class _Erasures:
    """A project's erasure requests as one snapshot sees them."""

    version: tuple[int, int]  # (count, newest id): requests are only ever inserted
    days: dict[int, frozenset[date]]  # request id -> the UTC days it deleted rows from
    ids: frozenset[int]  # the requests (an entry read in this snapshot holds this very set)

    def touched_since(self, seen: frozenset[int], day: date) -> bool:
        """Whether a request not in `seen` deleted rows of `day`."""
        if seen is self.ids:
            return False
        return any(day in self.days[request] for request in self.ids - seen)


@dataclass
class _CachedDay:
    # every row of the day (at or past `above`) with inserted_xid < watermark, bots included;
    # compact
    rows: pa.Table
    watermark: int
    erasures: frozenset[int]  # the project's erasure requests the rows reflect
    nbytes: int
    # A day with parts: only its rows at or past this part watermark (its late rows) are kept.
    above: int | None = None


@dataclass
class HotRead:
    """Rows for a scan (tables of one schema each, to be read as their union), and how many of
    them were copied from PostgreSQL for it."""

    tables: list[pa.Table]
    rows_copied: int

    @property
    def num_rows(self) -> int:
        return sum(t.num_rows for t in self.tables)


class HotRows:
    """Reads a scan's PostgreSQL rows; caches days without files within `max_bytes`."""

    def __init__(self, columns: Sequence[str], *, max_bytes: int = 512 * 1024**2) -> None:
        self.columns = tuple(columns)
        self.max_bytes = max_bytes
        self._days: OrderedDict[tuple[str, date], _CachedDay] = OrderedDict()
        self._erasures: dict[str, _Erasures] = {}
        self.nbytes = 0  # bytes of the cached rows
        self.rows_copied = 0  # since start (tests, metrics)
        self.reloads = 0  # cached days dropped after a deletion (erasure, tier move) touched them
        self.evictions = 0  # days dropped for the byte budget

    @property
    def cached_rows(self) -> int:
        return sum(entry.rows.num_rows for entry in self._days.values())

    def cached_days(self, project_id: str) -> list[date]:
        """The project's days without files held whole."""
        return sorted(
            day
            for (project, day), e in self._days.items()
            if project == project_id and e.above is None
        )

    def cached_late_days(self, project_id: str) -> list[date]:
        """The project's days with files whose late rows are held."""
        return sorted(
            day
            for (project, day), e in self._days.items()
            if project == project_id and e.above is not None
        )

    def forget(self, project_id: str) -> None:
        """Drop a project's cached days; the next scan copies them again."""
        for key in [k for k in self._days if k[0] == project_id]:
            self._drop(key)

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
            return HotRead([self.empty()], 0)
        # A late range is its day's rows at or past the part watermark; they are cached like a
        # whole day's rows (the view clips them to the scan's range).
        late_days = {lo.astimezone(UTC).date(): min_xid for lo, _, min_xid in late}
        project = literal(ProjectId(project_id))
        columns = (*self.columns, "inserted_xid")
        out: list[pa.Table] = []
        copied = 0
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                # The first statement fixes the snapshot every read below uses.
                xmin: int = await conn.fetchval(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                )
                # Only days with a partition can hold rows; a partition created after this
                # point holds no row this snapshot sees.
                stored = {r["day"] for r in await conn.fetch(_PARTITION_DAYS)}
                for day in [*days, *late_days]:
                    if day not in stored:
                        self._drop((project_id, day))
                days = [d for d in days if d in stored]
                late_days = {d: x for d, x in late_days.items() if d in stored}
                cached: dict[date, _CachedDay | None] = {}
                uncacheable: set[date] = set()
                erasures = _Erasures((0, 0), {}, frozenset())
                if days or late_days:
                    erasures = await self._project_erasures(conn, project_id)
                    deletions = await _days_with_deletions(conn, project_id, [*days, *late_days])
                    # A tier move deletes only rows below the day's watermark, never late
                    # rows; retention deletes every row of the day.
                    uncacheable = {d for d in days if d in deletions}
                    uncacheable |= {d for d in late_days if deletions.get(d) == "deleted"}
                    for day in [*days, *late_days]:
                        entry = self._days.get((project_id, day))
                        if entry is not None and entry.above != late_days.get(day):
                            # The day gained (or lost) parts: its entry holds other rows.
                            self._drop((project_id, day))
                            entry = None
                        if entry is not None and (
                            day in uncacheable or erasures.touched_since(entry.erasures, day)
                        ):
                            self._drop((project_id, day))
                            self.reloads += 1
                            entry = None
                        cached[day] = entry
                seen = erasures.ids
                # Uncached days in pieces, each compacted before the next is read.
                for piece in _pieces([d for d in days if cached[d] is None]):
                    where = [
                        f"e.project_id = {project} AND e.ts >= {literal(lo)}"
                        f" AND e.ts < {literal(hi)}"
                        for lo, hi in _runs(piece)
                    ]
                    rows = await fetch_rows(
                        conn, " UNION ALL ".join(event_query(columns, w) for w in where), columns
                    )
                    copied += rows.num_rows
                    out.extend(
                        self._remember(project_id, piece, cached, rows, xmin, seen, uncacheable)
                    )
                # Cached days and late ranges: only rows at or past their watermark, read by
                # runs of days from the run's lowest watermark (rows a day holds already, or
                # below its part watermark, are skipped below). Once scanned, every day's
                # watermark is the same snapshot's xmin: a run is then one range.
                since = {d: e.watermark for d in days if (e := cached[d]) is not None}
                for day, part_watermark in late_days.items():
                    entry = cached[day]
                    since[day] = part_watermark if entry is None else entry.watermark
                branches = []
                for run in _consecutive(list(since)):
                    lo, hi = day_bounds(run[0])[0], day_bounds(run[-1])[1]
                    branches.append(
                        f"e.project_id = {project} AND e.ts >= {literal(lo)}"
                        f" AND e.ts < {literal(hi)}"
                        f" AND e.inserted_xid >= {literal(min(since[d] for d in run))}"
                    )
                pieces = [
                    await fetch_rows(
                        conn,
                        " UNION ALL ".join(event_query(columns, where) for where in chunk),
                        columns,
                    )
                    for chunk in _chunks(branches)
                ]
                rows = pa.concat_tables(pieces) if pieces else event_schema(columns).empty_table()
                copied += rows.num_rows
                out.extend(
                    self._remember(
                        project_id, list(since), cached, rows, xmin, seen, uncacheable, late_days
                    )
                )
        self.rows_copied += copied
        self._trim()
        return HotRead(_by_schema(out) or [self.empty()], copied)

    async def _project_erasures(self, conn: asyncpg.Connection, project_id: str) -> _Erasures:
        """The project's erasure requests in this snapshot (re-read when their count or the
        newest id changed)."""
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(max(id), 0) AS newest FROM erasure_requests"
            " WHERE project_id = $1",
            project_id,
        )
        version = (int(row["n"]), int(row["newest"]))
        known = self._erasures.get(project_id)
        if known is not None and known.version == version:
            return known
        requests = await conn.fetch(
            "SELECT id, hot_days FROM erasure_requests WHERE project_id = $1", project_id
        )
        days = {r["id"]: frozenset(r["hot_days"]) for r in requests}
        fresh = _Erasures(version, days, frozenset(days))
        self._erasures[project_id] = fresh
        return fresh

    def _remember(
        self,
        project_id: str,
        days: Sequence[date],
        cached: dict[date, _CachedDay | None],
        copied: pa.Table,
        xmin: int,
        erasures: frozenset[int],
        uncacheable: set[date],
        late_days: dict[date, int] | None = None,
    ) -> list[pa.Table]:
        """Fold the copied rows of whole days (or of late ranges: `late_days`, day -> part
        watermark) into the cache; the rows of those days."""
        late_days = late_days or {}
        out = []
        for day, rows in _split_by_day(copied, days).items():
            key = (project_id, day)
            entry = cached[day]
            above = late_days.get(day)
            # Read from the run's lowest watermark: skip what this day holds already (or what
            # its parts hold).
            since = entry.watermark if entry is not None else above
            if since is not None and rows.num_rows:
                rows = rows.filter(pc.greater_equal(rows.column("inserted_xid"), since))
            if day in uncacheable:
                out.append(rows.drop_columns(["inserted_xid"]))
                continue
            if entry is not None and rows.num_rows == 0:
                # No row of the day at or past its watermark: it holds every row below this
                # snapshot's xmin. (A new entry: a concurrent scan may hold the old.)
                self._keep(
                    key,
                    _CachedDay(
                        entry.rows, max(xmin, entry.watermark), erasures, entry.nbytes, above
                    ),
                )
                out.append(entry.rows)
                continue
            xids = rows.column("inserted_xid")
            final = rows.filter(pc.less(xids, xmin)).drop_columns(["inserted_xid"])
            pending = rows.filter(pc.greater_equal(xids, xmin)).drop_columns(["inserted_xid"])
            if entry is None:
                kept, watermark = compact(final), xmin
                if above is not None:
                    # Rows of transactions that ended before the export's snapshot are in the
                    # parts: the day holds every row from its part watermark on.
                    watermark = max(xmin, above)
            else:
                kept, watermark = append(entry.rows, final), max(xmin, entry.watermark)
            # Every buffer is the table's own (encoded or filtered, never sliced): this is
            # what it holds, and cheaper to compute than `nbytes`.
            nbytes = kept.get_total_buffer_size()
            self._keep(key, _CachedDay(kept, watermark, erasures, nbytes, above))
            out.append(kept)
            if pending.num_rows:
                out.append(pending)
        return out

    def _keep(self, key: tuple[str, date], entry: _CachedDay) -> None:
        """Cache `entry` as the most recently used, in place of the day's previous one."""
        self._drop(key)
        self._days[key] = entry
        self.nbytes += entry.nbytes

    def _drop(self, key: tuple[str, date]) -> None:
        entry = self._days.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes

    def _trim(self) -> None:
        while self.nbytes > self.max_bytes and self._days:
            _, dropped = self._days.popitem(last=False)
            self.nbytes -= dropped.nbytes
            self.evictions += 1


async def _days_with_deletions(
    conn: asyncpg.Connection, project_id: str, days: Sequence[date]
) -> dict[date, str]:
    """Days of `days` a tier move (cold, archive) or retention (deleted) took rows from, and
    the tier each is in now."""
    rows = await conn.fetch(
        "SELECT day, tier FROM day_tiers WHERE project_id = $1 AND day = ANY($2::date[])",
        project_id,
        list(days),
    )
    return {r["day"]: r["tier"] for r in rows}


def _split_by_day(rows: pa.Table, days: Sequence[date]) -> dict[date, pa.Table]:
    """The rows of each of `days` (an empty table for a day without rows)."""
    if rows.num_rows == 0:
        return {day: rows for day in days}
    day_of_row = pc.cast(rows.column("ts"), pa.date32())
    present = set(pc.unique(day_of_row).to_pylist())
    none = rows.slice(0, 0)
    return {
        day: rows.filter(pc.equal(day_of_row, pa.scalar(day, pa.date32())))
        if day in present
        else none
        for day in days
    }


def _by_schema(tables: Iterable[pa.Table]) -> list[pa.Table]:
    """Non-empty tables of one schema joined into one (zero-copy), one table per schema."""
    groups: dict[pa.Schema, list[pa.Table]] = {}
    for table in tables:
        if table.num_rows:
            groups.setdefault(table.schema, []).append(table)
    return [pa.concat_tables(group) for group in groups.values()]


def _consecutive(days: Sequence[date]) -> list[list[date]]:
    """Runs of consecutive days."""
    runs: list[list[date]] = []
    for day in sorted(days):
        if runs and (day - runs[-1][-1]).days == 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def _runs(days: Sequence[date]) -> list[tuple[datetime, datetime]]:
    """Consecutive days as [start, end) instant ranges, one per run."""
    return [(day_bounds(run[0])[0], day_bounds(run[-1])[1]) for run in _consecutive(days)]


def _pieces(days: Sequence[date]) -> list[list[date]]:
    """`days` in order, at most `_DAYS_PER_COPY` a piece."""
    ordered = sorted(days)
    return [ordered[i : i + _DAYS_PER_COPY] for i in range(0, len(ordered), _DAYS_PER_COPY)]


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [
        items[i : i + _BRANCHES_PER_STATEMENT]
        for i in range(0, len(items), _BRANCHES_PER_STATEMENT)
    ]
