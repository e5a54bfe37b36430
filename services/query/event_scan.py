"""One view of a project's events over any time range, whichever tier holds each day: the
analyses (funnels, retention, paths, cohorts, ...) are written once against `events_scan`.

Per UTC day of the range:
- a day with active parts is read from its day files (through the local cache), plus the rows
  PostgreSQL received for it after its last part: `inserted_xid >= watermark`, where the
  watermark is the end of the xid range the parts cover, so no row is read twice or missed;
- any other day is read from PostgreSQL (asyncpg COPY -> Arrow -> DuckDB), only the columns the
  view needs.

    scan = await open_scan(deps, "acme", start, end, include_bots=False)
    try:
        rows = await scan.query("SELECT name, count(*) FROM events_scan GROUP BY name")
    finally:
        scan.close()
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Protocol

import asyncpg
import duckdb
import msgspec
import pyarrow as pa
import pyarrow.csv as pacsv

from libs.common.day_files import DayPart, active_parts, day_bounds, days_between
from libs.common.day_files.postgres_rows import (
    ProjectId,
    literal,
)
from libs.common.errors import StrataError
from libs.common.object_store import ObjectArchived, ObjectNotFound
from services.query.column_cache import (
    CACHED_COLUMNS,
    CACHED_VIEW_COLUMNS,
    CACHED_VIEW_SUFFIX,
    TIE_ROW,
    CachedFiles,
    CachedRows,
    cacheable,
)
from services.query.hot_rows import HotRead, LateRange
from services.query.person_keys import PERSON_KEY_ALIASES, aliases_are_keyed, rows_are_keyed
from services.query.scan_engine import (
    KEYED_SCAN_COLUMNS,
    SCAN_COLUMNS,
    STORED_COLUMNS,
    FileColumns,
    ScanEngine,
    null_of,
)

__all__ = ["SCAN_COLUMNS", "ArchivedDaysError", "EventScan", "TierRead", "open_scan"]


class ScanSources(Protocol):
    """Where scans read from: QueryDeps, or anything with these two attributes."""

    pool: asyncpg.Pool
    scan_engine: ScanEngine


class TierRead(msgspec.Struct, frozen=True):
    """Rows read from one tier for a request and the time spent getting them."""

    tier: str  # "hot": PostgreSQL; "cold": day files from the object store
    rows: int
    ms: float


class ArchivedDaysError(StrataError):
    """Some days of the range are held only by Archive-tier files that are not restored."""

    code = "days_archived"

    def __init__(self, days: Sequence[date], parts: Sequence[DayPart]) -> None:
        shown = ", ".join(d.isoformat() for d in days[:10])
        more = f" and {len(days) - 10} more" if len(days) > 10 else ""
        super().__init__(f"days {shown}{more} are archived; restore them to read them")
        self.days = list(days)
        self.parts = list(parts)


class EventScan:
    """A DuckDB connection holding the view `events_scan` and the table `persons` for one
    project and range, and which tiers filled them. Close it (or use `async with`)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        project_id: str,
        start: datetime,
        end: datetime,
        tiers: list[TierRead],
        file_days: list[date],
        missing_days: list[date],
        engine: ScanEngine,
        pinned: list[DayPart],
        person_keys: bool = False,
        ties_by_position: bool = False,
        cached: CachedFiles | None = None,
        cached_rows: CachedRows | None = None,
    ) -> None:
        self.con = con
        self.project_id = project_id
        self.start = start
        self.end = end
        self.tiers = tiers
        self.file_days = file_days  # days read from day files (plus their late rows)
        self.missing_days = missing_days  # archived days left out (allow_partial only)
        # Whether `events_scan_keyed` exists: every row and alias has person keys.
        self.person_keys = person_keys
        # Whether every row has a position (`tie_row`; `tie_id` NULL throughout).
        self.ties_by_position = ties_by_position
        # The columns of the `*_cached` views (empty: none), which read the day files the
        # column cache holds from memory (services/query/column_cache.py).
        self.cached_columns = CACHED_VIEW_COLUMNS if cached and cached.tables else frozenset()
        self._cached = cached
        # Every row as in-memory tables (the column cache's and the hot rows'), when they hold
        # them all (else None).
        self.cached_rows = cached_rows
        self._engine = engine
        self._pinned = pinned
        self._closed = False

    async def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL against the scan in a worker thread (DuckDB releases the GIL)."""

        def run() -> list[tuple[Any, ...]]:
            return self.con.execute(sql, params or []).fetchall()

        return await asyncio.to_thread(run)

    async def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Like `query`, returning an Arrow table."""

        def run() -> pa.Table:
            return self.con.sql(sql, params=params or None).to_arrow_table()

        return await asyncio.to_thread(run)

    def close(self) -> None:
        """Release the connection and unpin the day files."""
        if self._closed:
            return
        self._closed = True
        self.con.close()
        if self._cached is not None:
            self._engine.columns.release(self._cached)
        if self._engine.cache is not None and self._pinned:
            self._engine.cache.release(self._pinned)

    async def __aenter__(self) -> EventScan:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Planning


