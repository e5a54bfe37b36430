"""Event time: Segment's clock-skew correction and the accepted range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.ingest.timestamps import check_event_time, event_time, from_epoch_millis, to_utc
from services.ingest.validation import ItemRejected

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def test_skew_correction_uses_received_at_minus_the_send_delay() -> None:
    # The device clock is 2 h 3 min slow; the event happened 40 s before the device sent it.
    original = datetime(2024, 5, 1, 9, 56, 20, tzinfo=UTC)
    sent = datetime(2024, 5, 1, 9, 57, 0, tzinfo=UTC)
    assert event_time(RECEIVED, None, original, sent) == RECEIVED - timedelta(seconds=40)


def test_skew_correction_takes_the_client_timestamp_when_no_original_timestamp() -> None:
    ts = datetime(2024, 5, 2, 12, 0, 0, tzinfo=UTC)  # clock 1 day fast
    sent = datetime(2024, 5, 2, 12, 0, 5, tzinfo=UTC)
    assert event_time(RECEIVED, ts, None, sent) == RECEIVED - timedelta(seconds=5)


def test_original_timestamp_wins_over_timestamp_under_skew_correction() -> None:
    original = datetime(2024, 5, 1, 11, 0, 0, tzinfo=UTC)
    other = datetime(2020, 1, 1, tzinfo=UTC)
    sent = datetime(2024, 5, 1, 11, 0, 10, tzinfo=UTC)
    assert event_time(RECEIVED, other, original, sent) == RECEIVED - timedelta(seconds=10)


def test_without_sent_at_the_given_time_stands_and_backfills_keep_their_date() -> None:
    backfill = datetime(2019, 7, 4, 8, 30, tzinfo=UTC)
    assert event_time(RECEIVED, backfill, None, None) == backfill
    assert event_time(RECEIVED, None, backfill, None) == backfill


def test_no_time_at_all_means_received_at() -> None:
    assert event_time(RECEIVED, None, None, None) is RECEIVED
    # sentAt alone has nothing to correct.
    assert event_time(RECEIVED, None, None, RECEIVED - DAY) is RECEIVED


def test_offsets_and_naive_times_become_utc() -> None:
    paris = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert to_utc(paris) == RECEIVED and to_utc(paris).tzinfo is UTC
    assert to_utc(datetime(2024, 5, 1, 12, 0)) == RECEIVED
    # An offset originalTimestamp and a naive sentAt are compared as the same UTC clock.
    mixed = event_time(RECEIVED, None, paris, datetime(2024, 5, 1, 12, 0, 30))
    assert mixed == RECEIVED - timedelta(seconds=30)


def test_the_future_bound_applies_after_correction() -> None:
    check_event_time(RECEIVED + DAY, RECEIVED, DAY, "timestamp")  # exactly 24 h is fine
    with pytest.raises(ItemRejected) as rejected:
        check_event_time(RECEIVED + DAY + timedelta(seconds=1), RECEIVED, DAY, "timestamp")
    assert rejected.value.reason == (
        "timestamp: 2024-05-02T12:00:01+00:00 is more than 24 h in the future"
        " (received at 2024-05-01T12:00:00+00:00, after clock-skew correction)"
    )


def test_times_before_the_epoch_are_rejected() -> None:
    with pytest.raises(ItemRejected) as rejected:
        check_event_time(datetime(1969, 12, 31, tzinfo=UTC), RECEIVED, DAY, "originalTimestamp")
    assert rejected.value.reason.startswith(
        "originalTimestamp: 1969-12-31T00:00:00+00:00 is before"
    )


def test_epoch_milliseconds() -> None:
    assert from_epoch_millis(1_714_564_800_000, "timestamp") == RECEIVED
    with pytest.raises(ItemRejected) as rejected:
        from_epoch_millis(1e300, "timestamp")
    assert rejected.value.reason == "timestamp: 1e+300 is not a valid Unix time in milliseconds"
