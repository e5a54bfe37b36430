"""Event time: Segment's clock-skew correction, and the bounds an event time must respect."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.ingest.validation import ItemRejected

# Nothing happened before the Unix epoch; an earlier time is a broken clock or a unit mix-up.
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def to_utc(moment: datetime) -> datetime:
    """A tz-aware UTC datetime; a timestamp sent without an offset is taken as UTC."""
    tzinfo = moment.tzinfo
    if tzinfo is UTC:
        return moment
    if tzinfo is None:
        return moment.replace(tzinfo=UTC)
    if moment.utcoffset() == timedelta(0):
        return moment if moment.tzinfo is UTC else moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+14:00 or 9999-12-31T23:59:59-12:00: no UTC date exists.
        raise ItemRejected(f"{moment.isoformat()} is outside the calendar in UTC") from None


def event_time(
    received_at: datetime,
    timestamp: datetime | None,
    original_timestamp: datetime | None,
    sent_at: datetime | None,
) -> datetime:
    """When the event happened, in UTC.

    With `sentAt` the device clock's error cancels out:
    `receivedAt - (sentAt - originalTimestamp)` (the client's `timestamp` stands in for
    `originalTimestamp` when only it is given). Without `sentAt` the client's `timestamp`
    (else `originalTimestamp`) is taken as is, which is how server-side backfills set
    historical times. With no time at all, the event happened when it was received.
    """
    if sent_at is not None:
        origin = original_timestamp if original_timestamp is not None else timestamp
        if origin is not None:
            try:
                if sent_at.tzinfo is UTC and origin.tzinfo is UTC:
                    return received_at - (sent_at - origin)  # the usual case: both in UTC
                return received_at - (to_utc(sent_at) - to_utc(origin))
            except OverflowError:
                # e.g. sentAt 9999-01-01 with a timestamp of today: no calendar date results.
                raise ItemRejected(
                    f"sentAt: {sent_at.isoformat()} is so far from the event's time"
                    f" ({origin.isoformat()}) that the corrected time is out of range;"
                    " send the device clock's sentAt"
                ) from None
    given = timestamp if timestamp is not None else original_timestamp
    if given is not None:
        return to_utc(given)
    return received_at


def from_epoch_millis(millis: float, field: str) -> datetime:
    """A UTC datetime from Unix epoch milliseconds (the analytics events API's `timestamp`)."""
    try:
        return datetime.fromtimestamp(millis / 1000.0, UTC)
    except (OverflowError, OSError, ValueError):
        raise ItemRejected(
            f"{field}: {millis!r} is not a valid Unix time in milliseconds"
        ) from None


def check_event_time(
    ts: datetime, received_at: datetime, future_tolerance: timedelta, field: str
) -> None:
    """Reject an event time too far in the future (after correction) or before the epoch.
    Backdated events are accepted: that is how history is backfilled."""
    if ts - received_at > future_tolerance:
        raise ItemRejected(
            f"{field}: {ts.isoformat()} is more than {_describe(future_tolerance)} in the future"
            f" (received at {received_at.isoformat()}, after clock-skew correction)"
        )
    if ts < EARLIEST_EVENT_TIME:
        raise ItemRejected(f"{field}: {ts.isoformat()} is before 1970-01-01T00:00:00+00:00")


def _describe(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds} s"
