"""The event path: each item of a request through the stages, in order (package docstring).

decode -> validate -> normalise_time -> enrich -> apply_policy -> build
"""

from __future__ import annotations

from typing import Any

import msgspec

from libs.common.schemas.events_v1 import EventV1
from services.ingest.analytics_api_payloads import AnalyticsEvent
from services.ingest.segment_payloads import (
    SegmentBatchItems,
    SegmentMessage,
    segment_batch_items_decoder,
)
from services.ingest.stages.build import build
from services.ingest.stages.decode import decode
from services.ingest.stages.draft import RequestInfo
from services.ingest.stages.enrich import enrich
from services.ingest.stages.event_time import normalise_time
from services.ingest.stages.policy import apply_policy
from services.ingest.stages.validate import validate
from services.ingest.validation import EventLimits

# (stage name, entry point) in the order the path runs them; the benchmark times each.
STAGES = (
    ("decode", decode),
    ("validate", validate),
    ("event_time", normalise_time),
    ("enrich", enrich),
    ("policy", apply_policy),
    ("build", build),
)


def item_event(
    raw: Any, kind: str | None, request: RequestInfo, may_hold_nul: bool = True
) -> EventV1:
    """The EventV1 of one item of a request's body. `kind` is "analytics" for the events API,
    else the Segment route's call type (None: the item's own `type`). Raises what the stages
    raise: ItemRejected, ItemSkipped, msgspec.ValidationError/DecodeError, RecursionError."""
    message = decode(raw, kind == "analytics", request.limits, may_hold_nul)
    return event_of(message, kind, request)


_decode_segment_batch = segment_batch_items_decoder.decode

# Bytes a decoded item's JSON holds at least for each of these members: `"key":""` (the
# quotes of a text value included) or, for `context`, `"context":{}` plus its `"userAgent":""`
# and `"page":{}` plus its `"url":""`.
_ITEM_BRACES_AND_COMMA = 3
_TYPE_MEMBER = len('"type":""')
_MESSAGE_ID_MEMBER = len('"messageId":""')
_ANONYMOUS_ID_MEMBER = len('"anonymousId":""')
_USER_ID_MEMBER = len('"userId":""')
_CONTEXT_MEMBER = len('"context":{}')
_USER_AGENT_MEMBER = len('"userAgent":""')
_PAGE_URL_MEMBERS = len('"page":{}') + len('"url":""')
# Items whose floors (below) reach this many bytes are rare: a body larger than that per item
# beyond the limit is measured without summing them first.
_LARGEST_USUAL_FLOOR = 640


def decode_batch(body: bytes) -> SegmentBatchItems | None:
    """A `/v1/batch` body decoded in one pass, every item straight into its Struct, each
    exactly as `decode` decodes it, for `event_of`; None when anything fails to decode, so that
    the caller reads the body with its items raw (`SegmentBatch`) and runs `item_event` item by
    item, rejecting only the items at fault. The items' size and NUL checks are the caller's
    (`items_within_size`)."""
    try:
        return _decode_segment_batch(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def items_within_size(body_size: int, messages: list[SegmentMessage], limits: EventLimits) -> bool:
    """True when no item of a `/v1/batch` body of `body_size` bytes, decoded as `messages`, can
    be larger than the per-event limit, so that their sizes need no measuring; False when that
    is not certain (the caller then measures each item's JSON)."""
    limit = limits.max_event_bytes
    if body_size <= limit:
        return True
    if body_size - limit > len(messages) * _LARGEST_USUAL_FLOOR:
        return False
    # An item is at most the body less the other items. Each of those holds at least its
    # braces, a comma beside it and the members it was decoded from, with at least one byte
    # per character of their text: a floor of its size, counted from a few of its members.
    floors = largest = 0
    for message in messages:
        floor = _ITEM_BRACES_AND_COMMA
        if message.type is not None:
            floor += _TYPE_MEMBER + len(message.type)
        if message.messageId is not None:
            floor += _MESSAGE_ID_MEMBER + len(message.messageId)
        if type(message.anonymousId) is str:
            floor += _ANONYMOUS_ID_MEMBER + len(message.anonymousId)
        if type(message.userId) is str:
            floor += _USER_ID_MEMBER + len(message.userId)
        context = message.context
        if context is not None:
            floor += _CONTEXT_MEMBER
            if context.userAgent is not None:
                floor += _USER_AGENT_MEMBER + len(context.userAgent)
            if context.page is not None and context.page.url is not None:
                floor += _PAGE_URL_MEMBERS + len(context.page.url)
        floors += floor
        if floor > largest:
            largest = floor
    # The largest bound is the item whose own floor is the largest (the others' the least).
    return body_size - (floors - largest) <= limit


def event_of(
    message: SegmentMessage | AnalyticsEvent, route_type: str | None, request: RequestInfo
) -> EventV1:
    """The EventV1 of one decoded item (the stages after decode)."""
    draft = validate(message, route_type, request)
    normalise_time(draft, request)
    enrich(draft, request)
    apply_policy(draft, request)
    return build(draft)
