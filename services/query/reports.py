"""The seed's ready-made reports, each one breakdown of the metrics engine over a whole range:
GET /api/v1/analytics/pages (top pages), /sources (traffic sources), /devices."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from libs.common.rollup_keys import EVENT_DIMENSIONS
from libs.common.schemas.events_v1 import PAGEVIEW
from services.query.auth import authorized_project
from services.query.dependencies import DEPS
from services.query.freshness import freshness
from services.query.metric_query import ALL, Counters, MetricQuery, metric_value, rounded_value
from services.query.metrics import (
    MAX_BREAKDOWN_LIMIT,
    answer,
    filter_echo,
    now_utc,
    parse_source,
    ranked_keys,
    request_window,
)
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
    DimensionReport,
    DimensionRow,
    PageRow,
    PagesResponse,
    json_encoder,
)

REPORT_PARAMS = {
    "project",
    "from",
    "to",
    "period",
    "timezone",
    "filter",
    "include_bots",
    "limit",
    "source",
}
SOURCE_DIMENSIONS = ("channel", "referrer_domain", "utm_source", "utm_medium", "utm_campaign")
DEVICE_DIMENSIONS = ("device_type", "browser", "os")
_DIMENSION_METRICS = ("visitors", "pageviews", "sessions", "bounce_rate", "avg_session_duration")
_PAGE_METRICS = ("pageviews", "visitors", "sessions", "bounce_rate")


async def _report_query(
    request: web.Request, project_id: str, breakdown: str, metrics: tuple[str, ...]
) -> MetricQuery:
    query = request.query
    return MetricQuery(
        project_id=project_id,
        window=await request_window(request, project_id),
        interval=None,
        metrics=metrics,
        filters=parse_filters(query),
        breakdown=breakdown,
        include_bots=parse_bool(query, "include_bots"),
        limit=parse_int(query, "limit", 100, 1, MAX_BREAKDOWN_LIMIT),
        source=parse_source(query),
    )


async def _header(
    request: web.Request, query: MetricQuery, source: str, truncated: bool
) -> dict[str, Any]:
    return {
        "freshness": await freshness(request.app[DEPS], query.project_id, now_utc()),
        "source": source,
        "tiers": TIERS_HOT,
        "from_": query.window.start.astimezone(query.window.tz),
        "to": query.window.end.astimezone(query.window.tz),
        "timezone": query.window.tz_name,
        "filters": filter_echo(query),
        "include_bots": query.include_bots,
        "truncated": truncated,
    }


def _int(metric: str, counters: Counters) -> int:
    value = metric_value(metric, counters)
    return int(value) if value is not None else 0


def _ratio(metric: str, counters: Counters) -> float | None:
    value = rounded_value(metric, metric_value(metric, counters))
    return None if value is None else float(value)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def _time_on_page(
    pool: asyncpg.Pool, query: MetricQuery, pages: list[str]
) -> dict[str, float]:
    """Average seconds from a pageview to the next pageview of the same session, per page,
    over pageviews in the range that have such a next pageview (a session's last page has no
    measurable time)."""
    if not pages:
        return {}
    args: list[Any] = [
        query.project_id,
        PAGEVIEW,
        query.window.start,
        query.window.end,
        query.include_bots,
        pages,
    ]
    where = []
    for flt in query.filters:
        args.append(list(flt.values))
        expr = (
            "v.name"
            if flt.dimension == EVENT_NAME_DIMENSION
            else dimension_sql("v", EVENT_DIMENSIONS[flt.dimension])
        )
        where.append(f"{expr} = ANY(${len(args)}::text[])")
    sql = f"""
        WITH v AS (
            SELECT e.*, lead(e.ts) OVER (PARTITION BY e.session_id ORDER BY e.ts, e.event_id)
                   AS next_ts
            FROM events e
            WHERE e.project_id = $1 AND e.name = $2 AND e.ts >= $3 AND e.ts < $4
              AND (NOT e.is_bot OR $5) AND e.session_id IS NOT NULL
        )
        SELECT {dimension_sql("v", "path")} AS page,
               avg(extract(epoch FROM v.next_ts - v.ts))::float8 AS seconds
        FROM v
        WHERE v.next_ts IS NOT NULL AND {dimension_sql("v", "path")} = ANY($6::text[])
              {"".join(" AND " + w for w in where)}
        GROUP BY 1
    """
    return {r["page"]: r["seconds"] for r in await pool.fetch(sql, *args)}


async def get_pages(request: web.Request) -> web.Response:
    """Top pages by pageviews: visitors, entries, bounce rate of entries, time on page."""
    project_id = await authorized_project(request)
    reject_unknown(request.query, REPORT_PARAMS)
    query = await _report_query(request, project_id, "page", _PAGE_METRICS)
    result = await answer(request, query)
    keys, truncated = ranked_keys(result.cells, "pageviews", query.limit)
    seconds = await _time_on_page(request.app[DEPS].pool, query, keys)
    rows = []
    for key in keys:
        counters = result.cells[(ALL, key)]
        rows.append(
            PageRow(
                page=key,
                pageviews=_int("pageviews", counters),
                visitors=_int("visitors", counters),
                entries=_int("sessions", counters),
                bounce_rate=_ratio("bounce_rate", counters),
                avg_time_on_page_s=_seconds(seconds.get(key)),
            )
        )
    body = PagesResponse(**await _header(request, query, result.source, truncated), pages=rows)
    return web.Response(body=json_encoder.encode(body), content_type="application/json")


def _dimension_handler(allowed: tuple[str, ...], default: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        project_id = await authorized_project(request)
        reject_unknown(request.query, REPORT_PARAMS | {"by"})
        dimension = single(request.query, "by") or default
        if dimension not in allowed:
            raise ParamError("by", f"must be one of {', '.join(allowed)}, not {dimension!r}")
        query = await _report_query(request, project_id, dimension, _DIMENSION_METRICS)
        result = await answer(request, query)
        keys, truncated = ranked_keys(result.cells, "visitors", query.limit)
        rows = [
            DimensionRow(
                value=key,
                visitors=_int("visitors", result.cells[(ALL, key)]),
                pageviews=_int("pageviews", result.cells[(ALL, key)]),
                sessions=_int("sessions", result.cells[(ALL, key)]),
                bounce_rate=_ratio("bounce_rate", result.cells[(ALL, key)]),
                avg_session_duration=_ratio("avg_session_duration", result.cells[(ALL, key)]),
            )
            for key in keys
        ]
        body = DimensionReport(
            **await _header(request, query, result.source, truncated),
            dimension=dimension,
            results=rows,
        )
        return web.Response(body=json_encoder.encode(body), content_type="application/json")

    return handler


get_sources = _dimension_handler(SOURCE_DIMENSIONS, "channel")
get_sources.__doc__ = "Traffic sources by channel, referrer domain or UTM parameter."
get_devices = _dimension_handler(DEVICE_DIMENSIONS, "device_type")
get_devices.__doc__ = "Visitors by device type, browser or operating system."
