"""Canonical event (v1): what ingest publishes on the raw stream and the sessionizer republishes,
with `session_id` set, on the public enriched stream.

Evolve by adding fields with defaults; a breaking change is a new module (`events_v2`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

SCHEMA_VERSION = 1

# Reserved names for Segment's non-track calls, so they never collide with custom events.
PAGEVIEW = "$pageview"
SCREEN = "$screen"
IDENTIFY = "$identify"
ALIAS = "$alias"
GROUP = "$group"

EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")


# Not kw_only: ingest builds every event with its fields by position, the cheapest construction
# for ~36 fields; new fields are only ever appended, with defaults.
# gc=False: events are never tracked by Python's cycle collector. They hold only strings,
# numbers, datetimes and JSON dicts (no cycle can run through one), and every service keeps
# thousands of them alive per batch: tracked, they made each collection walk them all, which
# cost the aggregator more than decoding them (an enriched message decoded in 5.4 µs per event
# with them tracked, 1.6 µs untracked).
class EventV1(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One behavioural event after validation and enrichment."""

    event_id: str  # the client's messageId: the idempotency key end to end
    project_id: str
    type: str  # one of EVENT_TYPES
    name: str  # custom event name, or PAGEVIEW/SCREEN/IDENTIFY/ALIAS/GROUP
    ts: datetime  # event time, UTC, clock-skew corrected
    received_at: datetime
    distinct_id: str  # device key: anonymous_id when present, else user_id; partitions by it
    anonymous_id: str | None = None
    user_id: str | None = None
    previous_id: str | None = None  # alias: the id being merged into user_id
    group_id: str | None = None
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    # Page context
    url: str | None = None
    path: str | None = None
    title: str | None = None
    referrer: str | None = None
    # Enrichment
    referrer_domain: str | None = None
    channel: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    browser: str | None = None
    browser_version: str | None = None
    os: str | None = None
    os_version: str | None = None
    device_type: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    locale: str | None = None
    ip: str | None = None  # kept only when the project's IP policy says so
    is_bot: bool = False
    # Non-interactive events (scroll depth, engaged time, heartbeats) keep a session alive but
    # never end its bounce.
    non_interactive: bool = False
    # Set by the sessionizer; None on the raw stream.
    session_id: str | None = None

    @property
    def person_key(self) -> str:
        """The user id once known, else the device key. Not what visitor counts use: they
        count devices (`distinct_id`); analyses resolve persons through aliases."""
        return self.user_id or self.distinct_id


class RawBatchV1(msgspec.Struct, frozen=True, kw_only=True):
    """Events for one person partition, published as one message: those of the ingest
    requests accepted within a short linger, each request's events contiguous and in order."""

    v: int = SCHEMA_VERSION
    batch_id: str
    partition: int
    events: list[EventV1]


class EnrichedBatchV1(msgspec.Struct, frozen=True, kw_only=True):
    """Sessionized events of one project and one event name (public contract)."""

    v: int = SCHEMA_VERSION
    batch_id: str
    project_id: str
    name: str
    events: list[EventV1]


class SessionUpdateV1(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A session as the sessionizer sees it after a batch (public contract, informational:
    the aggregator derives the stored session from the events it actually inserted)."""

    v: int = SCHEMA_VERSION
    project_id: str
    session_id: str
    distinct_id: str
    user_id: str | None = None
    start: datetime
    end: datetime
    events: int
    interactive_events: int
    entry_path: str | None = None
    channel: str | None = None
    referrer_domain: str | None = None


raw_batch_encoder = msgspec.json.Encoder()
raw_batch_decoder = msgspec.json.Decoder(RawBatchV1)
enriched_batch_decoder = msgspec.json.Decoder(EnrichedBatchV1)
session_update_decoder = msgspec.json.Decoder(SessionUpdateV1)


class SessionUpdateBatchV1(msgspec.Struct, frozen=True, kw_only=True):
    """The sessions of one project touched by one raw batch, as the sessionizer sees them after
    it (published on `sessions.v1.<project>`)."""

    v: int = SCHEMA_VERSION
    batch_id: str
    project_id: str
    sessions: list[SessionUpdateV1]


session_update_batch_decoder = msgspec.json.Decoder(SessionUpdateBatchV1)
