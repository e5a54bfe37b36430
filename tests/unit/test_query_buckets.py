"""Output buckets in a time zone and their exact cover by hourly and daily rollup buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.rollup_keys import DAY, HOUR, bucket_start
from services.query.buckets import RollupPiece, output_buckets, rollup_pieces

BERLIN = ZoneInfo("Europe/Berlin")
UTC_ZONE = ZoneInfo("UTC")


def _covered_hours(pieces: list[RollupPiece], index: int) -> list[datetime]:
    """Every UTC hour the pieces of one output bucket cover, checking each piece is whole."""
    hours: list[datetime] = []
    for piece in pieces:
        if piece.index != index:
            continue
        step = {HOUR: timedelta(hours=1), DAY: timedelta(days=1)}
        cursor = piece.lo
        while cursor < piece.hi:
            assert bucket_start(cursor, piece.granularity) == cursor
            span = step[piece.granularity]
            hours.extend(
                cursor + timedelta(hours=h) for h in range(int(span.total_seconds() // 3600))
            )
            cursor += span
        assert cursor == piece.hi
    return hours


def test_daily_buckets_follow_local_midnights_across_a_dst_change() -> None:
    start = datetime(2025, 3, 29, tzinfo=BERLIN).astimezone(UTC)
    end = datetime(2025, 4, 1, tzinfo=BERLIN).astimezone(UTC)
    buckets = output_buckets(start, end, "day", BERLIN)
    assert [b.astimezone(BERLIN).isoformat() for b in buckets.labels] == [
        "2025-03-29T00:00:00+01:00",
        "2025-03-30T00:00:00+01:00",
        "2025-03-31T00:00:00+02:00",
    ]
    # The day of the change has 23 hours.
    assert buckets.bounds[2] - buckets.bounds[1] == timedelta(hours=23)


def test_first_and_last_buckets_are_clipped_to_the_range() -> None:
    start = datetime(2025, 3, 5, 10, tzinfo=UTC)
    end = datetime(2025, 3, 20, 6, tzinfo=UTC)
    buckets = output_buckets(start, end, "week", UTC_ZONE)
    # The first week began on Monday 3 March, before the range: it is labelled with `from`.
    assert buckets.labels[0] == start
    assert buckets.labels[1] == datetime(2025, 3, 10, tzinfo=UTC)
    assert buckets.bounds[0] == start and buckets.bounds[-1] == end
    assert len(buckets) == 3


def test_pieces_cover_each_bucket_exactly_and_prefer_coarse_rollups() -> None:
    start = datetime(2025, 1, 1, 5, tzinfo=UTC)
    end = datetime(2025, 3, 1, 20, tzinfo=UTC)
    buckets = output_buckets(start, end, "month", UTC_ZONE)
    pieces = rollup_pieces(buckets)
    assert pieces is not None
    for index in range(len(buckets)):
        hours = _covered_hours(pieces, index)
        expected_hours = (
            int((buckets.bounds[index + 1] - buckets.bounds[index]).total_seconds()) // 3600
        )
        assert len(hours) == len(set(hours)) == expected_hours
        assert min(hours) == buckets.bounds[index]
    # January: 19 hours, then one run of days to the month's end; February: days only.
    january = [p for p in pieces if p.index == 0]
    assert [(p.granularity, p.lo, p.hi) for p in january] == [
        (HOUR, start, datetime(2025, 1, 2, tzinfo=UTC)),
        (DAY, datetime(2025, 1, 2, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)),
    ]
    # March: the 20 hours of its first day.
    assert [(p.granularity, p.lo, p.hi) for p in pieces if p.index == 2] == [
        (HOUR, datetime(2025, 3, 1, tzinfo=UTC), end)
    ]


def test_rows_only_days_hold_need_utc_midnights() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    buckets = output_buckets(start, start + timedelta(days=3), "day", UTC_ZONE)
    assert {p.granularity for p in rollup_pieces(buckets, finest=DAY) or []} == {DAY}
    hourly = output_buckets(start, start + timedelta(hours=30), "hour", UTC_ZONE)
    assert rollup_pieces(hourly, finest=DAY) is None
    berlin = datetime(2025, 3, 29, tzinfo=BERLIN).astimezone(UTC)
    assert (
        rollup_pieces(output_buckets(berlin, berlin + timedelta(days=2), "day", BERLIN), finest=DAY)
        is None
    )


def test_local_days_of_a_whole_hour_zone_use_hourly_rollups() -> None:
    start = datetime(2025, 3, 29, tzinfo=BERLIN).astimezone(UTC)
    end = datetime(2025, 4, 2, tzinfo=BERLIN).astimezone(UTC)
    pieces = rollup_pieces(output_buckets(start, end, "day", BERLIN))
    assert pieces is not None
    assert {p.granularity for p in pieces} == {HOUR}


def test_half_hour_zones_and_partial_hours_cannot_use_rollups() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    start = datetime(2025, 3, 1, tzinfo=kolkata).astimezone(UTC)
    end = datetime(2025, 3, 3, tzinfo=kolkata).astimezone(UTC)
    assert rollup_pieces(output_buckets(start, end, "day", kolkata)) is None
    partial = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)
    assert rollup_pieces(output_buckets(partial, end, "day", UTC_ZONE)) is None


@settings(max_examples=200, deadline=None)
@given(
    start=st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)),
    hours=st.integers(1, 24 * 120),
    interval=st.sampled_from(["hour", "day", "week", "month"]),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
)
def test_every_bucket_label_lies_in_the_range_and_bounds_tile_it(
    start: datetime, hours: int, interval: str, zone: str
) -> None:
    end = start + timedelta(hours=hours)
    if interval == "hour" and hours > 24 * 20:
        end = start + timedelta(hours=24 * 20)
    buckets = output_buckets(start, end, interval, ZoneInfo(zone))
    assert buckets.bounds[0] == start and buckets.bounds[-1] == end
    assert all(a < b for a, b in zip(buckets.bounds, buckets.bounds[1:], strict=False))
    assert all(start <= label < end for label in buckets.labels)
    assert buckets.labels == sorted(set(buckets.labels))
