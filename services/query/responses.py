"""Response bodies of the query API as msgspec Structs: what handlers encode and what the
OpenAPI document's schemas are generated from."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

import msgspec

# metric name -> value; counts are integers, rates and averages floats (null without sessions)
MetricValues = dict[str, int | float | None]

TIERS_HOT = ["hot"]


class ErrorResponse(msgspec.Struct, kw_only=True):
    """Every 4xx/5xx body. `param` names the offending query parameter on a 400."""

    error: str
    param: str | None = None


class FilterEcho(msgspec.Struct, kw_only=True):
    dimension: str
    values: list[str]


class SeriesPoint(msgspec.Struct, kw_only=True):
    """One output bucket, labelled with its start in the request's time zone."""

    bucket: datetime
    values: MetricValues


class BreakdownComparison(msgspec.Struct, kw_only=True):
    """A breakdown value's totals over the compared range and each one's change, in percent."""

    totals: MetricValues
    change: dict[str, float | None]


class BreakdownRow(msgspec.Struct, kw_only=True):
    value: str
    totals: MetricValues
    series: list[SeriesPoint]
    comparison: BreakdownComparison | None = None  # with compare=


class Breakdown(msgspec.Struct, kw_only=True):
    dimension: str
    results: list[BreakdownRow]
    truncated: bool  # more values existed than `limit`


class Freshness(msgspec.Struct, kw_only=True):
    """How fresh an answer is (services/query/freshness.py)."""

    # Time of the newest event stored for the project (null before the first one).
    newest_event: datetime | None
    # Seconds from it to when the answer was computed.
    newest_event_age_s: float | None
    # Enriched batches (of every project) the aggregator has not written yet: above 0, events
    # already sent are still on their way into answers. Null when NATS could not say.
    pending_batches: int | None


class Comparison(msgspec.Struct, kw_only=True):
    """The same metrics over the range compared with (`compare=`)."""

    compare: str  # previous_period | previous_year
    from_: datetime = msgspec.field(name="from")
    to: datetime
    totals: MetricValues
    series: list[SeriesPoint]
    # Per metric: the change of the range's total from the compared range's, in percent (one
    # decimal); null when the compared value is 0 or null.
    change: dict[str, float | None]


class MetricsResponse(msgspec.Struct, kw_only=True):
    source: str  # "rollups" or "events": what answered
    tiers: list[str]  # storage tiers read
    from_: datetime = msgspec.field(name="from")
    to: datetime
    timezone: str
    interval: str
    metrics: list[str]
    filters: list[FilterEcho]
    include_bots: bool
    totals: MetricValues
    series: list[SeriesPoint]
    breakdown: Breakdown | None = None
    # The raw-event path's rows and milliseconds per tier read (empty when rollups answered).
    tier_reads: list[TierScan] = msgspec.field(default_factory=list)
    # Archived days left out (allow_partial=true only): the answer covers the other days.
    missing: list[MissingRange] = msgspec.field(default_factory=list)
    comparison: Comparison | None = None
    freshness: Freshness | None = None


class ReportHeader(msgspec.Struct, kw_only=True):
    source: str
    tiers: list[str]
    from_: datetime = msgspec.field(name="from")
    to: datetime
    timezone: str
    filters: list[FilterEcho]
    include_bots: bool
    truncated: bool
    freshness: Freshness | None = None


class PageRow(msgspec.Struct, kw_only=True):
    page: str
    pageviews: int
    visitors: int
    entries: int  # sessions that started on this page
    bounce_rate: float | None  # of the sessions that started here
    avg_time_on_page_s: float | None  # pageviews followed by another in their session


class PagesResponse(ReportHeader, kw_only=True):
    pages: list[PageRow]


class DimensionRow(msgspec.Struct, kw_only=True):
    value: str
    visitors: int
    pageviews: int
    sessions: int
    bounce_rate: float | None
    avg_session_duration: float | None


class DimensionReport(ReportHeader, kw_only=True):
    dimension: str
    results: list[DimensionRow]


class Percentiles(msgspec.Struct, kw_only=True):
    samples: int
    avg: float
    p50: float
    p75: float
    p90: float
    p99: float


class PagePerformance(msgspec.Struct, kw_only=True):
    page: str
    metrics: dict[str, Percentiles]


class PerformanceResponse(ReportHeader, kw_only=True):
    properties: list[str]
    overall: dict[str, Percentiles]
    pages: list[PagePerformance]


class EventRecord(msgspec.Struct, kw_only=True):
    event_id: str
    name: str
    type: str
    ts: datetime
    received_at: datetime
    distinct_id: str
    user_id: str | None
    anonymous_id: str | None
    session_id: str | None
    path: str | None
    url: str | None
    title: str | None
    referrer: str | None
    referrer_domain: str | None
    channel: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device_type: str | None
    country: str | None
    region: str | None
    city: str | None
    locale: str | None
    is_bot: bool
    non_interactive: bool
    properties: dict[str, Any]


class TierScan(msgspec.Struct, kw_only=True):
    """Rows an endpoint read from one storage tier and the time it took."""

    tier: str  # "hot" (PostgreSQL) or "cold" (day files)
    rows: int
    ms: float


class EventsPage(msgspec.Struct, kw_only=True):
    events: list[EventRecord]
    next_cursor: str | None  # pass as `cursor` for the next page; null on the last page
    tiers: list[TierScan] = msgspec.field(default_factory=list)  # what each tier read


class SessionRecord(msgspec.Struct, kw_only=True):
    session_id: str
    distinct_id: str
    user_id: str | None
    start: datetime
    end: datetime
    duration_s: float
    events: int
    interactive_events: int
    pageviews: int
    bounce: bool
    entry_path: str | None
    exit_path: str | None
    referrer: str | None
    referrer_domain: str | None
    channel: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    browser: str | None
    os: str | None
    device_type: str | None
    country: str | None
    is_bot: bool


class SessionDetail(msgspec.Struct, kw_only=True):
    session: SessionRecord
    events: list[EventRecord]
    truncated: bool  # more events than max_page_size: page on with /events?session_id=
    tiers: list[TierScan] = msgspec.field(default_factory=list)  # what each tier read


class Journey(msgspec.Struct, kw_only=True):
    person_id: str
    distinct_ids: list[str]
    sessions: list[SessionRecord]  # the sessions of this page's events, in time order
    events: list[EventRecord]
    next_cursor: str | None
    tiers: list[TierScan] = msgspec.field(default_factory=list)  # what each tier read


class LiveMetrics(msgspec.Struct, kw_only=True):
    """One Server-Sent Event (`event: metrics`) of the live stream."""

    ts: datetime
    active_visitors: int  # distinct persons with an event in the last `window_s` seconds
    events_per_minute: int  # events stamped within the last 60 seconds
    window_s: int


class Health(msgspec.Struct, kw_only=True):
    status: str
    failures: dict[str, str] = {}


json_encoder = msgspec.json.Encoder()


class MissingRange(msgspec.Struct, kw_only=True):
    """Consecutive UTC days left out of an answer (allow_partial): archived, not restored."""

    first_day: date
    last_day: date


def missing_ranges(days: Iterable[date]) -> list[MissingRange]:
    """`days` as ranges of consecutive days, in order."""
    ranges: list[MissingRange] = []
    for day in sorted(set(days)):
        if ranges and ranges[-1].last_day + timedelta(days=1) == day:
            ranges[-1].last_day = day
        else:
            ranges.append(MissingRange(first_day=day, last_day=day))
    return ranges
