"""The metrics planner as a pure function of the request and the rollups' coverage (hourly
totals; daily totals and dimensions): which store answers, and which rollup buckets it reads."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from libs.common.rollup_keys import DAY, HOUR
from services.query.buckets import output_buckets
from services.query.metric_query import (
    SOURCE_EVENTS,
    SOURCE_ROLLUPS,
    MetricPlan,
    MetricQuery,
    plan_metrics,
)
from services.query.params import DimensionFilter, Filters, TimeWindow

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
MONDAY = datetime(2025, 3, 3, tzinfo=UTC)


def _query(
    start: datetime = MONDAY,
    end: datetime = MONDAY + timedelta(days=14),
    *,
    interval: str | None = "day",
    tz: ZoneInfo = UTC_ZONE,
    metrics: tuple[str, ...] = ("visitors", "pageviews", "sessions"),
    breakdown: str | None = None,
    filters: dict[str, tuple[str, ...]] | None = None,
    source: str = "auto",
) -> MetricQuery:
    return MetricQuery(
        project_id="acme",
        window=TimeWindow(start, end, tz),
        interval=interval,
        metrics=metrics,
        filters=Filters({d: DimensionFilter(d, v) for d, v in (filters or {}).items()}),
        breakdown=breakdown,
        include_bots=False,
        source=source,
    )


def _plan(query: MetricQuery) -> MetricPlan:
    window = query.window
    return plan_metrics(query, output_buckets(window.start, window.end, query.interval, window.tz))


def _granularities(plan: MetricPlan) -> set[str]:
    assert plan.pieces is not None
    return {p.granularity for p in plan.pieces}


def test_totals_over_whole_days_read_daily_rows_only() -> None:
    plan = _plan(_query(interval="week"))
    assert plan.source == SOURCE_ROLLUPS
    assert _granularities(plan) == {DAY}  # weeks are merged from days


def test_totals_over_partial_days_add_hourly_rows_at_the_edges() -> None:
    plan = _plan(_query(MONDAY + timedelta(hours=5), MONDAY + timedelta(days=3, hours=2)))
    assert plan.source == SOURCE_ROLLUPS
    assert _granularities(plan) == {HOUR, DAY}


def test_local_days_of_a_whole_hour_zone_read_hourly_totals() -> None:
    start = datetime(2025, 3, 3, tzinfo=BERLIN).astimezone(UTC)
    plan = _plan(_query(start, start + timedelta(days=2), tz=BERLIN))
    assert plan.source == SOURCE_ROLLUPS
    assert HOUR in _granularities(plan)


@pytest.mark.parametrize(
    ("breakdown", "filters"), [("page", None), (None, {"country": ("DE",)}), ("event", None)]
)
def test_one_dimension_over_utc_days_reads_daily_rows(
    breakdown: str | None, filters: dict[str, tuple[str, ...]] | None
) -> None:
    metrics = ("visitors", "events") if breakdown == "event" else ("visitors", "sessions")
    plan = _plan(_query(breakdown=breakdown, filters=filters, metrics=metrics))
    assert plan.source == SOURCE_ROLLUPS
    assert _granularities(plan) == {DAY}


def test_pageviews_by_hour_read_hourly_totals() -> None:
    # All events and pageviews keep hourly rows, by name as well.
    for query in (
        _query(interval="hour", metrics=("visitors", "pageviews", "events")),
        _query(interval="hour", metrics=("event:$pageview",)),
        _query(
            interval="hour",
            breakdown="event",
            filters={"event": ("$pageview",)},
            metrics=("events",),
        ),
    ):
        plan = _plan(query)
        assert plan.source == SOURCE_ROLLUPS
        assert _granularities(plan) == {HOUR}


NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    "query",
    [
        _query(interval="hour", breakdown="event", metrics=("events",)),
        _query(interval="hour", metrics=("event:signup",)),
        _query(interval="hour", metrics=("visitors",), filters={"event": ("signup",)}),
        _query(
            datetime(2025, 3, 3, tzinfo=BERLIN).astimezone(UTC),
            datetime(2025, 3, 5, tzinfo=BERLIN).astimezone(UTC),
            tz=BERLIN,
            metrics=("event:signup",),
        ),
        _query(
            datetime(2025, 3, 3, tzinfo=NEW_YORK).astimezone(UTC),
            datetime(2025, 3, 17, tzinfo=NEW_YORK).astimezone(UTC),
            tz=NEW_YORK,
            interval="week",
            metrics=("pageviews", "event:signup"),
        ),
    ],
    ids=[
        "hourly-name-breakdown",
        "hourly-signup",
        "hourly-signup-filter",
        "berlin-days",
        "ny-weeks",
    ],
)
def test_other_names_off_utc_midnights_are_read_from_events(query: MetricQuery) -> None:
    # Names other than all events and pageviews have daily rollup rows only (migration 0027).
    plan = _plan(query)
    assert (plan.source, plan.pieces) == (SOURCE_EVENTS, None)
    assert plan.reason is not None and "not per event name" in plan.reason


def test_other_names_over_utc_days_read_daily_rows() -> None:
    plan = _plan(_query(metrics=("event:signup",), breakdown="event"))
    assert plan.source == SOURCE_ROLLUPS
    assert _granularities(plan) == {DAY}


@pytest.mark.parametrize(
    "query",
    [
        _query(interval="hour", breakdown="page"),
        _query(MONDAY + timedelta(hours=5), breakdown="country"),
        _query(
            datetime(2025, 3, 3, tzinfo=BERLIN).astimezone(UTC),
            datetime(2025, 3, 5, tzinfo=BERLIN).astimezone(UTC),
            tz=BERLIN,
            filters={"browser": ("Firefox",)},
        ),
    ],
    ids=["hourly-breakdown", "partial-day-breakdown", "local-days-filter"],
)
def test_dimensions_off_utc_midnights_are_read_from_events(query: MetricQuery) -> None:
    plan = _plan(query)
    assert (plan.source, plan.pieces) == (SOURCE_EVENTS, None)
    assert plan.reason is not None and "UTC midnight" in plan.reason


def test_pageviews_by_dimension_read_the_pageview_rows() -> None:
    query = _query(metrics=("pageviews", "event:$pageview"), breakdown="page")
    assert _plan(query).source == SOURCE_ROLLUPS
    filtered = _query(metrics=("visitors",), breakdown="page", filters={"event": ("$pageview",)})
    assert _plan(filtered).source == SOURCE_ROLLUPS


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (_query(metrics=("bot_share",)), "computed from raw events"),
        (_query(metrics=("event:signup",), breakdown="channel"), "not per event name"),
        (
            _query(metrics=("visitors",), filters={"event": ("signup",), "country": ("DE",)}),
            "not per event name",
        ),
        (
            _query(metrics=("events",), breakdown="event", filters={"country": ("DE",)}),
            "not per event name",
        ),
        (_query(filters={"page": ("/",), "country": ("DE",)}), "one dimension per row"),
        (_query(breakdown="event", metrics=("sessions",)), "sessions have no event name"),
        (replace(_query(), cohort_persons=("p1",)), "cohort"),
        (_query(MONDAY + timedelta(minutes=30)), "whole UTC hour"),
    ],
)
def test_what_rollups_do_not_hold_is_read_from_events(query: MetricQuery, reason: str) -> None:
    plan = _plan(query)
    assert plan.source == SOURCE_EVENTS
    assert plan.reason is not None and reason in plan.reason


def test_source_events_is_obeyed_without_a_reason() -> None:
    assert _plan(_query(source="events")) == MetricPlan(SOURCE_EVENTS)