class _Plan(msgspec.Struct, kw_only=True):
    file_parts: list[DayPart]
    file_days: list[date]
    missing_days: list[date]
    hot_days: list[date]  # whole days read from PostgreSQL (the view clips them to the range)
    late: list[LateRange]  # rows of days with files that arrived after their last part


def _plan(
    days: list[date],
    parts: list[DayPart],
    start: datetime,
    end: datetime,
    now: datetime,
    allow_partial: bool,
) -> _Plan:
    by_day: dict[date, list[DayPart]] = defaultdict(list)
    for part in parts:
        by_day[part.day].append(part)
    archived = {d: ps for d, ps in by_day.items() if not all(p.readable_at(now) for p in ps)}
    if archived and not allow_partial:
        raise ArchivedDaysError(
            sorted(archived), [p for ps in archived.values() for p in ps if not p.readable_at(now)]
        )
    plan = _Plan(file_parts=[], file_days=[], missing_days=sorted(archived), hot_days=[], late=[])
    for day in days:
        if day in archived:
            continue
        if day in by_day:
            lo, hi = day_bounds(day)
            plan.file_parts.extend(by_day[day])
            plan.file_days.append(day)
            plan.late.append((max(lo, start), min(hi, end), max(p.xid_to for p in by_day[day])))
        else:
            plan.hot_days.append(day)
    return plan


# ---------------------------------------------------------------------------------------------
# Reading


async def _copy_csv(pool: asyncpg.Pool, query: str, types: dict[str, pa.DataType]) -> pa.Table:
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    async with pool.acquire() as conn:
        await conn.copy_from_query(query, output=collect, format="csv", header=True)
    return pacsv.read_csv(
        pa.BufferReader(b"".join(chunks)),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )


async def _read_persons(pool: asyncpg.Pool, project_id: str) -> pa.Table:
    query = (
        "SELECT person_id, traits::text AS traits,"
        " (extract(epoch FROM first_seen) * 1000000)::bigint AS first_seen"
        f" FROM persons WHERE project_id = {literal(ProjectId(project_id))}"
    )
    table = await _copy_csv(
        pool, query, {"person_id": pa.string(), "traits": pa.string(), "first_seen": pa.int64()}
    )
    return table.set_column(
        2, "first_seen", table.column("first_seen").cast(pa.timestamp("us", tz="UTC"))
    )


async def _no_persons() -> None:
    return None


async def _timed(read: Awaitable[HotRead]) -> tuple[HotRead, float]:
    started = time.perf_counter()
    result = await read
    return result, (time.perf_counter() - started) * 1000


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_instant(value: datetime) -> str:
    return f"TIMESTAMPTZ {_sql_string(value.astimezone(UTC).isoformat())}"


# What orders a row among rows tied on (person_key, ts) of its source (`events_scan_stored`'s
# last two columns): `tie_row`, its position (file number << 32 | row in the file) when it comes
# from a day file claiming the tie order (libs/common/day_files/layout.py, TIE_ORDER), where rows
# of one stored person key at one ts lie in event-id code-point order; else `tie_id`, its event
# id (PostgreSQL's rows, files written before the claim). Exactly one of the two is not NULL.
TIE_COLUMNS = ("tie_row", "tie_id")
_TIES_BY_ID = "CAST(NULL AS BIGINT) AS tie_row, event_id AS tie_id"
# The name (plus the group's number) of the connection's variable holding a group's files.
_FILES_VARIABLE = "strata_files_"
_CACHED_FILES_VARIABLE = "strata_cached_files_"


def ties_by_position(
    hot: Sequence[pa.Table], paths: Sequence[str], file_columns: FileColumns
) -> bool:
    """Every row of a scan over these sources has a position (TIE_COLUMNS' `tie_row`): no rows
    from PostgreSQL and every file claims the tie order, so `tie_id` is NULL on every row and
    a reader ordering ties need not read it."""
    return all(t.num_rows == 0 for t in hot) and all(
        tie_order for _, tie_order, _ in file_columns.groups(paths)
    )


