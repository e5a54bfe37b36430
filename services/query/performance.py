"""GET /api/v1/analytics/performance: page performance percentiles per page, from events that
carry numeric web-vitals / timing properties (any event name: the tracker's `$pageview` with
`load_time_ms`, a `$web_vitals` event with `lcp`, `cls`, `inp`, `fcp`, `ttfb`, ...)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from libs.common.rollup_keys import EVENT_DIMENSIONS
from services.query.auth import authorized_project
from services.query.dependencies import DEPS
from services.query.freshness import freshness
from services.query.metric_query import SOURCE_EVENTS
from services.query.metrics import MAX_BREAKDOWN_LIMIT, now_utc, request_window
from services.query.metrics_from_events import dimension_sql
from services.query.params import (
    EVENT_NAME_DIMENSION,
    ParamError,
    parse_bool,
    parse_filters,
    parse_int,
    reject_unknown,
    single,
)
from services.query.responses import (
    TIERS_HOT,
    FilterEcho,
    PagePerformance,
    Percentiles,
    PerformanceResponse,
    json_encoder,
)

# Numeric event properties read as performance measurements (milliseconds, except `cls`,
# which is a unitless layout-shift score).
PERFORMANCE_PROPERTIES = ("lcp", "fcp", "inp", "ttfb", "cls", "load_time_ms")
PERCENTILES = (0.5, 0.75, 0.9, 0.99)
PERFORMANCE_PARAMS = {
    "project",
    "from",
    "to",
    "period",
    "timezone",
    "filter",
    "include_bots",
    "limit",
    "properties",
}


def _parse_properties(raw: str | None) -> list[str]:
    if raw is None or raw.strip() == "":
        return list(PERFORMANCE_PROPERTIES)
    chosen = []
    for part in raw.split(","):
        name = part.strip()
        if name not in PERFORMANCE_PROPERTIES:
            raise ParamError(
                "properties",
                f"unknown performance property {name!r}"
                f" (one of {', '.join(PERFORMANCE_PROPERTIES)})",
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def _percentiles(row: Any) -> Percentiles:
    p50, p75, p90, p99 = row["percentiles"]
    # Milliseconds to a tenth; CLS (a unitless score around 0.1) to four decimals.
    digits = 4 if row["prop"] == "cls" else 1
    return Percentiles(
        samples=row["samples"],
        avg=round(row["avg"], digits),
        p50=round(p50, digits),
        p75=round(p75, digits),
        p90=round(p90, digits),
        p99=round(p99, digits),
    )


async def get_performance(request: web.Request) -> web.Response:
    """Percentiles (linear interpolation) and averages of each performance property, overall
    and per page, most-measured pages first."""
    project_id = await authorized_project(request)
    query = request.query
    reject_unknown(query, PERFORMANCE_PARAMS)
    window = await request_window(request, project_id)
    filters = parse_filters(query)
    include_bots = parse_bool(query, "include_bots")
    limit = parse_int(query, "limit", 100, 1, MAX_BREAKDOWN_LIMIT)
    properties = _parse_properties(single(query, "properties"))
    args: list[Any] = [
        project_id,
        window.start,
        window.end,
        include_bots,
        properties,
        list(PERCENTILES),
    ]
    where = []
    for flt in filters:
        args.append(list(flt.values))
        expr = (
            "e.name"
            if flt.dimension == EVENT_NAME_DIMENSION
            else dimension_sql("e", EVENT_DIMENSIONS[flt.dimension])
        )
        where.append(f" AND {expr} = ANY(${len(args)}::text[])")
    # The stored properties, not event_properties(...): only numbers are read here, and the
    # values a row leaves out for their columns are strings (libs/common/model/event_encoding).
    # The view's `properties` (a CASE that may merge the source's) is computed once per row
    # (OFFSET 0 keeps the subquery whole), not once per mention and property: 165-207 ms
    # against 58-64 for 30 days of the demo, same answer. Rows with none of the properties
    # are dropped before the cross join.
    sql = f"""
        WITH m AS (
            SELECT r.page, p.prop, (r.props ->> p.prop)::float8 AS val
            FROM (
                SELECT {dimension_sql("e", "path")} AS page, e.properties AS props
                FROM events e
                WHERE e.project_id = $1 AND e.ts >= $2 AND e.ts < $3
                  AND (NOT e.is_bot OR $4){"".join(where)}
                OFFSET 0
            ) r CROSS JOIN unnest($5::text[]) AS p(prop)
            WHERE r.props ?| $5::text[] AND jsonb_typeof(r.props -> p.prop) = 'number'
        )
        SELECT grouping(page) = 1 AS overall, page, prop, count(*) AS samples,
               avg(val)::float8 AS avg,
               percentile_cont($6::float8[]) WITHIN GROUP (ORDER BY val) AS percentiles
        FROM m GROUP BY GROUPING SETS ((page, prop), (prop))
    """
    overall: dict[str, Percentiles] = {}
    pages: dict[str, dict[str, Percentiles]] = {}
    for row in await request.app[DEPS].pool.fetch(sql, *args):
        if row["overall"]:
            overall[row["prop"]] = _percentiles(row)
        else:
            pages.setdefault(row["page"], {})[row["prop"]] = _percentiles(row)
    ranked = sorted(pages, key=lambda p: (-sum(m.samples for m in pages[p].values()), p))
    body = PerformanceResponse(
        source=SOURCE_EVENTS,
        tiers=TIERS_HOT,
        from_=window.start.astimezone(window.tz),
        to=window.end.astimezone(window.tz),
        timezone=window.tz_name,
        filters=[FilterEcho(dimension=f.dimension, values=list(f.values)) for f in filters],
        include_bots=include_bots,
        truncated=len(ranked) > limit,
        properties=properties,
        overall=overall,
        pages=[PagePerformance(page=p, metrics=pages[p]) for p in ranked[:limit]],
        freshness=await freshness(request.app[DEPS], project_id, now_utc()),
    )
    return web.Response(body=json_encoder.encode(body), content_type="application/json")
