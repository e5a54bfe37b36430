"""What rollups are keyed by: shared by the aggregator (writes) and query (reads), so the two
can never disagree on a dimension's meaning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs.common.model.columns import EVENT_DIMENSION_COLUMNS, SESSION_DIMENSION_COLUMNS
from libs.common.schemas.events_v1 import PAGEVIEW

# Rollup granularities: hour and day (UTC). Hourly rows hold totals only, for HOURLY_NAMES;
# daily rows hold totals and every dimension. Weeks, months and years are merged from days
# when read. WEEK remains a bucket unit (ISO week, Monday) for callers that group days by week.
HOUR, DAY, WEEK = "h", "d", "w"
GRANULARITIES = (HOUR, DAY)
# The rollups' coverage, which the metrics planner plans against: the granularities whose
# rows hold totals, and those whose rows also hold one row per dimension value.
TOTAL_GRANULARITIES = (HOUR, DAY)
DIMENSION_GRANULARITIES = (DAY,)

ALL_EVENTS = "*"  # the `name` of the rollup row over every event name
# The names whose daily rows also hold dimensions: all events and pageviews (what visitors,
# pageviews and events by page, source or device read). Other names have totals only; their
# breakdowns are answered from the events.
DIMENSION_NAMES = (ALL_EVENTS, PAGEVIEW)
# The names with hourly rows: all events and pageviews (what hourly and local-time-zone charts
# of visitors, pageviews and events read). Other names have daily rows only; a question that
# needs their hours is answered from the events. (Migration 0027: they were most hour rows.)
HOURLY_NAMES = (ALL_EVENTS, PAGEVIEW)
TOTAL = ""  # the `dim` (and `value`) of the row without a breakdown

# API dimension name -> event column (`page` is the event's path), and -> session column (a
# session's page is its entry page), as libs/common/model declares them.
EVENT_DIMENSIONS: dict[str, str] = EVENT_DIMENSION_COLUMNS
SESSION_DIMENSIONS: dict[str, str] = SESSION_DIMENSION_COLUMNS

# Session rollups also count sessions by their exit page (the page they ended on), a
# dimension of sessions only: events have no exit page.
EXIT_PAGE = "exit_page"
SESSION_ROLLUP_DIMENSIONS: dict[str, str] = {**SESSION_DIMENSIONS, EXIT_PAGE: "exit_path"}

NONE_VALUE = "(none)"  # a missing dimension value is its own bucket, never dropped

# What a visitor is counted as, wherever visitors are counted (rollup sketches, raw metrics,
# erasure's recomputation, the live stream): the event's device key, its anonymous id or, when
# it has none, its user id. Web analytics counts devices; the analyses merge persons instead.
VISITOR_COLUMN = "distinct_id"


def bucket_start(ts: datetime, granularity: str) -> datetime:
    """The UTC start of the hour/day/week containing `ts`."""
    ts = ts.astimezone(UTC)
    if granularity == HOUR:
        return ts.replace(minute=0, second=0, microsecond=0)
    day = ts.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == DAY:
        return day
    if granularity == WEEK:
        return day - timedelta(days=day.weekday())
    raise ValueError(f"unknown granularity {granularity!r}")


def dim_value(value: object) -> str:
    return NONE_VALUE if value is None or value == "" else str(value)