def _file_sources(
    con: duckdb.DuckDBPyConnection,
    paths: Sequence[str],
    file_columns: FileColumns,
    columns: Sequence[str],
    variable: str,
) -> list[str]:
    """A SELECT of `columns` and the tie columns per group of `paths` read from Parquet; the
    files are numbered (TIE_COLUMNS' `tie_row`) in order from 0."""
    sources = []
    first_file = 0
    for number, (held, tie_order, group) in enumerate(file_columns.groups(paths)):
        # The file list as a variable of this connection, not a literal in the view: every
        # bind of a view over it (each view created on it, each query) otherwise binds the
        # list's expressions again, ~3 µs a file (docs/analytics.md).
        files = f"getvariable('{variable}{number}')"
        con.execute(f"SET VARIABLE {variable}{number} = ?", [group])
        selected = ", ".join(c if c in held else f"{null_of(c)} AS {c}" for c in columns)
        # Ties: a file claiming the tie order gives each row's position (its number among the
        # scan's files, high bits, and its row in the file) instead of its event id.
        ties = (
            f"CAST(file_index + {first_file} AS BIGINT) * {1 << 32} + file_row_number AS tie_row,"
            " CAST(NULL AS VARCHAR) AS tie_id"
            if tie_order
            else _TIES_BY_ID
        )
        # Not Hive partitions, though the cache's folders look like them (`project=<id>/
        # dt=<day>`, under a root the operator picks): DuckDB would take a folder's value for a
        # stored column of the same name, and detecting them cost ~50 µs a file at every bind
        # of the view (each view over it, each query).
        sources.append(
            f"SELECT {selected}, {ties} FROM read_parquet({files}, hive_partitioning = false)"
        )
        first_file += len(group)
    return sources


def _create_views(
    con: duckdb.DuckDBPyConnection,
    *,
    sources: Sequence[str],
    stored: Sequence[str],
    where: str,
    keyed: bool,
    suffix: str = "",
) -> None:
    """`events_scan` (and `events_scan_keyed`, `events_scan_stored` when `keyed`), with
    `suffix`, over the UNION ALL of `sources` (each giving the `stored` columns and the tie
    columns), rows filtered by `where`."""
    rows = f"strata_event_rows{suffix}"
    con.execute(
        f"CREATE TEMP VIEW {rows} AS SELECT * FROM ("
        + " UNION ALL ".join(sources)
        + f") AS e WHERE {where}"
    )
    outputs = ", ".join(
        "COALESCE(a.person_id, e.user_id, e.distinct_id) AS person_id"
        if c == "person_id"
        else f"e.{c}"
        for c in SCAN_COLUMNS
        if c in stored or c == "person_id"
    )
    con.execute(
        f"CREATE TEMP VIEW events_scan{suffix} AS SELECT {outputs} FROM {rows} AS e"
        " LEFT JOIN strata_aliases AS a ON a.distinct_id = e.distinct_id"
    )
    if not keyed:
        return
    # The same person as events_scan's person_id, as an integer: an alias applies to the
    # device (distinct_id, whose key is device_key, or person_key when it is the same id).
    # Then the stored key and the tie columns (TIE_COLUMNS): tied rows of one person are
    # ordered by position when they are of one file and one stored key.
    kept = [c for c in (*KEYED_SCAN_COLUMNS, *TIE_COLUMNS) if c in stored or c in TIE_COLUMNS]
    keyed_outputs = ", ".join(
        "COALESCE(k.person, e.person_key) AS person_key, e.person_key AS stored_key"
        if c == "person_key"
        else f"e.{c}"
        for c in kept
    )
    con.execute(
        f"CREATE TEMP VIEW events_scan_keyed{suffix} AS SELECT {keyed_outputs}"
        f" FROM {rows} AS e LEFT JOIN {PERSON_KEY_ALIASES} AS k"
        " ON k.device = COALESCE(e.device_key, e.person_key)"
    )
    # The stored keys, no join: a reader that needs few rows' persons resolves just those
    # (person_keys.resolved_person_keys) instead of joining every row with the aliases;
    # and what orders ties without reading every event id (TIE_COLUMNS).
    stored_outputs = ", ".join(
        "e.person_key, COALESCE(e.device_key, e.person_key) AS alias_key"
        if c == "person_key"
        else f"e.{c}"
        for c in kept
    )
    con.execute(
        f"CREATE TEMP VIEW events_scan_stored{suffix} AS SELECT {stored_outputs} FROM {rows} AS e"
    )


