"""Relative periods and comparisons (docs/api-query.md): whole local days of the request's zone,
across daylight-saving changes and month ends, whatever the moment of the request."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from services.aggregator.consumer import DURABLE
from services.query.buckets import local_midnight
from services.query.freshness import AGGREGATOR_CONSUMER
from services.query.params import ParamError, parse_window
from services.query.relative_periods import (
    NAMED_PERIODS,
    change_percent,
    comparison_range,
    period_range,
)

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
moments = st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC))


def local_days(start: datetime, end: datetime, tz: ZoneInfo) -> int:
    assert local_midnight(start.astimezone(tz).date(), tz) == start
    assert local_midnight(end.astimezone(tz).date(), tz) == end
    return (end.astimezone(tz).date() - start.astimezone(tz).date()).days


@settings(max_examples=300, deadline=None)
@given(now=moments, zone=st.sampled_from(ZONES), name=st.sampled_from(NAMED_PERIODS))
def test_every_period_is_whole_local_days_around_today(now: datetime, zone: str, name: str) -> None:
    tz = ZoneInfo(zone)
    start, end = period_range(name, now, tz, history_start=now - timedelta(days=400))
    today = now.astimezone(tz).date()
    days = local_days(start, end, tz)
    assert start < end
    if name == "yesterday":
        assert end == local_midnight(today, tz)  # ends where today begins
    elif name == "last_month":
        assert end == local_midnight(today.replace(day=1), tz)  # where this month begins
    else:
        assert start <= now < end  # includes today
    expected_days = {"today": 1, "yesterday": 1, "7d": 7, "30d": 30}.get(name)
    if expected_days is not None:
        assert days == expected_days
    if name in ("month", "last_month", "12mo"):
        assert start.astimezone(tz).day == 1
    if name == "12mo":
        first = start.astimezone(tz).date()
        assert (today.year - first.year) * 12 + today.month - first.month == 11
    if name == "all":
        assert start == local_midnight((now - timedelta(days=400)).astimezone(tz).date(), tz)


@settings(max_examples=300, deadline=None)
@given(now=moments, zone=st.sampled_from(ZONES), name=st.sampled_from(NAMED_PERIODS[:-1]))
def test_previous_period_is_as_many_days_just_before(now: datetime, zone: str, name: str) -> None:
    tz = ZoneInfo(zone)
    start, end = period_range(name, now, tz)
    before_start, before_end = comparison_range("previous_period", start, end, tz)
    assert before_end == start
    assert local_days(before_start, before_end, tz) == local_days(start, end, tz)
    year_start, year_end = comparison_range("previous_year", start, end, tz)
    assert year_start.astimezone(tz).year == start.astimezone(tz).year - 1
    assert year_start < year_end <= start


def test_a_range_off_local_midnight_is_compared_with_the_same_duration() -> None:
    tz = ZoneInfo("UTC")
    start, end = datetime(2025, 3, 5, 10, tzinfo=UTC), datetime(2025, 3, 5, 16, tzinfo=UTC)
    assert comparison_range("previous_period", start, end, tz) == (
        datetime(2025, 3, 5, 4, tzinfo=UTC),
        start,
    )


def test_leap_day_compared_a_year_earlier_is_the_28th() -> None:
    tz = ZoneInfo("UTC")
    start, end = datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
    assert comparison_range("previous_year", start, end, tz) == (
        datetime(2023, 2, 28, tzinfo=UTC),
        datetime(2023, 3, 1, tzinfo=UTC),
    )


def test_a_day_before_a_leap_day_compared_a_year_earlier_keeps_its_day() -> None:
    tz = ZoneInfo("Europe/Berlin")
    start, end = local_midnight(date(2000, 2, 28), tz), local_midnight(date(2000, 2, 29), tz)
    assert comparison_range("previous_year", start, end, tz) == (
        local_midnight(date(1999, 2, 28), tz),
        local_midnight(date(1999, 3, 1), tz),
    )


def test_change_in_percent() -> None:
    assert change_percent(125, 100) == 25.0
    assert change_percent(0.32, 0.35) == -8.6
    assert change_percent(5, 0) is None and change_percent(None, 3) is None


def test_from_and_to_take_a_period_start_and_end() -> None:
    now = datetime(2025, 5, 14, 15, tzinfo=UTC)  # a Wednesday
    query = MultiDict({"from": "30d", "to": "yesterday", "timezone": "Europe/Berlin"})
    window = parse_window(query, now)
    tz = ZoneInfo("Europe/Berlin")
    assert window.start == local_midnight(now.date() - timedelta(days=29), tz)
    assert window.end == local_midnight(now.date(), tz)
    with pytest.raises(ParamError) as raised:
        parse_window(MultiDict({"period": "7d", "to": "2025-05-01"}), now)
    assert raised.value.param == "period"


def test_freshness_reads_the_aggregators_consumer() -> None:
    assert AGGREGATOR_CONSUMER == DURABLE
