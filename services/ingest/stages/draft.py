"""What the stages share: the request's facts (`RequestInfo`), the event under construction
(`Draft`, filled in by each stage in turn) and `ItemSkipped`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from libs.common.errors import StrataError
from services.ingest.analytics_api_payloads import DeviceInfo
from services.ingest.collection import CollectionRules
from services.ingest.segment_payloads import SegmentContext
from services.ingest.user_agents import UNKNOWN_AGENT
from services.ingest.validation import EventLimits


class ItemSkipped(StrataError):
    """A valid event that must not be recorded (the user withheld analytics consent)."""

    code = "item_skipped"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestInfo:
    """What every event of one request shares."""

    __slots__ = (
        "client_ip",
        "collection",
        "context",
        "cookieless_id",
        "fallback_user_agent",
        "future_tolerance",
        "last_address",
        "last_device",
        "last_published_ip",
        "last_user_agent",
        "limits",
        "project_id",
        "received_at",
        "sent_at",
    )

    def __init__(
        self,
        *,
        project_id: str,
        received_at: datetime,
        limits: EventLimits,
        sent_at: datetime | None = None,
        context: SegmentContext | None = None,
        fallback_user_agent: str | None = None,
        client_ip: str | None = None,
        collection: CollectionRules | None = None,
    ) -> None:
        self.project_id = project_id
        self.received_at = received_at
        self.limits = limits
        self.sent_at = sent_at  # a batch's own sentAt
        self.context = context  # a batch's context, merged into each item's
        # The HTTP User-Agent, used only for browser requests (they carry Origin) whose
        # payload has no userAgent: a server SDK's own agent says nothing about the visitor.
        self.fallback_user_agent = fallback_user_agent
        self.future_tolerance = timedelta(seconds=limits.future_tolerance_s)
        # The request's client address (X-Forwarded-For resolved against trusted proxies).
        self.client_ip = client_ip
        # Geo, bot ranges and the project's privacy policy; None applies none of them.
        self.collection = collection
        # Today's daily-salted visitor id, set for the browser tracker's requests only: before
        # consent it sends no id at all and ingest derives this one (services/ingest/cookieless).
        self.cookieless_id: str | None = None
        # The last user agent `enrich` parsed for this request's events, and what it is.
        self.last_user_agent: str | None = None
        self.last_device = UNKNOWN_AGENT
        # The last address `apply_policy` published, and its published form (no address, no
        # IP): a request's events nearly always share the client's address.
        self.last_address: str | None = None
        self.last_published_ip: str | None = None


class Draft:
    """One event between `validate` and `build`: EventV1's fields (the same names) and what
    the later stages read from the payload. Mutable, and filled in place, so that the event is
    built once, at the end, rather than copied by every stage that changes it."""

    __slots__ = (
        "address",
        "anonymous_id",
        "browser",
        "browser_version",
        "channel",
        "city",
        "consented",
        "context",
        "country",
        "device_info",
        "device_type",
        "distinct_id",
        "event_id",
        "events_api",
        "group_id",
        "ip",
        "is_bot",
        "locale",
        "name",
        "non_interactive",
        "original_timestamp",
        "os",
        "os_version",
        "path",
        "previous_id",
        "project_id",
        "properties",
        "received_at",
        "referrer",
        "referrer_domain",
        "region",
        "search",
        "sent_at",
        "time_field",
        "timestamp",
        "title",
        "traits",
        "ts",
        "type",
        "url",
        "user_agent",
        "user_id",
        "utm_campaign",
        "utm_content",
        "utm_medium",
        "utm_source",
        "utm_term",
    )

    def __init__(
        self,
        event_id: str,
        project_id: str,
        event_type: str,
        name: str,
        received_at: datetime,
        distinct_id: str,
        anonymous_id: str | None,
        user_id: str | None,
        properties: dict[str, Any],
        traits: dict[str, Any],
        previous_id: str | None = None,
        group_id: str | None = None,
        context: SegmentContext | None = None,
        timestamp: datetime | float | None = None,
        original_timestamp: datetime | float | None = None,
        sent_at: datetime | float | None = None,
    ) -> None:
        self.event_id = event_id
        self.project_id = project_id
        self.type = event_type
        self.name = name
        self.ts = received_at
        self.received_at = received_at
        self.distinct_id = distinct_id
        self.anonymous_id = anonymous_id
        self.user_id = user_id
        self.properties = properties
        self.traits = traits
        self.previous_id = previous_id
        self.group_id = group_id
        self.url = self.path = self.title = self.referrer = None
        self.referrer_domain = self.channel = None
        self.utm_source = self.utm_medium = self.utm_campaign = None
        self.utm_term = self.utm_content = None
        self.browser = self.browser_version = self.os = self.os_version = None
        self.device_type = self.country = self.region = self.city = self.locale = None
        self.ip = None
        self.is_bot = self.non_interactive = False
        self.context = context
        self.device_info = self.search = None
        self.timestamp = timestamp
        self.original_timestamp = original_timestamp
        self.sent_at = sent_at
        self.time_field = "timestamp"
        self.address = self.user_agent = None
        self.consented = True
        self.events_api = False

    # EventV1's fields (session_id is the sessionizer's).
    event_id: str
    project_id: str
    type: str
    name: str
    ts: datetime
    received_at: datetime
    distinct_id: str
    anonymous_id: str | None
    user_id: str | None
    previous_id: str | None
    group_id: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    url: str | None
    path: str | None
    title: str | None
    referrer: str | None
    referrer_domain: str | None
    channel: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device_type: str | None
    country: str | None
    region: str | None
    city: str | None
    locale: str | None
    ip: str | None
    is_bot: bool
    non_interactive: bool
    # What the later stages read.
    context: SegmentContext | None  # the Segment context (the batch's merged in)
    device_info: DeviceInfo | None  # the events API's deviceInfo
    search: str | None  # context.page.search
    # The sender's times: datetimes, or epoch milliseconds (the events API).
    timestamp: datetime | float | None
    original_timestamp: datetime | float | None
    sent_at: datetime | float | None
    time_field: str  # the field an out-of-bounds event time is reported as
    address: str | None  # the client IP enrichment and the policy see (None: not applied)
    user_agent: str | None  # what the cookieless id is derived from
    consented: bool  # False when the sender says analytics consent was withheld
    events_api: bool  # sent to the analytics events API (else a Segment call)
