"""Metrics computed exactly from the raw `events` and `sessions` rows: any combination of
filters, any time zone, any boundary. Visitors are exact distinct counts here.

Days whose rows moved to day files (the cold move) are answered by the same SQL: their rows
are loaded, inside the request's connection and transaction, into a temporary table, and the
SQL reads `events` UNION ALL that table (`_events_source`), so the metric semantics have one
implementation whichever tier holds a day. Sessions never leave PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta

import asyncpg

from libs.common.model.columns import event_pg_types
from libs.common.rollup_keys import (
    EVENT_DIMENSIONS,
    NONE_VALUE,
    SESSION_ROLLUP_DIMENSIONS,
    VISITOR_COLUMN,
)
from libs.common.schemas.events_v1 import PAGEVIEW
from services.query.buckets import OutputBuckets
from services.query.cold_rows import moved_days, read_cold_rows
from services.query.dependencies import QueryDeps
from services.query.metric_query import ALL, Cells, MetricQuery, SqlParams, cell_of
from services.query.params import EVENT_NAME_DIMENSION
from services.query.responses import TierScan

# What a visitor is counted as: the device (distinct id: the anonymous id, else the user id),
# the same key the rollups' sketches use, so both sources count the same visitors.
PERSON_SQL = f"e.{VISITOR_COLUMN}"
# The aggregator's bounce: fewer than two interactive events.
BOUNCE_SQL = "s.interactive_events < 2"

# The event columns the metric SQL reads, and their types in the temporary table holding the
# moved days' rows.
METRIC_EVENT_COLUMNS: dict[str, str] = event_pg_types(
    [
        "project_id",
        "ts",
        "event_id",
        "name",
        "distinct_id",
        "user_id",
        "session_id",
        "is_bot",
        "properties",
        *EVENT_DIMENSIONS.values(),
    ]
)
COLD_EVENTS_TABLE = "metrics_cold_events"


def _events_source(with_cold: bool, missing: Sequence[date]) -> str:
    """What the metric SQL reads as `events`: PostgreSQL's rows, plus the moved days' rows
    when `with_cold`, without the `missing` days (archived, left out with allow_partial: their
    late rows in PostgreSQL too, so a missing day is missing whole). `from_cold` tells which
    tier a row came from, for the rows per tier of the response."""
    hot_where = ""
    if missing:
        days = ",".join(d.isoformat() for d in missing)
        hot_where = f" WHERE (ts AT TIME ZONE 'UTC')::date <> ALL('{{{days}}}'::date[])"
    if not with_cold:
        return f"(SELECT *, false AS from_cold FROM events{hot_where})"
    columns = ", ".join(METRIC_EVENT_COLUMNS)
    return (
        f"(SELECT {columns}, false AS from_cold FROM events{hot_where}"
        f" UNION ALL SELECT {columns}, true FROM {COLD_EVENTS_TABLE})"
    )


def dimension_sql(alias: str, column: str) -> str:
    """A dimension's value as the rollups store it: missing or empty is '(none)'."""
    return f"coalesce(nullif({alias}.{column}, ''), '{NONE_VALUE}')"


def cohort_terms(params: SqlParams, query: MetricQuery, alias: str) -> list[str]:
    """Rows of persons in the query's cohorts (persons resolved through person_aliases, as
    the analyses resolve them)."""
    if query.cohort_persons is None:
        return []
    person = (
        f"coalesce((SELECT a.person_id FROM person_aliases a WHERE a.project_id = "
        f"{alias}.project_id AND a.distinct_id = {alias}.distinct_id), {alias}.user_id, "
        f"{alias}.distinct_id)"
    )
    return [f"{person} = ANY({params.add(list(query.cohort_persons))}::text[])"]


def _event_dimension_sql(dimension: str) -> str:
    if dimension == EVENT_NAME_DIMENSION:
        return "e.name"
    return dimension_sql("e", EVENT_DIMENSIONS[dimension])


# With a breakdown: each (bucket, value), each value's total, each bucket's total, the grand
# total. Without one the key is a NULL constant, so (idx, key) and (key) are the bucket and
# grand totals.
_BROKEN_DOWN = "GROUPING SETS ((idx, key), (key), (idx), ())"
_NOT_BROKEN_DOWN = "GROUPING SETS ((idx, key), (key))"


def _grouping_sets(query: MetricQuery) -> str:
    return _NOT_BROKEN_DOWN if query.breakdown is None else _BROKEN_DOWN