def _build_view(
    con: duckdb.DuckDBPyConnection,
    *,
    paths: list[str],
    hot: Sequence[pa.Table],
    aliases: pa.Table,
    persons: pa.Table | None,
    start: datetime,
    end: datetime,
    include_bots: bool,
    unkeyed_paths: frozenset[str],
    erased: frozenset[str] = frozenset(),
    file_columns: FileColumns | None = None,
    cached: Mapping[str, pa.Table] | None = None,
) -> bool:
    """Create `events_scan` (and `persons` when given); also `events_scan_keyed`,
    `events_scan_stored` and `person_key_aliases` when every row and alias has person keys,
    which the return value says (services/query/person_keys.py;
    `unkeyed_paths`: the paths among `paths` with rows without keys). With `cached` (decoded
    columns of some of `paths`, services/query/column_cache.py), also the same views over
    `CACHED_COLUMNS` only, named with `CACHED_VIEW_SUFFIX`, reading those files from memory."""
    file_columns = file_columns or FileColumns()
    columns = ", ".join(STORED_COLUMNS)
    con.register("strata_aliases", aliases)
    hot_sources = []
    # PostgreSQL's rows come as a few tables, one per column encoding (services/query/
    # compact_rows.py): DuckDB reads each as it is.
    for number, table in enumerate(hot):
        con.register(f"strata_hot_rows_{number}", table)
        hot_sources.append(f"SELECT {{}}, {_TIES_BY_ID} FROM strata_hot_rows_{number}")
    keyed = (
        all(rows_are_keyed(t) for t in hot)
        and aliases_are_keyed(aliases)
        and not any(p in unkeyed_paths for p in paths)
    )
    # Files of one set of columns are read together; a part written before a column was
    # added (the person keys among them) reads it as NULL.
    sources = _file_sources(con, paths, file_columns, STORED_COLUMNS, _FILES_VARIABLE)
    sources += [source.format(columns) for source in hot_sources]
    where = f"e.ts >= {_sql_instant(start)} AND e.ts < {_sql_instant(end)}"
    if not include_bots:
        where += " AND NOT e.is_bot"
    if erased:
        # Persons of open erasure requests: gone from PostgreSQL, still in day files until
        # the tiering service rewrites them (services/query/erased_persons.py).
        con.register("strata_erased", pa.table({"id": pa.array(sorted(erased), pa.string())}))
        where += (
            " AND e.distinct_id NOT IN (SELECT id FROM strata_erased)"
            " AND (e.user_id IS NULL OR e.user_id NOT IN (SELECT id FROM strata_erased))"
        )
    if keyed:
        con.register(
            PERSON_KEY_ALIASES,
            aliases.select(["device_key", "person_key"]).rename_columns(["device", "person"]),
        )
    _create_views(con, sources=sources, stored=STORED_COLUMNS, where=where, keyed=keyed)
    if cached:
        # The files not cached, then the cached ones (numbered after them for their ties),
        # then PostgreSQL's rows: the same rows as above, fewer columns.
        narrow = [p for p in paths if p not in cached]
        sources = _file_sources(con, narrow, file_columns, CACHED_COLUMNS, _CACHED_FILES_VARIABLE)
        selected = ", ".join(CACHED_COLUMNS)
        # One table per schema (the dictionaries' index widths differ between files).
        by_schema: dict[pa.Schema, list[pa.Table]] = {}
        for path in paths:
            if path in cached:
                by_schema.setdefault(cached[path].schema, []).append(cached[path])
        for number, tables in enumerate(by_schema.values()):
            con.register(f"strata_cached_{number}", pa.concat_tables(tables))
            sources.append(
                f"SELECT {selected}, {TIE_ROW}, CAST(NULL AS VARCHAR) AS tie_id"
                f" FROM strata_cached_{number}"
            )
        sources += [source.format(selected) for source in hot_sources]
        _create_views(
            con,
            sources=sources,
            stored=CACHED_COLUMNS,
            where=where,
            keyed=keyed,
            suffix=CACHED_VIEW_SUFFIX,
        )
    if persons is not None:
        con.register("strata_persons", persons)
        con.execute(
            "CREATE TEMP TABLE persons AS"
            " SELECT person_id, traits::JSON AS traits, first_seen FROM strata_persons"
        )
        con.unregister("strata_persons")
    return keyed


def cached_columns(engine: ScanEngine, paths: Sequence[str]) -> tuple[CachedFiles, list[str]]:
    """The column cache's tables of `paths` (pinned: release them with the scan), and the
    files among `paths` it could hold but does not yet (to fill once the scan is built)."""
    if not engine.columns.enabled:
        return CachedFiles({}), []
    candidates = []
    for path in paths:
        footer = engine.file_columns.of(path)
        if cacheable(footer.columns, footer.tie_order):
            candidates.append(path)
    found = engine.columns.acquire(candidates)
    return found, [p for p in candidates if p not in found.tables]


