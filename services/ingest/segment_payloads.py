"""The Segment HTTP Tracking API's payloads as typed msgspec Structs.

Only the fields Strata uses are declared; msgspec skips the rest (`integrations`, `library`,
...) without building Python objects for them, which is what keeps decoding cheap. Field names
follow the Segment spec (camelCase) so any Segment SDK's JSON decodes as is.

The Structs are `gc=False`: decoded from JSON, they can never be part of a reference cycle, so
the garbage collector need not track the ~4 of them every event allocates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

# Segment SDKs send ids as strings, but some server code sends numeric ids: accept both and
# normalise to str rather than rejecting a well-meant event.
Identifier = str | int


class SegmentPage(msgspec.Struct, frozen=True, gc=False):
    """`context.page`: the page a browser event happened on."""

    path: str | None = None
    referrer: str | None = None
    search: str | None = None
    title: str | None = None
    url: str | None = None


class SegmentCampaign(msgspec.Struct, frozen=True, gc=False):
    """`context.campaign`: UTM parameters as analytics.js parses them (`name` is utm_campaign)."""

    name: str | None = None
    source: str | None = None
    medium: str | None = None
    term: str | None = None
    content: str | None = None


class SegmentLocation(msgspec.Struct, frozen=True, gc=False):
    """`context.location`."""

    country: str | None = None
    region: str | None = None
    city: str | None = None


class SegmentOs(msgspec.Struct, frozen=True, gc=False):
    """`context.os` (mobile SDKs, which send no user agent)."""

    name: str | None = None
    version: str | None = None


class SegmentDevice(msgspec.Struct, frozen=True, gc=False):
    """`context.device` (mobile SDKs)."""

    type: str | None = None
    model: str | None = None
    manufacturer: str | None = None


class SegmentConsent(msgspec.Struct, frozen=True, gc=False):
    """`context.consent`: Segment Consent Management's `categoryPreferences` (category ->
    allowed), or the Strata tracker's `analytics` flag."""

    categoryPreferences: dict[str, Any] | None = None
    analytics: bool | None = None


class SegmentLibrary(msgspec.Struct, frozen=True, gc=False):
    """`context.library`: the SDK that sent the event (the browser tracker is "strata.js")."""

    name: str | None = None
    version: str | None = None


class SegmentContext(msgspec.Struct, frozen=True, gc=False):
    """`context`: where and by what an event was sent."""

    ip: str | None = None
    userAgent: str | None = None
    locale: str | None = None
    page: SegmentPage | None = None
    campaign: SegmentCampaign | None = None
    location: SegmentLocation | None = None
    os: SegmentOs | None = None
    device: SegmentDevice | None = None
    traits: dict[str, Any] | None = None
    consent: SegmentConsent | None = None
    library: SegmentLibrary | None = None
    # Google Analytics' flag for events that must not end a bounce (1/true); some senders put
    # it in the context rather than in the properties.
    nonInteraction: bool | int | None = None
    non_interaction: bool | int | None = None


class SegmentMessage(msgspec.Struct, frozen=True, gc=False):
    """One Segment call (track, page, screen, identify, group or alias)."""

    type: str | None = None
    messageId: str | None = None
    userId: Identifier | None = None
    anonymousId: Identifier | None = None
    previousId: Identifier | None = None
    groupId: Identifier | None = None
    event: str | None = None  # track
    name: str | None = None  # page / screen name
    category: str | None = None  # page category
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: SegmentContext | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    writeKey: str | None = None


class SegmentBatch(msgspec.Struct, frozen=True, gc=False):
    """`POST /v1/batch`. Items stay raw JSON so each is sized and validated on its own: one bad
    item must not sink its neighbours."""

    batch: list[msgspec.Raw] | None = None
    writeKey: str | None = None
    sentAt: datetime | None = None
    context: SegmentContext | None = None


class SegmentBatchItems(msgspec.Struct, frozen=True, gc=False):
    """`POST /v1/batch` with every item decoded straight into its Struct, in one pass over the
    body: the usual batch, whose items are all well-formed. Any error sends the request back to
    the item-by-item path (`SegmentBatch`), which says which items are wrong. The other fields
    are `SegmentBatch`'s, so that the body is read once."""

    batch: list[SegmentMessage] | None = None
    writeKey: str | None = None
    sentAt: datetime | None = None
    context: SegmentContext | None = None


class WriteKeyOnly(msgspec.Struct, frozen=True, gc=False):
    """Just the body's `writeKey`, read before the items are validated."""

    writeKey: str | None = None


class MessageIdOnly(msgspec.Struct, frozen=True, gc=False):
    """The `messageId` of an item that failed validation, for its rejection entry."""

    messageId: Any = None


segment_message_decoder = msgspec.json.Decoder(SegmentMessage)
segment_batch_decoder = msgspec.json.Decoder(SegmentBatch)
segment_batch_items_decoder = msgspec.json.Decoder(SegmentBatchItems)
write_key_decoder = msgspec.json.Decoder(WriteKeyOnly)
message_id_decoder = msgspec.json.Decoder(MessageIdOnly)


def merge_contexts(
    batch: SegmentContext | None, item: SegmentContext | None
) -> SegmentContext | None:
    """A batch-level `context` supplies what an item's own context leaves unset (Segment's
    documented merge for `/v1/batch`)."""
    if batch is None:
        return item
    if item is None:
        return batch
    merged = {
        field: value if value is not None else getattr(batch, field)
        for field, value in msgspec.structs.asdict(item).items()
    }
    return SegmentContext(**merged)
