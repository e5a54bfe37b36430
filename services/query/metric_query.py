"""What a metrics request asks for, and the counters both readers (rollups, raw events) fill in,
so the derived metrics (rates, averages) are computed in exactly one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from datasketches import hll_sketch, hll_union

from libs.common import sketches
from libs.common.rollup_keys import (
    DIMENSION_GRANULARITIES,
    DIMENSION_NAMES,
    HOURLY_NAMES,
    TOTAL_GRANULARITIES,
)
from services.query.buckets import OutputBuckets, RollupPiece, rollup_pieces
from services.query.params import EVENT_NAME_DIMENSION, Filters, ParamError, TimeWindow

PAGEVIEW_METRIC = "pageviews"
EVENT_METRICS = ("visitors", "pageviews", "events")
SESSION_METRICS = ("sessions", "bounce_rate", "avg_session_duration", "views_per_session")
STANDARD_METRICS = (*EVENT_METRICS, *SESSION_METRICS)
# Data-quality shares, asked for by name (not in the default set): bot_share is bot events over
# all events (bots are always counted here); cookieless_share is events recorded without
# persistent ids over the events counted (humans, plus bots with include_bots).
SHARE_METRICS = ("bot_share", "cookieless_share")
KNOWN_METRICS = (*STANDARD_METRICS, *SHARE_METRICS)
EVENT_COUNT_PREFIX = "event:"
# A saved custom metric (docs/analytics.md), computed from the event scan: `metric:<id>`.
CUSTOM_METRIC_PREFIX = "metric:"

# Which store answers a metrics request.
SOURCE_ROLLUPS = "rollups"
SOURCE_EVENTS = "events"
SOURCE_AUTO = "auto"
SOURCE_CHOICES = (SOURCE_AUTO, SOURCE_ROLLUPS, SOURCE_EVENTS)

# The bucket index of a total over the whole range, and the breakdown key of a total over
# every breakdown value.
ALL = None


@dataclass(frozen=True)
class MetricQuery:
    """One analytics question: metrics over a window, bucketed, filtered, maybe broken down."""

    project_id: str
    window: TimeWindow
    interval: str | None  # None: totals only (one bucket spanning the window)
    metrics: tuple[str, ...]
    filters: Filters
    breakdown: str | None
    include_bots: bool
    limit: int = 100
    source: str = "auto"  # auto | rollups | events: which store answers
    cohorts: tuple[str, ...] = ()  # cohort ids the persons must all be in
    # The persons of those cohorts once resolved (None: no cohort filter); raw rows only.
    cohort_persons: tuple[str, ...] | None = None
    # Leave out days only in unrestored Archive files (listed as missing) instead of a 202.
    allow_partial: bool = False

    @property
    def custom_metrics(self) -> tuple[str, ...]:
        """Metrics asked for as `metric:<id>`."""
        return tuple(m for m in self.metrics if m.startswith(CUSTOM_METRIC_PREFIX))

    @property
    def event_names(self) -> tuple[str, ...]:
        """Names asked for as `event:<name>` counts."""
        return tuple(
            m[len(EVENT_COUNT_PREFIX) :] for m in self.metrics if m.startswith(EVENT_COUNT_PREFIX)
        )

    @property
    def wants_event_counters(self) -> bool:
        return any(m in EVENT_METRICS or m.startswith(EVENT_COUNT_PREFIX) for m in self.metrics)

    @property
    def wants_session_counters(self) -> bool:
        return any(m in SESSION_METRICS for m in self.metrics)

    @property
    def wants_share_counters(self) -> bool:
        return any(m in SHARE_METRICS for m in self.metrics)

    @property
    def by_event_name(self) -> bool:
        """Whether the event name is constrained or broken down (rows per name, not '*')."""
        return (
            self.breakdown == EVENT_NAME_DIMENSION
            or EVENT_NAME_DIMENSION in self.filters.dimensions
        )

    @property
    def attribute_dimensions(self) -> set[str]:
        """Filtered or broken-down dimensions other than the event name."""
        dims = self.filters.dimensions | ({self.breakdown} if self.breakdown else set())
        return dims - {EVENT_NAME_DIMENSION}


@dataclass(frozen=True)
class MetricPlan:
    """Where a metrics request is answered: the rollup buckets to read, or raw events (with
    why the rollups could not answer, when the request let them)."""

    source: str
    pieces: list[RollupPiece] | None = None
    reason: str | None = None


def plan_metrics(query: MetricQuery, buckets: OutputBuckets) -> MetricPlan:
    """Rollups when they hold exactly what `query` asks for over every output bucket (the
    rollups' coverage: hourly totals for all events and pageviews; daily totals per event name,
    and dimensions for all events and pageviews), raw events otherwise."""
    if query.source == SOURCE_EVENTS:
        return MetricPlan(SOURCE_EVENTS)
    reason = _rollups_cannot_answer(query)
    if reason is None:
        dimensional = bool(query.attribute_dimensions)
        days_only = dimensional or not _names_with_hours(query)
        granularities = DIMENSION_GRANULARITIES if days_only else TOTAL_GRANULARITIES
        pieces = rollup_pieces(buckets, finest=granularities[0])
        if pieces is not None:
            return MetricPlan(SOURCE_ROLLUPS, pieces)
        if rollup_pieces(buckets) is None:
            reason = "a bucket boundary is not on a whole UTC hour"
        elif dimensional:
            reason = (
                "a bucket boundary is not on a UTC midnight, and rollups hold dimensions by day"
            )
        else:
            reason = (
                "a bucket boundary is not on a UTC midnight, and rollups hold hours for all"
                " events and pageviews only, not per event name"
            )
    return MetricPlan(SOURCE_EVENTS, reason=reason)


def _rollups_cannot_answer(query: MetricQuery) -> str | None:
    """Why no rollup row holds what `query` asks for, whatever its buckets (None: they do)."""
    if query.wants_share_counters:
        return "bot_share and cookieless_share are computed from raw events"
    if query.cohort_persons is not None:
        return "cohort filters need persons, which rollups do not keep"
    # Rollup rows hold one attribute dimension (plus the event name); session rollups have no
    # event name.
    if len(query.attribute_dimensions) > 1 or (
        query.wants_session_counters and query.by_event_name
    ):
        return "they hold one dimension per row and sessions have no event name"
    if query.attribute_dimensions and not _names_with_dimensions(query):
        return "they hold dimensions for all events and pageviews only, not per event name"
    return None


def _names_with_hours(query: MetricQuery) -> bool:
    """Whether every event name whose rollup rows `query` reads has hourly rows."""
    if not query.wants_event_counters:
        return True  # session rollups have hours
    filtered = query.filters.values(EVENT_NAME_DIMENSION)
    if filtered is None and query.breakdown == EVENT_NAME_DIMENSION:
        return False  # every name
    return set(query.event_names).union(filtered or ()) <= set(HOURLY_NAMES)


def _names_with_dimensions(query: MetricQuery) -> bool:
    """Whether every event name `query` reads by dimension has dimension rows."""
    names = set(query.event_names)
    if query.breakdown == EVENT_NAME_DIMENSION:
        return False
    filtered = query.filters.values(EVENT_NAME_DIMENSION)
    if filtered is not None:
        names |= set(filtered)
    return names <= set(DIMENSION_NAMES)


def parse_metric_names(raw: str | None) -> tuple[str, ...]:
    """`metrics=visitors,pageviews,event:signup`; the standard set when absent."""
    if raw is None or raw.strip() == "":
        return STANDARD_METRICS
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if name.startswith(EVENT_COUNT_PREFIX):
            if name == EVENT_COUNT_PREFIX:
                raise ParamError("metrics", "event: needs an event name, e.g. event:signup")
        elif name.startswith(CUSTOM_METRIC_PREFIX):
            if name == CUSTOM_METRIC_PREFIX:
                raise ParamError("metrics", "metric: needs a custom metric id, e.g. metric:m_1")
        elif name not in KNOWN_METRICS:
            raise ParamError(
                "metrics",
                f"unknown metric {name!r} (one of {', '.join(KNOWN_METRICS)}, event:<name> "
                "or metric:<custom metric id>)",
            )
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass
class Counters:
    """Additive counts of one (bucket, breakdown value) cell plus its visitor sketch or exact
    visitor count. Visitors are never summed: sketches merge, exact counts come from SQL."""

    events: int = 0
    pageviews: int = 0
    named: dict[str, int] = field(default_factory=dict)
    visitors: int = 0
    sessions: int = 0
    bounces: int = 0
    duration_s: float = 0.0
    session_pageviews: int = 0
    all_events: int = 0  # humans and bots, whatever include_bots says
    bot_events: int = 0
    counted_events: int = 0  # the events include_bots admits
    cookieless_events: int = 0  # of the counted events
    custom: dict[str, int | float | None] = field(default_factory=dict)  # metric:<id> values
    visitor_union: hll_union | None = None

    def add_events(self, other: Counters) -> None:
        self.events += other.events
        self.pageviews += other.pageviews
        for name, count in other.named.items():
            self.named[name] = self.named.get(name, 0) + count

    def add_sessions(self, other: Counters) -> None:
        self.sessions += other.sessions
        self.bounces += other.bounces
        self.duration_s += other.duration_s
        self.session_pageviews += other.session_pageviews

    def add_sketch(self, sketch: hll_sketch) -> None:
        if self.visitor_union is None:
            self.visitor_union = hll_union(sketches.LG_K)
        self.visitor_union.update(sketch)

    def close_sketch(self) -> hll_sketch | None:
        """Fix `visitors` from the merged sketch; returns the merged sketch for rollups up."""
        if self.visitor_union is None:
            return None
        merged = self.visitor_union.get_result()
        self.visitors = round(merged.get_estimate())
        self.visitor_union = None
        return merged


# (bucket index or ALL, breakdown value or ALL) -> counters
Cells = dict[tuple[int | None, str | None], Counters]
_K = TypeVar("_K")


def cell_of(cells: dict[_K, Counters], key: _K) -> Counters:
    """The counters of `key`, created empty on first use (`setdefault(key, Counters())` would
    build and drop one per call: a fifth of a year-by-page answer's time)."""
    cell = cells.get(key)
    if cell is None:
        cell = cells[key] = Counters()
    return cell


def metric_value(metric: str, counters: Counters) -> int | float | None:
    """The value of `metric` from a cell's counters; ratios are None without sessions."""
    if metric == "visitors":
        return counters.visitors
    if metric == "pageviews":
        return counters.pageviews
    if metric == "events":
        return counters.events
    if metric.startswith(CUSTOM_METRIC_PREFIX):
        return counters.custom.get(metric)
    if metric.startswith(EVENT_COUNT_PREFIX):
        return counters.named.get(metric[len(EVENT_COUNT_PREFIX) :], 0)
    if metric == "sessions":
        return counters.sessions
    if metric == "bot_share":
        return counters.bot_events / counters.all_events if counters.all_events else None
    if metric == "cookieless_share":
        if not counters.counted_events:
            return None
        return counters.cookieless_events / counters.counted_events
    if counters.sessions == 0:
        return None
    if metric == "bounce_rate":
        return counters.bounces / counters.sessions
    if metric == "avg_session_duration":
        return counters.duration_s / counters.sessions
    if metric == "views_per_session":
        return counters.session_pageviews / counters.sessions
    raise ValueError(f"unknown metric {metric!r}")


# How answers round derived values (counts are exact integers): shares to 0.1 percentage
# point, seconds to a tenth, views per session to two decimals.
_DECIMALS = {
    "bounce_rate": 3,
    "bot_share": 3,
    "cookieless_share": 3,
    "avg_session_duration": 1,
    "views_per_session": 2,
}


def rounded_value(metric: str, value: int | float | None) -> int | float | None:
    """`value` of `metric` as answers show it."""
    decimals = _DECIMALS.get(metric)
    if decimals is None or value is None or isinstance(value, int):
        return value
    return round(value, decimals)


class SqlParams:
    """Positional SQL parameters, numbered as they are added."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"