def _cell_key(row: asyncpg.Record) -> tuple[int | None, str | None]:
    idx = ALL if row["all_buckets"] else row["idx"]
    key = ALL if row["all_keys"] else row["key"]
    return idx, key


def _session_events_cte(
    params: SqlParams, query: MetricQuery, start: str, end: str, events: str
) -> str:
    """(session_id, name) of events of sessions starting in the window: a session's events lie
    between its start and start + the project's maximum session length."""
    return f"""session_events AS (
        SELECT DISTINCT e.session_id, e.name FROM {events} e
        WHERE e.project_id = {params.add(query.project_id)} AND e.ts >= {start}::timestamptz
          AND e.ts <= {end}::timestamptz + coalesce(
              (SELECT make_interval(secs => session_max_s) FROM projects
               WHERE id = {params.add(query.project_id)}), interval '1 day')
          AND e.session_id IS NOT NULL)"""


async def _read_event_counters(
    conn: asyncpg.Connection, query: MetricQuery, buckets: OutputBuckets, cells: Cells, events: str
) -> int:
    """Fills the event counters; returns how many rows it read from PostgreSQL."""
    params = SqlParams()
    project = params.add(query.project_id)
    thresholds = params.add(buckets.bounds[:-1])
    start, end = params.add(buckets.bounds[0]), params.add(buckets.bounds[-1])
    bots = params.add(query.include_bots)
    where = [f"e.project_id = {project}", f"e.ts >= {start}", f"e.ts < {end}"]
    where.append(f"(NOT e.is_bot OR {bots})")
    for flt in query.filters:
        where.append(f"{_event_dimension_sql(flt.dimension)} = ANY({params.add(list(flt.values))})")
    where.extend(cohort_terms(params, query, "e"))
    key_sql = "NULL::text" if query.breakdown is None else _event_dimension_sql(query.breakdown)
    pageview = params.add(PAGEVIEW)
    named = list(query.event_names)
    named_sql = "".join(
        f", count(*) FILTER (WHERE name = {params.add(n)}) AS named_{i}"
        for i, n in enumerate(named)
    )
    sql = f"""
        WITH e AS (
            SELECT width_bucket(e.ts, {thresholds}::timestamptz[]) - 1 AS idx, {key_sql} AS key,
                   e.name, {PERSON_SQL} AS person, e.from_cold
            FROM {events} e WHERE {" AND ".join(where)}
        )
        SELECT grouping(idx) = 1 AS all_buckets, grouping(key) = 1 AS all_keys, idx, key,
               count(*) FILTER (WHERE NOT from_cold) AS hot_rows,
               count(*) AS events, count(*) FILTER (WHERE name = {pageview}) AS pageviews,
               count(DISTINCT person) AS visitors{named_sql}
        FROM e GROUP BY {_grouping_sets(query)}
    """
    hot_rows = 0
    for row in await conn.fetch(sql, *params.values):
        cell = cell_of(cells, _cell_key(row))
        cell.events = row["events"]
        cell.pageviews = row["pageviews"]
        cell.visitors = row["visitors"]
        cell.named = {n: row[f"named_{i}"] for i, n in enumerate(named)}
        hot_rows = max(hot_rows, row["hot_rows"])  # the grand total's is the largest
    return hot_rows


# Events recorded without persistent ids: consent withheld under the cookieless policy, or
# the browser tracker's cookieless mode (ingest marks both with this property).
# The stored properties suffice: a row leaves out only page keys equal to its columns
# (libs/common/model/event_encoding.py), never this one.
COOKIELESS_SQL = "e.properties ? '$cookieless'"


