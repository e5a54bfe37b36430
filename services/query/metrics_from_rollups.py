"""Metrics answered from the rollups the aggregator keeps (event rollups with visitor sketches,
session rollups): two round trips whatever the range, one sketch merge per output cell."""

from __future__ import annotations

import asyncpg
from datasketches import hll_sketch

from libs.common.rollup_keys import ALL_EVENTS, TOTAL
from libs.common.schemas.events_v1 import PAGEVIEW
from services.query.buckets import RollupPiece, rollup_buckets
from services.query.metric_query import ALL, Cells, Counters, MetricQuery, SqlParams, cell_of
from services.query.params import EVENT_NAME_DIMENSION


def _pieces_sql(params: SqlParams, project_id: str, pieces: list[RollupPiece], table: str) -> str:
    """FROM clause: every rollup bucket of the pieces joined to rollup table `r` on its exact
    key prefix, so each row is found by a primary-key probe (a range scan would also walk every
    other name, dimension and value of the range) and tagged with its output bucket index."""
    indexes, granularities, starts = rollup_buckets(pieces)
    project = params.add(project_id)
    idx = params.add(indexes)
    granularity = params.add(granularities)
    bucket = params.add(starts)
    return (
        f"unnest({idx}::int[], {granularity}::text[], {bucket}::timestamptz[])"
        f" AS p(idx, g, bucket) JOIN {table} r ON r.project_id = {project}"
        ' AND r.granularity = p.g::"char" AND r.bucket = p.bucket'
    )


def _dimension_and_values(query: MetricQuery) -> tuple[str, list[str] | None]:
    """The rollup `dim` to read and the values it is restricted to (None: all)."""
    dims = query.attribute_dimensions
    if not dims:
        return TOTAL, [TOTAL]
    (dim,) = dims
    values = query.filters.values(dim)
    return dim, None if values is None else list(values)


def _value_clause(params: SqlParams, values: list[str]) -> str:
    # Equality for one value keeps the planner's row estimate (and so its plan) accurate.
    if len(values) == 1:
        return f"r.value = {params.add(values[0])}"
    return f"r.value = ANY({params.add(values)}::text[])"


def _breakdown_key(query: MetricQuery, name: str, value: str) -> str | None:
    if query.breakdown is None:
        return ALL
    return name if query.breakdown == EVENT_NAME_DIMENSION else value


def _targets(idx: int, key: str | None) -> set[tuple[int | None, str | None]]:
    """The cells a fine (bucket, value) cell counts into: itself and its three totals."""
    return {(idx, key), (ALL, key), (idx, ALL), (ALL, ALL)}


async def _read_event_rollups(
    conn: asyncpg.Connection, query: MetricQuery, pieces: list[RollupPiece], cells: Cells
) -> None:
    dim, values = _dimension_and_values(query)
    named = set(query.event_names)
    params = SqlParams()
    source = _pieces_sql(params, query.project_id, pieces, "rollups")
    where = [f"r.dim = {params.add(dim)}", f"(NOT r.bot OR {params.add(query.include_bots)})"]
    if query.by_event_name:
        filtered_names = query.filters.values(EVENT_NAME_DIMENSION)
        if filtered_names is None:
            where.append(f"r.name <> {params.add(ALL_EVENTS)}")
        else:
            where.append(f"r.name = ANY({params.add(list(filtered_names))}::text[])")
        sketch_rows = "TRUE"  # each name's row carries its own visitors
    else:
        names = sorted({ALL_EVENTS, PAGEVIEW, *named})
        where.append(f"r.name = ANY({params.add(names)}::text[])")
        sketch_rows = f"r.name = {params.add(ALL_EVENTS)}"
    if values is not None:
        where.append(_value_clause(params, values))
    sql = f"""
        SELECT p.idx, r.name, r.value, sum(r.events)::bigint AS events,
               array_agg(r.visitors) FILTER (WHERE {sketch_rows}) AS sketches
        FROM {source}
        WHERE {" AND ".join(where)}
        GROUP BY p.idx, r.name, r.value
    """
    rows = await conn.fetch(sql, *params.values)
    fine: dict[tuple[int, str | None], Counters] = {}
    by_event_name = query.by_event_name  # a property: read once, not per row
    for row in rows:
        name: str = row["name"]
        cell = cell_of(fine, (row["idx"], _breakdown_key(query, name, row["value"])))
        count: int = row["events"]
        # Without a name constraint '*' carries events and visitors and the named rows only
        # their own counts; constrained to names, each name's row carries everything.
        if by_event_name or name == ALL_EVENTS:
            cell.events += count
        if name == PAGEVIEW:
            cell.pageviews += count
        if name in named:
            cell.named[name] = cell.named.get(name, 0) + count
        for blob in row["sketches"] or ():
            cell.add_sketch(hll_sketch.deserialize(blob))
    # Merge each fine cell's sketches once, then merge those results upwards. A fine cell is
    # its own output cell (no other fine cell counts into it): it is kept as it is, since a
    # union of its one merged sketch would give the same estimate again.
    for (idx, key), counters in fine.items():
        merged = counters.close_sketch()
        cells[(idx, key)] = counters
        for target in _targets(idx, key) - {(idx, key)}:
            cell = cell_of(cells, target)
            cell.add_events(counters)
            if merged is not None:
                cell.add_sketch(merged)
    for cell in cells.values():
        cell.close_sketch()


async def _read_session_rollups(
    conn: asyncpg.Connection, query: MetricQuery, pieces: list[RollupPiece], cells: Cells
) -> None:
    dim, values = _dimension_and_values(query)
    params = SqlParams()
    source = _pieces_sql(params, query.project_id, pieces, "session_rollups")
    where = [f"r.dim = {params.add(dim)}", f"(NOT r.bot OR {params.add(query.include_bots)})"]
    if values is not None:
        where.append(_value_clause(params, values))
    sql = f"""
        SELECT p.idx, r.value, sum(r.sessions)::bigint AS sessions,
               sum(r.bounces)::bigint AS bounces, sum(r.duration_s) AS duration_s,
               sum(r.pageviews)::bigint AS pageviews
        FROM {source}
        WHERE {" AND ".join(where)}
        GROUP BY p.idx, r.value
    """
    rows = await conn.fetch(sql, *params.values)
    fine: dict[tuple[int, str | None], Counters] = {}
    for row in rows:
        breakdown_key = ALL if query.breakdown is None else row["value"]
        cell = cell_of(fine, (row["idx"], breakdown_key))
        cell.sessions += row["sessions"]
        cell.bounces += row["bounces"]
        cell.duration_s += row["duration_s"]
        cell.session_pageviews += row["pageviews"]
    for (idx, key), counters in fine.items():
        for target in _targets(idx, key):
            cell_of(cells, target).add_sessions(counters)


async def read_rollups(pool: asyncpg.Pool, query: MetricQuery, pieces: list[RollupPiece]) -> Cells:
    """Counters per (bucket, breakdown value) and their totals, from rollups."""
    cells: Cells = {}
    async with pool.acquire() as conn:
        if query.wants_event_counters:
            await _read_event_rollups(conn, query, pieces, cells)
        if query.wants_session_counters:
            await _read_session_rollups(conn, query, pieces, cells)
    return cells
