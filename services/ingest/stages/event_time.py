"""Stage 3, normalise time: when the event happened, in UTC, with the device clock's skew
corrected, and within bounds (not before the epoch, not too far in the future). The rules are
in `services.ingest.timestamps`."""

from __future__ import annotations

from datetime import datetime

from services.ingest.stages.draft import Draft, RequestInfo
from services.ingest.timestamps import (
    EARLIEST_EVENT_TIME,
    check_event_time,
    event_time,
    from_epoch_millis,
)


def normalise_time(draft: Draft, request: RequestInfo) -> None:
    """Set `draft.ts`; raises ItemRejected naming the field when the time is out of bounds."""
    timestamp, sent_at = draft.timestamp, draft.sent_at
    # The events API may send Unix epoch milliseconds instead of ISO-8601 text.
    if timestamp is not None and not isinstance(timestamp, datetime):
        timestamp = from_epoch_millis(timestamp, "timestamp")
    if sent_at is not None and not isinstance(sent_at, datetime):
        sent_at = from_epoch_millis(sent_at, "sentAt")
    original = draft.original_timestamp
    assert original is None or isinstance(original, datetime)
    received_at = draft.received_at
    ts = event_time(received_at, timestamp, original, sent_at)
    # Most times are in bounds: the check (which words the rejection) runs only when not.
    if ts - received_at > request.future_tolerance or ts < EARLIEST_EVENT_TIME:
        check_event_time(ts, received_at, request.future_tolerance, draft.time_field)
    draft.ts = ts
