"""GET /api/v1/analytics/metrics: KPIs over a window, bucketed by interval in a time zone,
filtered and broken down; answered from rollups when they can answer exactly, else from raw
events and sessions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

from aiohttp import web
from multidict import MultiMapping

from libs.common.rollup_keys import EXIT_PAGE
from services.query.analyses.metrics_endpoint import fill_custom_metrics, resolve_cohort_filter
from services.query.auth import authorized_project
from services.query.buckets import OutputBuckets, count_buckets, output_buckets
from services.query.dependencies import DEPS, SETTINGS
from services.query.freshness import freshness
from services.query.metric_query import (
    ALL,
    SESSION_METRICS,
    SOURCE_CHOICES,
    SOURCE_EVENTS,
    SOURCE_ROLLUPS,
    Cells,
    Counters,
    MetricQuery,
    metric_value,
    parse_metric_names,
    plan_metrics,
    rounded_value,
)
from services.query.metrics_from_events import read_events
from services.query.metrics_from_rollups import read_rollups
from services.query.params import (
    DEFAULT_RANGE_DAYS,
    METRICS_DIMENSIONS,
    ParamError,
    TimeWindow,
    mentions_all,
    parse_bool,
    parse_dimension,
    parse_filters,
    parse_int,
    parse_interval,
    parse_window,
    reject_unknown,
    single,
)
from services.query.relative_periods import (
    COMPARISONS,
    change_percent,
    comparison_range,
    first_event_at,
)
from services.query.responses import (
    TIERS_HOT,
    Breakdown,
    BreakdownComparison,
    BreakdownRow,
    Comparison,
    FilterEcho,
    MetricsResponse,
    MetricValues,
    SeriesPoint,
    TierScan,
    json_encoder,
    missing_ranges,
)

MAX_BREAKDOWN_LIMIT = 1000

METRICS_PARAMS = {
    "project",
    "metrics",
    "from",
    "to",
    "timezone",
    "interval",
    "filter",
    "breakdown",
    "include_bots",
    "limit",
    "source",
    "cohort",
    "allow_partial",
    "period",
    "compare",
}


@dataclass(frozen=True)
class MetricsAnswer:
    source: str
    buckets: OutputBuckets
    cells: Cells
    tier_reads: list[TierScan] = field(default_factory=list)  # raw path: rows and ms per tier
    missing_days: list[date] = field(default_factory=list)  # left out (allow_partial)


def now_utc() -> datetime:
    return datetime.now(UTC)


async def answer(request: web.Request, query: MetricQuery) -> MetricsAnswer:
    """Plan (`plan_metrics`) and run `query`: from rollups when they hold exactly what it asks
    for, else from raw rows."""
    max_buckets = request.app[SETTINGS].max_buckets
    window = query.window
    if query.interval is not None:
        if count_buckets(window.start, window.end, query.interval) > max_buckets:
            raise ParamError(
                "interval",
                f"{query.interval} buckets over this range exceed {max_buckets}; "
                "use a coarser interval or a shorter range",
            )
    buckets = output_buckets(window.start, window.end, query.interval, window.tz)
    plan = plan_metrics(query, buckets)
    if plan.pieces is not None:
        cells = await read_rollups(request.app[DEPS].pool, query, plan.pieces)
        return MetricsAnswer(SOURCE_ROLLUPS, buckets, cells)
    if query.source == SOURCE_ROLLUPS:
        raise ParamError("source", f"rollups cannot answer this exactly: {plan.reason}")
    # Days moved to day files are read from them (archived ones: 202 with a restore job).
    cells, tier_reads, missing = await read_events(request.app[DEPS], query, buckets)
    return MetricsAnswer(SOURCE_EVENTS, buckets, cells, tier_reads, missing)


def parse_source(query: MultiMapping[str]) -> str:
    raw = single(query, "source") or "auto"
    if raw not in SOURCE_CHOICES:
        raise ParamError("source", f"must be one of {', '.join(SOURCE_CHOICES)}, not {raw!r}")
    return raw


def values_of(metrics: tuple[str, ...], counters: Counters | None) -> MetricValues:
    counters = counters or Counters()
    return {m: rounded_value(m, metric_value(m, counters)) for m in metrics}


async def request_window(
    request: web.Request, project_id: str, default_days: int | None = DEFAULT_RANGE_DAYS
) -> TimeWindow:
    """The request's `period` or `from`/`to` (`all` starts at the project's first event)."""
    history = None
    if mentions_all(request.query):
        history = await first_event_at(request.app[DEPS].pool, project_id)
    return parse_window(request.query, now_utc(), default_days, history)


def ranked_keys(cells: Cells, sort_metric: str, limit: int) -> tuple[list[str], bool]:
    """Breakdown values by `sort_metric` (largest first, then by value), at most `limit`."""
    keys = [key for (idx, key) in cells if idx is ALL and key is not ALL]

    def rank(key: str) -> tuple[float, str]:
        value = metric_value(sort_metric, cells[(ALL, key)])
        return (-(value if value is not None else -math.inf), key)

    keys.sort(key=rank)
    return keys[:limit], len(keys) > limit


def parse_metric_query(request: web.Request, project_id: str, window: TimeWindow) -> MetricQuery:
    query = request.query
    reject_unknown(query, METRICS_PARAMS)
    raw_breakdown = single(query, "breakdown")
    metric_query = MetricQuery(
        project_id=project_id,
        window=window,
        interval=parse_interval(query),
        metrics=parse_metric_names(single(query, "metrics")),
        filters=parse_filters(query, METRICS_DIMENSIONS),
        breakdown=parse_dimension("breakdown", raw_breakdown, METRICS_DIMENSIONS)
        if raw_breakdown
        else None,
        include_bots=parse_bool(query, "include_bots"),
        limit=parse_int(query, "limit", 100, 1, MAX_BREAKDOWN_LIMIT),
        source=parse_source(query),
        cohorts=tuple(query.getall("cohort", [])),
        allow_partial=parse_bool(query, "allow_partial"),
    )
    if EXIT_PAGE in metric_query.attribute_dimensions:
        others = [m for m in metric_query.metrics if m not in SESSION_METRICS]
        if others:
            raise ParamError(
                "breakdown" if metric_query.breakdown == EXIT_PAGE else "filter",
                f"{EXIT_PAGE} is a dimension of sessions: ask for session metrics only "
                f"({', '.join(SESSION_METRICS)}), not {', '.join(others)}",
            )
    return metric_query


def filter_echo(query: MetricQuery) -> list[FilterEcho]:
    return [FilterEcho(dimension=f.dimension, values=list(f.values)) for f in query.filters]


class _SeriesPoints:
    """The series of one answer. A breakdown by page over a year asks for a point per day and
    page, most of them empty: the bucket labels and an empty bucket's values are built once
    and shared by every series (the response is encoded as it is, never changed)."""

    def __init__(self, query: MetricQuery, result: MetricsAnswer) -> None:
        tz = query.window.tz
        self.labels = [label.astimezone(tz) for label in result.buckets.labels]
        self.metrics = query.metrics
        self.cells = result.cells
        self.empty = values_of(query.metrics, None)

    def series(self, key: str | None) -> list[SeriesPoint]:
        cells, metrics, empty = self.cells, self.metrics, self.empty
        points = []
        for idx, label in enumerate(self.labels):
            counters = cells.get((idx, key))
            values = empty if counters is None else values_of(metrics, counters)
            points.append(SeriesPoint(bucket=label, values=values))
        return points


def parse_compare(query: MultiMapping[str]) -> str | None:
    raw = single(query, "compare")
    if raw is None or raw == "":
        return None
    if raw not in COMPARISONS:
        raise ParamError("compare", f"must be one of {', '.join(COMPARISONS)}, not {raw!r}")
    return raw


async def _comparison(
    request: web.Request, query: MetricQuery, compare: str, totals: MetricValues
) -> tuple[Comparison, Cells, list[date]]:
    """The metrics over the range `compare` names, each total's change from it, and its cells
    (per breakdown value too)."""
    window = query.window
    start, end = comparison_range(compare, window.start, window.end, window.tz)
    before = replace(query, window=TimeWindow(start, end, window.tz))
    result = await answer(request, before)
    _, custom_missing = await fill_custom_metrics(request, before, result.buckets, result.cells)
    previous = values_of(query.metrics, result.cells.get((ALL, ALL)))
    comparison = Comparison(
        compare=compare,
        from_=start.astimezone(window.tz),
        to=end.astimezone(window.tz),
        totals=previous,
        series=_SeriesPoints(before, result).series(ALL),
        change=changes(query.metrics, totals, previous),
    )
    return comparison, result.cells, [*result.missing_days, *custom_missing]


def changes(
    metrics: tuple[str, ...], current: MetricValues, previous: MetricValues
) -> dict[str, float | None]:
    return {m: change_percent(current[m], previous[m]) for m in metrics}


async def get_metrics(request: web.Request) -> web.Response:
    """The KPIs of the authorized project (see docs/api-query.md)."""
    project_id = await authorized_project(request)
    reject_unknown(request.query, METRICS_PARAMS)
    compare = parse_compare(request.query)
    window = await request_window(request, project_id)
    query, cohort_missing = await resolve_cohort_filter(
        request, parse_metric_query(request, project_id, window)
    )
    result = await answer(request, query)
    scanned, custom_missing = await fill_custom_metrics(
        request, query, result.buckets, result.cells
    )
    assert query.interval is not None
    totals = values_of(query.metrics, result.cells.get((ALL, ALL)))
    comparison: Comparison | None = None
    compared: Cells | None = None
    compared_missing: list[date] = []
    if compare is not None:
        comparison, compared, compared_missing = await _comparison(request, query, compare, totals)
    points = _SeriesPoints(query, result)
    breakdown = None
    if query.breakdown is not None:
        keys, truncated = ranked_keys(result.cells, query.metrics[0], query.limit)
        rows = []
        for key in keys:
            row_totals = values_of(query.metrics, result.cells.get((ALL, key)))
            row = BreakdownRow(value=key, totals=row_totals, series=points.series(key))
            if compared is not None:
                previous = values_of(query.metrics, compared.get((ALL, key)))
                row.comparison = BreakdownComparison(
                    totals=previous, change=changes(query.metrics, row_totals, previous)
                )
            rows.append(row)
        breakdown = Breakdown(dimension=query.breakdown, results=rows, truncated=truncated)
    body = MetricsResponse(
        source=result.source,
        tiers=sorted({*TIERS_HOT, *scanned, *(t.tier for t in result.tier_reads if t.rows)}),
        tier_reads=result.tier_reads,
        from_=query.window.start.astimezone(query.window.tz),
        to=query.window.end.astimezone(query.window.tz),
        timezone=query.window.tz_name,
        interval=query.interval,
        metrics=list(query.metrics),
        filters=filter_echo(query),
        include_bots=query.include_bots,
        totals=totals,
        series=points.series(ALL),
        breakdown=breakdown,
        missing=missing_ranges(
            [*cohort_missing, *result.missing_days, *custom_missing, *compared_missing]
        ),
        comparison=comparison,
        freshness=await freshness(request.app[DEPS], project_id, now_utc()),
    )
    return web.Response(body=json_encoder.encode(body), content_type="application/json")
