"""Retention, rule by rule, on hand-built events with the matrices worked out by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.query.analyses import retention as retention_module
from services.query.analyses.conditions import EventScope
from services.query.analyses.requests import EventMatch, RetentionRequest
from services.query.analyses.retention import (
    HISTORY_START,
    average_percentages,
    retention_plan,
    retention_spec,
    run_retention,
)
from services.query.params import ParamError, TimeWindow
from tests.support.analysis_events import Ev, numbered, scan_connection

UTC_ZONE = ZoneInfo("UTC")
LATER = datetime(2026, 1, 1, tzinfo=UTC)  # "now": every period has begun


def day(d: int, hour: int = 12) -> datetime:
    """March 2025, day `d` (Monday the 3rd is day 3), at `hour` UTC."""
    return datetime(2025, 3, d, hour, tzinfo=UTC)


def retention(
    events: list[Ev],
    *,
    start: datetime,
    end: datetime,
    tz: str = "UTC",
    now: datetime = LATER,
    **options: Any,
) -> list[tuple[date, int, list[int | None]]]:
    con = scan_connection(numbered(events))
    spec = retention_spec(
        RetentionRequest(
            start_event=EventMatch("signup"), return_event=EventMatch("visit"), **options
        )
    )
    zone = ZoneInfo(tz)
    plan = retention_plan(spec, TimeWindow(start, end, zone))
    result = run_retention(con, spec, plan, EventScope(HISTORY_START, plan.scan_end), now)
    return [(r.start.astimezone(zone).date(), r.size, r.counts) for r in result.rows]


def signup(person: str, ts: datetime) -> Ev:
    return Ev(person, "signup", ts)


def visit(person: str, ts: datetime) -> Ev:
    return Ev(person, "visit", ts)


def test_offset_zero_is_the_cohort_size_whatever_the_return_event() -> None:
    rows = retention(
        [signup("p", day(3)), signup("q", day(3))],
        start=day(3, 0),
        end=day(4, 0),
        intervals=2,
    )
    assert rows == [(date(2025, 3, 3), 2, [2, 0, 0])]


def test_a_return_in_the_cohort_period_is_not_offset_one() -> None:
    rows = retention(
        [signup("p", day(3, 9)), visit("p", day(3, 18)), signup("q", day(3)), visit("q", day(4))],
        start=day(3, 0),
        end=day(4, 0),
        intervals=1,
    )
    assert rows == [(date(2025, 3, 3), 2, [2, 1])]


def test_recurring_puts_a_person_in_every_period_with_a_start_event() -> None:
    events = [
        signup("p", day(1)),  # before the range
        signup("p", day(3)),
        signup("p", day(4)),
        visit("p", day(5)),
        signup("q", day(4)),
        visit("q", day(5)),
    ]
    rows = retention(events, start=day(3, 0), end=day(5, 0), intervals=2)
    # p: cohort 3rd (returns on the 5th = offset 2) and cohort 4th (offset 1);
    # q: cohort 4th (offset 1).
    assert rows == [(date(2025, 3, 3), 1, [1, 0, 1]), (date(2025, 3, 4), 2, [2, 2, 0])]


def test_first_time_counts_only_the_first_ever_start_event_even_before_from() -> None:
    events = [
        signup("p", day(1)),  # p's first signup is before the range: in no cohort
        signup("p", day(3)),
        visit("p", day(4)),
        signup("q", day(3)),
        signup("q", day(4)),  # q's second signup: still only in the cohort of the 3rd
        visit("q", day(5)),
    ]
    rows = retention(events, start=day(3, 0), end=day(5, 0), intervals=2, mode="first_time")
    assert rows == [(date(2025, 3, 3), 1, [1, 0, 1]), (date(2025, 3, 4), 0, [0, 0, 0])]


def test_cumulative_counts_returns_in_k_or_later() -> None:
    events = [signup("p", day(3)), visit("p", day(6)), signup("q", day(3)), visit("q", day(4))]
    plain = retention(events, start=day(3, 0), end=day(4, 0), intervals=3)
    cumulative = retention(events, start=day(3, 0), end=day(4, 0), intervals=3, cumulative=True)
    # p returns at offset 3 only, q at offset 1 only.
    assert plain == [(date(2025, 3, 3), 2, [2, 1, 0, 1])]
    assert cumulative == [(date(2025, 3, 3), 2, [2, 2, 1, 1])]


def test_week_start_monday_or_sunday() -> None:
    # Sunday the 9th: the end of the Monday-3rd week, the start of the Sunday-9th week.
    events = [signup("p", day(9)), visit("p", day(10)), signup("q", day(4))]
    monday = retention(
        events, start=day(3, 0), end=day(10, 0), period="week", intervals=1, week_start="monday"
    )
    sunday = retention(
        events, start=day(3, 0), end=day(10, 0), period="week", intervals=1, week_start="sunday"
    )
    # Monday weeks: both signups in the week of the 3rd; p's visit on the 10th is next week.
    assert monday == [(date(2025, 3, 3), 2, [2, 1])]
    # Sunday weeks: q in the week of the 2nd, p in the week of the 9th (visit same week).
    assert sunday == [(date(2025, 3, 2), 1, [1, 0]), (date(2025, 3, 9), 1, [1, 0])]


def test_the_last_period_is_the_whole_period_containing_to() -> None:
    # `to` is Wednesday the 5th at noon; the week runs to Sunday the 9th, so Friday's
    # signup is in the cohort.
    events = [signup("p", day(7)), visit("p", day(12))]
    rows = retention(events, start=day(3, 0), end=day(5, 12), period="week", intervals=1)
    assert rows == [(date(2025, 3, 3), 1, [1, 1])]


def test_periods_are_aligned_in_the_time_zone() -> None:
    # 23:30 UTC on the 3rd is already the 4th in Berlin.
    events = [signup("p", day(3, 23) + timedelta(minutes=30)), visit("p", day(5, 10))]
    utc = retention(events, start=day(3, 0), end=day(5, 0), intervals=2)
    berlin = retention(
        events,
        start=datetime(2025, 3, 2, 23, tzinfo=UTC),
        end=datetime(2025, 3, 4, 23, tzinfo=UTC),
        intervals=2,
        tz="Europe/Berlin",
    )
    assert utc == [(date(2025, 3, 3), 1, [1, 0, 1]), (date(2025, 3, 4), 0, [0, 0, 0])]
    assert berlin == [(date(2025, 3, 3), 0, [0, 0, 0]), (date(2025, 3, 4), 1, [1, 1, 0])]


def test_daylight_saving_day_is_one_period() -> None:
    # Berlin's 30 March 2025 has 23 hours: 22:30 UTC on the 30th is the 31st locally.
    events = [
        signup("p", datetime(2025, 3, 29, 23, 30, tzinfo=UTC)),  # the 30th locally
        visit("p", datetime(2025, 3, 30, 21, 30, tzinfo=UTC)),  # 23:30 on the 30th: same day
        visit("p", datetime(2025, 3, 30, 22, 30, tzinfo=UTC)),  # 00:30 on the 31st
    ]
    rows = retention(
        events,
        start=datetime(2025, 3, 29, 23, tzinfo=UTC),
        end=datetime(2025, 3, 30, 22, tzinfo=UTC),
        intervals=1,
        tz="Europe/Berlin",
    )
    assert rows == [(date(2025, 3, 30), 1, [1, 1])]


def test_month_periods() -> None:
    events = [
        signup("p", datetime(2025, 1, 31, tzinfo=UTC)),
        visit("p", datetime(2025, 2, 28, tzinfo=UTC)),
        signup("q", datetime(2025, 2, 1, tzinfo=UTC)),
        visit("q", datetime(2025, 4, 1, tzinfo=UTC)),
    ]
    rows = retention(
        events,
        start=datetime(2025, 1, 1, tzinfo=UTC),
        end=datetime(2025, 2, 2, tzinfo=UTC),
        period="month",
        intervals=2,
    )
    assert rows == [(date(2025, 1, 1), 1, [1, 1, 0]), (date(2025, 2, 1), 1, [1, 0, 1])]


def test_periods_that_have_not_begun_are_null() -> None:
    rows = retention(
        [signup("p", day(3)), visit("p", day(4))],
        start=day(3, 0),
        end=day(5, 0),
        intervals=3,
        now=day(5, 8),
    )
    # now is during the 5th: offset 2 of the 3rd has begun, offset 3 has not.
    assert rows == [
        (date(2025, 3, 3), 1, [1, 1, 0, None]),
        (date(2025, 3, 4), 0, [0, 0, None, None]),
    ]


def test_average_is_weighted_by_cohort_size_over_begun_periods() -> None:
    con = scan_connection(
        numbered(
            [
                signup("p", day(3)),
                visit("p", day(4)),
                signup("q", day(3)),
                signup("r", day(4)),
                visit("r", day(5)),
            ]
        )
    )
    spec = retention_spec(
        RetentionRequest(
            start_event=EventMatch("signup"), return_event=EventMatch("visit"), intervals=2
        )
    )
    plan = retention_plan(spec, TimeWindow(day(3, 0), day(5, 0), UTC_ZONE))
    result = run_retention(con, spec, plan, EventScope(HISTORY_START, plan.scan_end), day(5, 8))
    # offset 1: (1 + 1) / (2 + 1); offset 2: only the 3rd's cohort has begun: 0 / 2.
    assert average_percentages(result, 2) == [1.0, 2 / 3, 0.0]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"period": "quarter"}, "period"),
        ({"intervals": 0}, "intervals"),
        ({"week_start": "friday"}, "week_start"),
        ({"mode": "sometimes"}, "mode"),
    ],
)
def test_bad_retention_requests_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as caught:
        retention_spec(
            RetentionRequest(
                start_event=EventMatch("signup"), return_event=EventMatch("visit"), **options
            )
        )
    assert caught.value.param == field


@pytest.mark.parametrize("buckets", [(3600, 900, 60), ()], ids=["hour-buckets", "asof"])
@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "Europe/Berlin"])
def test_period_mapping_paths_agree(
    monkeypatch: pytest.MonkeyPatch, buckets: tuple[int, ...], tz: str
) -> None:
    # Kolkata's midnights are on half hours (quarter-hour buckets); with no bucket size the
    # events are mapped by an ASOF join. Every path gives the same matrix.
    monkeypatch.setattr(retention_module, "_BUCKET_SECONDS", buckets)
    events = [
        signup("p", datetime(2025, 3, 3, 18, 20, tzinfo=UTC)),  # Kolkata: 23:50 on the 3rd
        signup("q", datetime(2025, 3, 3, 18, 40, tzinfo=UTC)),  # Kolkata: 00:10 on the 4th
        visit("p", datetime(2025, 3, 4, 18, 35, tzinfo=UTC)),  # Kolkata: 00:05 on the 5th
        visit("q", datetime(2025, 3, 5, 12, tzinfo=UTC)),
    ]
    rows = retention(events, start=day(3, 0) - timedelta(days=1), end=day(5, 0), intervals=2, tz=tz)
    expected = {
        "UTC": [
            (date(2025, 3, 2), 0, [0, 0, 0]),
            (date(2025, 3, 3), 2, [2, 1, 1]),
            (date(2025, 3, 4), 0, [0, 0, 0]),
        ],
        "Asia/Kolkata": [  # the range is 05:30 on the 2nd to 05:30 on the 5th, local
            (date(2025, 3, 2), 0, [0, 0, 0]),
            (date(2025, 3, 3), 1, [1, 0, 1]),
            (date(2025, 3, 4), 1, [1, 1, 0]),
            (date(2025, 3, 5), 0, [0, 0, 0]),
        ],
        "Europe/Berlin": [
            (date(2025, 3, 2), 0, [0, 0, 0]),
            (date(2025, 3, 3), 2, [2, 1, 1]),
            (date(2025, 3, 4), 0, [0, 0, 0]),
            (date(2025, 3, 5), 0, [0, 0, 0]),
        ],
    }[tz]
    assert rows == expected