async def _read_share_counters(
    conn: asyncpg.Connection, query: MetricQuery, buckets: OutputBuckets, cells: Cells, events: str
) -> int:
    """Bot and cookieless event counts per cell; returns how many rows it read from
    PostgreSQL. Bots are not filtered out here: bot_share needs them in its denominator
    whatever include_bots says."""
    params = SqlParams()
    project = params.add(query.project_id)
    thresholds = params.add(buckets.bounds[:-1])
    start, end = params.add(buckets.bounds[0]), params.add(buckets.bounds[-1])
    bots = params.add(query.include_bots)
    where = [f"e.project_id = {project}", f"e.ts >= {start}", f"e.ts < {end}"]
    for flt in query.filters:
        where.append(f"{_event_dimension_sql(flt.dimension)} = ANY({params.add(list(flt.values))})")
    where.extend(cohort_terms(params, query, "e"))
    key_sql = "NULL::text" if query.breakdown is None else _event_dimension_sql(query.breakdown)
    sql = f"""
        WITH e AS (
            SELECT width_bucket(e.ts, {thresholds}::timestamptz[]) - 1 AS idx, {key_sql} AS key,
                   e.is_bot, coalesce({COOKIELESS_SQL}, false) AS cookieless, e.from_cold
            FROM {events} e WHERE {" AND ".join(where)}
        )
        SELECT grouping(idx) = 1 AS all_buckets, grouping(key) = 1 AS all_keys, idx, key,
               count(*) FILTER (WHERE NOT from_cold) AS hot_rows, count(*) AS all_events,
               count(*) FILTER (WHERE is_bot) AS bot_events,
               count(*) FILTER (WHERE NOT is_bot OR {bots}) AS counted_events,
               count(*) FILTER (WHERE cookieless AND (NOT is_bot OR {bots})) AS cookieless_events
        FROM e GROUP BY {_grouping_sets(query)}
    """
    hot_rows = 0
    for row in await conn.fetch(sql, *params.values):
        cell = cell_of(cells, _cell_key(row))
        cell.all_events = row["all_events"]
        cell.bot_events = row["bot_events"]
        cell.counted_events = row["counted_events"]
        cell.cookieless_events = row["cookieless_events"]
        hot_rows = max(hot_rows, row["hot_rows"])
    return hot_rows


def _session_filters(params: SqlParams, query: MetricQuery) -> list[str]:
    where = cohort_terms(params, query, "s")
    for flt in query.filters:
        values = params.add(list(flt.values))
        if flt.dimension == EVENT_NAME_DIMENSION:
            # A session matches an event-name filter when it contains such an event.
            where.append(
                "s.session_id IN"
                f" (SELECT session_id FROM session_events WHERE name = ANY({values}))"
            )
        else:
            where.append(
                f"{dimension_sql('s', SESSION_ROLLUP_DIMENSIONS[flt.dimension])} = ANY({values})"
            )
    return where


async def _read_session_counters(
    conn: asyncpg.Connection, query: MetricQuery, buckets: OutputBuckets, cells: Cells, events: str
) -> None:
    by_name = query.breakdown == EVENT_NAME_DIMENSION
    # Grouped by event name a session counts under every name it contains, so the totals
    # over all names come from a second pass that counts each session once.
    passes = [(True, _NOT_BROKEN_DOWN), (False, _NOT_BROKEN_DOWN)]
    for joined_by_name, grouping in passes if by_name else [(False, _grouping_sets(query))]:
        params = SqlParams()
        project = params.add(query.project_id)
        thresholds = params.add(buckets.bounds[:-1])
        start, end = params.add(buckets.bounds[0]), params.add(buckets.bounds[-1])
        bots = params.add(query.include_bots)
        needs_session_events = joined_by_name or EVENT_NAME_DIMENSION in query.filters.dimensions
        with_sql = (
            f"WITH {_session_events_cte(params, query, start, end, events)},"
            if needs_session_events
            else "WITH"
        )
        where = [f"s.project_id = {project}", f"s.start_ts >= {start}", f"s.start_ts < {end}"]
        where.append(f"(NOT s.is_bot OR {bots})")
        where.extend(_session_filters(params, query))
        join = ""
        if joined_by_name:
            join = "JOIN session_events n ON n.session_id = s.session_id"
            key_sql = "n.name"
        elif query.breakdown is None or by_name:
            key_sql = "NULL::text"
        else:
            key_sql = dimension_sql("s", SESSION_ROLLUP_DIMENSIONS[query.breakdown])
        sql = f"""
            {with_sql} s AS (
                SELECT width_bucket(s.start_ts, {thresholds}::timestamptz[]) - 1 AS idx,
                       {key_sql} AS key, {BOUNCE_SQL} AS bounced,
                       extract(epoch FROM s.end_ts - s.start_ts)::float8 AS duration_s,
                       s.pageviews
                FROM sessions s {join} WHERE {" AND ".join(where)}
            )
            SELECT grouping(idx) = 1 AS all_buckets, grouping(key) = 1 AS all_keys, idx, key,
                   count(*) AS sessions, count(*) FILTER (WHERE bounced) AS bounces,
                   coalesce(sum(duration_s), 0) AS duration_s,
                   coalesce(sum(pageviews), 0)::bigint AS pageviews
            FROM s GROUP BY {grouping}
        """
        for row in await conn.fetch(sql, *params.values):
            cell = cell_of(cells, _cell_key(row))
            cell.sessions = row["sessions"]
            cell.bounces = row["bounces"]
            cell.duration_s = row["duration_s"]
            cell.session_pageviews = row["pageviews"]


