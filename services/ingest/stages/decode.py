"""Stage 1, decode: one item's JSON -> its payload Struct, the size and NUL checks first."""

from __future__ import annotations

from typing import Any

from services.ingest.analytics_api_payloads import AnalyticsEvent, analytics_event_decoder
from services.ingest.segment_payloads import SegmentMessage, segment_message_decoder
from services.ingest.validation import EventLimits, check_event_size, check_no_nul

_decode_segment = segment_message_decoder.decode
_decode_analytics = analytics_event_decoder.decode


def decode(
    raw: Any, analytics: bool, limits: EventLimits, may_hold_nul: bool = True
) -> SegmentMessage | AnalyticsEvent:
    """The item (`bytes`, or a batch's `msgspec.Raw`) decoded straight into the payload's
    Struct. `may_hold_nul=False` says the whole request body has no NUL escape (checked once
    per request), which spares each item its own scan. Raises ItemRejected (too large, NUL),
    msgspec.ValidationError (a field of the wrong type), msgspec.DecodeError (not JSON) or
    RecursionError (nested too deeply)."""
    check_event_size(len(raw), limits)
    if may_hold_nul:
        check_no_nul(raw)
    return _decode_analytics(raw) if analytics else _decode_segment(raw)
