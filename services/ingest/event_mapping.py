"""Validated payloads -> the canonical EventV1 (validation, event time, enrichment).

Segment calls map to reserved names: page -> "$pageview", screen -> "$screen",
identify -> "$identify", alias -> "$alias", group -> "$group"; track keeps its `event` name.
The device key `distinct_id` is the anonymousId when present, else the userId.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from libs.common.errors import StrataError
from libs.common.schemas.events_v1 import (
    ALIAS,
    EVENT_TYPES,
    GROUP,
    IDENTIFY,
    PAGEVIEW,
    SCREEN,
    EventV1,
)
from services.ingest.analytics_api_payloads import AnalyticsEvent
from services.ingest.enrichment import (
    NO_ATTRIBUTION,
    add_source_properties,
    attribute,
    device_of,
    has_source_properties,
    is_non_interactive,
)
from services.ingest.networks import valid_ip
from services.ingest.privacy import COOKIELESS_PROPERTY
from services.ingest.segment_payloads import SegmentContext, SegmentMessage, merge_contexts
from services.ingest.timestamps import check_event_time, event_time, from_epoch_millis
from services.ingest.traffic_sources import parse_page_url
from services.ingest.user_agents import parse_user_agent
from services.ingest.validation import (
    EventLimits,
    ItemRejected,
    check_event_name,
    check_shape,
    identifier,
)

if TYPE_CHECKING:
    from services.ingest.collection import CollectionRules

_RESERVED_NAMES = {
    "page": PAGEVIEW,
    "screen": SCREEN,
    "identify": IDENTIFY,
    "alias": ALIAS,
    "group": GROUP,
}
_TYPES_TEXT = ", ".join(EVENT_TYPES)


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


def new_event_id() -> str:
    """An id for an event sent without messageId (such events cannot be deduplicated)."""
    return str(uuid.uuid4())


def _bounded_id(value: str | int | None, field: str, limits: EventLimits) -> str | None:
    # Fast path: the usual id is a short non-blank string.
    if type(value) is str and 0 < len(value) <= limits.max_name_chars and not value[0].isspace():
        return value
    text = identifier(value)
    if text is not None and len(text) > limits.max_name_chars:
        raise ItemRejected(
            f"{field}: is {len(text)} characters; the limit is {limits.max_name_chars}"
        )
    return text


def _text(value: Any) -> str | None:
    return value if type(value) is str and value else None


def segment_event(message: SegmentMessage, event_type: str | None, request: RequestInfo) -> EventV1:
    """The EventV1 of one Segment call; `event_type` comes from the route or the item's
    `type`. Raises ItemRejected naming the offending field."""
    limits = request.limits
    if event_type is None:
        raise ItemRejected(f"type is required (one of {_TYPES_TEXT})")
    if event_type not in _RESERVED_NAMES and event_type != "track":
        raise ItemRejected(f"type: {event_type!r} is not one of {_TYPES_TEXT}")

    event_id = _bounded_id(message.messageId, "messageId", limits) or new_event_id()
    user_id = _bounded_id(message.userId, "userId", limits)
    anonymous_id = _bounded_id(message.anonymousId, "anonymousId", limits)
    previous_id = group_id = None
    if event_type == "alias":
        previous_id = _bounded_id(message.previousId, "previousId", limits)
        if previous_id is None:
            raise ItemRejected("previousId is required for alias")
        if user_id is None:
            raise ItemRejected("userId is required for alias")
    elif event_type == "group":
        group_id = _bounded_id(message.groupId, "groupId", limits)
        if group_id is None:
            raise ItemRejected("groupId is required for group")
    # The browser tracker sends no anonymousId before consent: the device key is then the id
    # ingest derived (so an identify links the day's visit to the user, as a stored id would).
    cookieless = anonymous_id is None and request.cookieless_id is not None
    if cookieless:
        anonymous_id = request.cookieless_id
    distinct_id = anonymous_id or user_id
    if distinct_id is None:
        raise ItemRejected("userId or anonymousId is required")

    if event_type == "track":
        name = check_event_name(message.event, "event", limits)
    else:
        name = _RESERVED_NAMES[event_type]

    properties = message.properties if message.properties is not None else {}
    if cookieless:
        properties[COOKIELESS_PROPERTY] = True
    if properties:
        check_shape(properties, "properties", limits)
    context = (
        message.context
        if request.context is None
        else merge_contexts(request.context, message.context)
    )
    traits = message.traits
    if traits is None and event_type == "identify" and context is not None:
        traits = context.traits
    if traits:
        check_shape(traits, "traits", limits)
    else:
        traits = {}
    if event_type in ("page", "screen"):
        # Segment keeps the page/screen name beside the properties; keep it with them.
        if message.name and "name" not in properties:
            properties["name"] = message.name
        if message.category and "category" not in properties:
            properties["category"] = message.category

    received_at = request.received_at
    sent_at = message.sentAt if message.sentAt is not None else request.sent_at
    ts = event_time(received_at, message.timestamp, message.originalTimestamp, sent_at)
    check_event_time(
        ts,
        received_at,
        request.future_tolerance,
        "timestamp" if message.timestamp is not None else "originalTimestamp",
    )

    page = context.page if context is not None else None
    url = path = title = referrer = search = None
    if page is not None:
        url, path, title, referrer, search = (
            page.url,
            page.path,
            page.title,
            page.referrer,
            page.search,
        )
    if event_type == "page" and properties:
        # Segment's page properties carry the page itself and win over context.page.
        get = properties.get
        if type(value := get("url")) is str and value:
            url = value
        if type(value := get("path")) is str and value:
            path = value
        if type(value := get("title")) is str and value:
            title = value
        if type(value := get("referrer")) is str and value:
            referrer = value
        if type(value := get("search")) is str and value:
            search = value
    if path is None and url is not None:
        path = parse_page_url(url).path

    device = device_of(context, request.fallback_user_agent)
    campaign = context.campaign if context is not None else None
    if url is None and path is None and referrer is None and campaign is None and not search:
        source = NO_ATTRIBUTION
    else:
        source = attribute(
            url or path,
            search,
            referrer,
            None
            if campaign is None
            else (campaign.source, campaign.medium, campaign.name, campaign.term, campaign.content),
        )
        if has_source_properties(source):
            add_source_properties(properties, source)
    location = context.location if context is not None else None

    event = EventV1(
        event_id=event_id,
        project_id=request.project_id,
        type=event_type,
        name=name,
        ts=ts,
        received_at=received_at,
        distinct_id=distinct_id,
        anonymous_id=anonymous_id,
        user_id=user_id,
        previous_id=previous_id,
        group_id=group_id,
        properties=properties,
        traits=traits,
        url=url,
        path=path,
        title=title,
        referrer=referrer,
        referrer_domain=source.referrer_domain,
        channel=source.channel,
        utm_source=source.utm_source,
        utm_medium=source.utm_medium,
        utm_campaign=source.utm_campaign,
        utm_term=source.utm_term,
        utm_content=source.utm_content,
        browser=device.browser,
        browser_version=device.browser_version,
        os=device.os,
        os_version=device.os_version,
        device_type=device.device_type,
        country=location.country if location is not None else None,
        region=location.region if location is not None else None,
        city=location.city if location is not None else None,
        locale=context.locale if context is not None else None,
        is_bot=device.is_bot,
        non_interactive=is_non_interactive(properties, context),
    )
    collection = request.collection
    if collection is None:
        return event
    # A server SDK forwards its end user's address as context.ip (Segment's convention).
    ip = (valid_ip(context.ip) if context is not None else None) or request.client_ip
    user_agent = (context.userAgent if context is not None else None) or request.fallback_user_agent
    return collection.finish(event, ip, user_agent, analytics_consent(context))


def analytics_consent(context: SegmentContext | None) -> bool:
    """False only when the sender says analytics consent was withheld: `context.consent.
    analytics` (the Strata tracker) or Segment Consent Management's `context.consent.
    categoryPreferences` with an `analytics` category (any letter case) set to false."""
    consent = context.consent if context is not None else None
    if consent is None:
        return True
    if consent.analytics is not None:
        return consent.analytics is not False
    preferences = consent.categoryPreferences
    if preferences:
        for category, allowed in preferences.items():
            if category.lower() == "analytics" and allowed is False:
                return False
    return True


# The analytics events API's eventType values that are not custom events.
_ANALYTICS_API_TYPES = {
    "page_view": ("page", PAGEVIEW),
    "pageview": ("page", PAGEVIEW),
    "screen_view": ("screen", SCREEN),
    "identify": ("identify", IDENTIFY),
}


def _api_time(value: float | datetime | None, field: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return from_epoch_millis(value, field)


def analytics_api_event(event: AnalyticsEvent, request: RequestInfo) -> EventV1:
    """The EventV1 of one analytics events API event. `page_view` becomes "$pageview",
    `screen_view` "$screen", `identify` "$identify"; any other eventType is a custom event of
    that name. Raises ItemRejected, or ItemSkipped when consentFlags.analytics is false and
    the project does not record such events cookieless."""
    limits = request.limits
    consented = event.consentFlags is None or event.consentFlags.analytics
    if not consented and (
        request.collection is None or not request.collection.needs_cookieless_ids
    ):
        raise ItemSkipped("consentFlags.analytics is false: the event is not recorded")
    event_type, name = _ANALYTICS_API_TYPES.get(event.eventType or "", ("track", ""))
    if event_type == "track":
        name = check_event_name(event.eventType, "eventType", limits)
    event_id = _bounded_id(event.eventId, "eventId", limits) or new_event_id()
    user_id = _bounded_id(event.userId, "userId", limits)
    anonymous_id = _bounded_id(event.anonymousId, "anonymousId", limits)
    distinct_id = anonymous_id or user_id
    if distinct_id is None:
        raise ItemRejected("userId or anonymousId is required")

    properties = dict(event.properties) if event.properties else {}
    if properties:
        check_shape(properties, "properties", limits)
    traits = event.traits or {}
    if traits:
        check_shape(traits, "traits", limits)
    app = event.appContext
    if app is not None:
        for key, value in (
            ("$app_version", app.appVersion),
            ("$environment", app.environment),
            ("$feature", app.feature),
        ):
            if value is not None:
                properties.setdefault(key, value)
    if event.sessionId:
        properties.setdefault("$client_session_id", event.sessionId)

    received_at = request.received_at
    ts = event_time(
        received_at,
        _api_time(event.timestamp, "timestamp"),
        None,
        _api_time(event.sentAt, "sentAt"),
    )
    check_event_time(ts, received_at, request.future_tolerance, "timestamp")

    url = path = referrer = None
    if app is not None:
        referrer = app.referrer
        if app.page:
            if app.page.startswith("/"):
                path = app.page
            else:
                url = app.page
                path = parse_page_url(url).path
    if event_type == "page" and properties:
        path = _text(properties.get("path")) or path
        url = _text(properties.get("url")) or url
    title = _text(properties.get("title")) if event_type == "page" else None

    info = event.deviceInfo
    device = parse_user_agent(info.userAgent) if info is not None and info.userAgent else None
    page_or_url = url or path
    source = (
        attribute(page_or_url, None, referrer, None)
        if page_or_url or referrer
        else (NO_ATTRIBUTION)
    )
    if has_source_properties(source):
        add_source_properties(properties, source)
    mapped = EventV1(
        event_id=event_id,
        project_id=request.project_id,
        type=event_type,
        name=name,
        ts=ts,
        received_at=received_at,
        distinct_id=distinct_id,
        anonymous_id=anonymous_id,
        user_id=user_id,
        properties=properties,
        traits=traits,
        url=url,
        path=path,
        title=title,
        referrer=referrer,
        referrer_domain=source.referrer_domain,
        channel=source.channel,
        utm_source=source.utm_source,
        utm_medium=source.utm_medium,
        utm_campaign=source.utm_campaign,
        utm_term=source.utm_term,
        utm_content=source.utm_content,
        browser=(device.browser if device else None) or (info.browser if info else None),
        browser_version=device.browser_version if device else None,
        os=(device.os if device else None) or (info.operatingSystem if info else None),
        os_version=device.os_version if device else None,
        device_type=(device.device_type if device else None) or (info.deviceType if info else None),
        locale=info.language if info is not None else None,
        is_bot=device.is_bot if device is not None else False,
        non_interactive=is_non_interactive(properties, None),
    )
    if request.collection is None:
        return mapped
    user_agent = info.userAgent if info is not None else None
    return request.collection.finish(
        mapped, request.client_ip, user_agent or request.fallback_user_agent, consented
    )