async def _session_reach(conn: asyncpg.Connection, query: MetricQuery) -> timedelta:
    """How far past the window the events of sessions starting in it can lie."""
    seconds = await conn.fetchval(
        "SELECT session_max_s FROM projects WHERE id = $1", query.project_id
    )
    return timedelta(seconds=seconds) if seconds is not None else timedelta(days=1)


async def _load_moved_days(
    conn: asyncpg.Connection,
    deps: QueryDeps,
    query: MetricQuery,
    start: datetime,
    end: datetime,
    days: Sequence[date],
) -> tuple[TierScan | None, list[date]]:
    """The rows of the moved `days` with start <= ts < end in COLD_EVENTS_TABLE (dropped at
    the end of the transaction), without rows PostgreSQL also holds (a late row exported into
    a part stays in PostgreSQL until the next cold move), so every event counts once; and the
    days left out (allow_partial)."""
    rows, read, missing = await read_cold_rows(
        deps,
        query.project_id,
        days,
        list(METRIC_EVENT_COLUMNS),
        start,
        end,
        allow_partial=query.allow_partial,
    )
    started = time.perf_counter()
    columns = ", ".join(f"{c} {t}" for c, t in METRIC_EVENT_COLUMNS.items())
    await conn.execute(f"CREATE TEMPORARY TABLE {COLD_EVENTS_TABLE} ({columns}) ON COMMIT DROP")
    if rows:
        await conn.copy_records_to_table(
            COLD_EVENTS_TABLE, records=rows, columns=list(METRIC_EVENT_COLUMNS)
        )
        deleted = await conn.execute(
            f"DELETE FROM {COLD_EVENTS_TABLE} c USING events e WHERE e.project_id = $1"
            " AND e.ts >= $2 AND e.ts < $3 AND e.event_id = c.event_id",
            query.project_id,
            start,
            end,
        )
        rows_kept = len(rows) - int(deleted.split()[-1])
        await conn.execute(f"ANALYZE {COLD_EVENTS_TABLE}")
    else:
        rows_kept = 0
    if read is None:
        return None, missing
    ms = round(read.ms + (time.perf_counter() - started) * 1000, 3)
    return TierScan(tier="cold", rows=rows_kept, ms=ms), missing


async def read_events(
    deps: QueryDeps, query: MetricQuery, buckets: OutputBuckets
) -> tuple[Cells, list[TierScan], list[date]]:
    """Counters per (bucket, breakdown value) and their totals from raw rows, whichever tier
    holds them, the rows and time per tier read, and the days left out. Raises
    ArchivedDaysError when a moved day is only in unrestored Archive files, unless the query
    allows a partial answer (those days are then left out)."""
    cells: Cells = {}
    start, end = buckets.bounds[0], buckets.bounds[-1]
    # One transaction: the temporary table of moved rows lives until its end.
    async with deps.pool.acquire() as conn, conn.transaction():
        reach = end
        if query.wants_session_counters:
            # Session counters read the events of sessions starting in the window.
            reach = end + await _session_reach(conn, query)
        days = await moved_days(deps, query.project_id, start, reach)
        cold: TierScan | None = None
        missing: list[date] = []
        if days:
            cold, missing = await _load_moved_days(conn, deps, query, start, reach, days)
        events = _events_source(bool(days), missing)
        hot_started = time.perf_counter()
        hot_rows = 0
        if query.wants_event_counters:
            hot_rows = await _read_event_counters(conn, query, buckets, cells, events)
        if query.wants_session_counters:
            await _read_session_counters(conn, query, buckets, cells, events)
        if query.wants_share_counters:
            shares_hot = await _read_share_counters(conn, query, buckets, cells, events)
            hot_rows = max(hot_rows, shares_hot)
        done = time.perf_counter()
    hot_ms = round((done - hot_started) * 1000, 3)
    tiers = [TierScan(tier="hot", rows=hot_rows, ms=hot_ms)]
    if cold is not None:
        tiers.append(cold)
    return cells, tiers, missing