async def open_scan(
    deps: ScanSources,
    project_id: str,
    start: datetime,
    end: datetime,
    *,
    include_bots: bool,
    with_persons: bool = True,
    allow_partial: bool = False,
    now: datetime | None = None,
) -> EventScan:
    """The project's events with start <= ts < end as the DuckDB view `events_scan`
    (person_id resolved through person_aliases), the table `persons(person_id, traits JSON,
    first_seen)` (skip it with `with_persons=False` when an analysis needs no traits), and
    `tiers`. Raises `ArchivedDaysError` when some day is only in unrestored Archive files,
    unless `allow_partial` (those days are then left out and listed in `missing_days`)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("open_scan needs timezone-aware start and end")
    engine: ScanEngine = deps.scan_engine
    days = days_between(start, end)
    for attempt in range(2):
        parts: list[DayPart] = []
        if engine.cache is not None and days:
            parts = await active_parts(deps.pool, project_id, days[0], days[-1])
        plan = _plan(days, parts, start, end, now or datetime.now(UTC), allow_partial)
        cold_started = time.perf_counter()
        try:
            paths = await engine.cache.acquire(plan.file_parts) if engine.cache else []
        except ObjectNotFound:
            # A part was superseded and deleted after the catalog was read: plan again.
            if attempt:
                raise
            continue
        except ObjectArchived as exc:
            archived = [p for p in plan.file_parts if p.object_name == exc.name]
            raise ArchivedDaysError(sorted({p.day for p in archived}), archived) from exc
        break
    cold_ms = (time.perf_counter() - cold_started) * 1000
    try:
        # The PostgreSQL reads of a scan run side by side, each on its own connection.
        (hot, hot_ms), aliases, erased, persons = await asyncio.gather(
            _timed(engine.hot_rows.read(deps.pool, project_id, plan.hot_days, plan.late)),
            engine.aliases.aliases(deps.pool, project_id),
            engine.erased.ids(deps.pool, project_id),
            _read_persons(deps.pool, project_id) if with_persons else _no_persons(),
        )
        con = engine.connection()
        local = [str(p) for p in paths]
        acquired: list[CachedFiles] = []  # released here if the scan is not made
        try:

            def build() -> tuple[bool, bool, CachedFiles, list[str]]:
                # Footers of parts not seen before are read here, off the event loop.
                found, missing = cached_columns(engine, local)
                acquired.append(found)
                keyed = _build_view(
                    con,
                    paths=local,
                    hot=hot.tables,
                    aliases=aliases,
                    persons=persons,
                    start=start,
                    end=end,
                    include_bots=include_bots,
                    erased=erased,
                    unkeyed_paths=engine.file_columns.unkeyed(local),
                    file_columns=engine.file_columns,
                    cached=found.tables,
                )
                positioned = ties_by_position(hot.tables, local, engine.file_columns)
                return keyed, positioned, found, missing

            keyed, by_position, cached, missing = await asyncio.to_thread(build)
            # Every row in memory as Arrow: each day file's columns cached, and PostgreSQL's
            # rows (the hot rows' tables), all with person keys and no erasure to filter.
            every_row_in_memory = keyed and not erased and all(p in cached.tables for p in local)
        except BaseException:
            for found in acquired:
                engine.columns.release(found)
            con.close()
            raise
        # Files read from Parquet this time are decoded for the next scans, in the background.
        engine.columns.fill_later(missing, since=cached.since)
    except BaseException:
        if engine.cache is not None:
            engine.cache.release(plan.file_parts)
        raise
    tiers = []
    if plan.hot_days or plan.late:
        tiers.append(TierRead("hot", hot.num_rows, round(hot_ms, 3)))
    if plan.file_parts:
        tiers.append(TierRead("cold", sum(p.rows or 0 for p in plan.file_parts), round(cold_ms, 3)))
    return EventScan(
        con,
        project_id=project_id,
        start=start,
        end=end,
        tiers=tiers,
        file_days=plan.file_days,
        missing_days=plan.missing_days,
        engine=engine,
        pinned=plan.file_parts,
        person_keys=keyed,
        ties_by_position=by_position,
        cached=cached,
        cached_rows=CachedRows(
            (*(cached.tables[p] for p in local), *hot.tables), start, end, include_bots
        )
        if every_row_in_memory
        else None,
    )
