"""Stage 2, validate: a decoded payload -> a `Draft` of its event, or ItemRejected naming the
offending field (ItemSkipped when the events API says consent was withheld and the project does
not record such events). Everything taken from the sender is checked here: the type, ids and
name, the shape of properties and traits; the page fields are resolved, and the times, user
agent, address and consent that the later stages read are put on the draft.

Segment calls map to reserved names: page -> "$pageview", screen -> "$screen",
identify -> "$identify", alias -> "$alias", group -> "$group"; track keeps its `event` name.
The device key `distinct_id` is the anonymousId when present, else the userId.
"""

from __future__ import annotations

import uuid
from typing import Any

from libs.common.schemas.events_v1 import (
    ALIAS,
    EVENT_TYPES,
    GROUP,
    IDENTIFY,
    PAGEVIEW,
    SCREEN,
)
from services.ingest.analytics_api_payloads import AnalyticsEvent
from services.ingest.networks import valid_ip
from services.ingest.privacy import COOKIELESS_PROPERTY
from services.ingest.segment_payloads import SegmentContext, SegmentMessage, merge_contexts
from services.ingest.stages.draft import Draft, ItemSkipped, RequestInfo
from services.ingest.text_cache import UncachedResult, raw_lookup
from services.ingest.traffic_sources import parse_page_url
from services.ingest.validation import (
    EventLimits,
    ItemRejected,
    check_event_name,
    check_shape,
    identifier,
)

_RESERVED_NAMES = {
    "page": PAGEVIEW,
    "screen": SCREEN,
    "identify": IDENTIFY,
    "alias": ALIAS,
    "group": GROUP,
}
_TYPES_TEXT = ", ".join(EVENT_TYPES)
# `parse_page_url`'s cache without its Python wrapper (a page event's url without a path).
_parse_page_url = raw_lookup(parse_page_url)

# The analytics events API's eventType values that are not custom events.
_ANALYTICS_API_TYPES = {
    "page_view": ("page", PAGEVIEW),
    "pageview": ("page", PAGEVIEW),
    "screen_view": ("screen", SCREEN),
    "identify": ("identify", IDENTIFY),
}


def validate(
    message: SegmentMessage | AnalyticsEvent, route_type: str | None, request: RequestInfo
) -> Draft:
    """The draft of one event. A Segment call's type is the route's (`/v1/track`...), else
    (`route_type` None, as for /v1/batch) the item's own `type`; the events API's items
    carry their `eventType` and ignore `route_type`."""
    if type(message) is AnalyticsEvent:
        return _analytics_api(message, request)
    # A Segment call (nearly every event): checked here rather than in a function of its own,
    # one call fewer per event.
    assert type(message) is SegmentMessage
    event_type = route_type or message.type
    limits = request.limits
    if event_type is None:
        raise ItemRejected(f"type is required (one of {_TYPES_TEXT})")
    if event_type not in _RESERVED_NAMES and event_type != "track":
        raise ItemRejected(f"type: {event_type!r} is not one of {_TYPES_TEXT}")

    # The usual ids (short, non-blank strings) pass without a call, as `_bounded_id`'s fast
    # path; an absent id skips it: most events carry only one of userId and anonymousId.
    max_chars = limits.max_name_chars
    event_id = message.messageId
    if not (type(event_id) is str and 0 < len(event_id) <= max_chars and not event_id[0].isspace()):
        event_id = _bounded_id(event_id, "messageId", limits) or _new_event_id()
    user_id = message.userId
    if user_id is not None:
        user_id = _bounded_id(user_id, "userId", limits)
    anonymous_id = message.anonymousId
    if anonymous_id is not None and not (
        type(anonymous_id) is str
        and 0 < len(anonymous_id) <= max_chars
        and not anonymous_id[0].isspace()
    ):
        anonymous_id = _bounded_id(anonymous_id, "anonymousId", limits)
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

    timestamp = message.timestamp
    sent_at = message.sentAt
    draft = Draft(
        event_id,
        request.project_id,
        event_type,
        name,
        request.received_at,
        distinct_id,
        anonymous_id,
        user_id,
        properties,
        traits,
        previous_id,
        group_id,
        context,
        timestamp,
        message.originalTimestamp,
        sent_at if sent_at is not None else request.sent_at,
    )
    if timestamp is None:
        draft.time_field = "originalTimestamp"
    if context is not None:
        _page_fields(draft, context, event_type, properties)
        draft.locale = context.locale
        location = context.location
        if location is not None:
            draft.country, draft.region, draft.city = (
                location.country,
                location.region,
                location.city,
            )
        if context.consent is not None:
            draft.consented = _segment_consent(context)
        draft.user_agent = context.userAgent or request.fallback_user_agent
    else:
        if event_type == "page" and properties:
            _page_fields(draft, None, event_type, properties)
        draft.user_agent = request.fallback_user_agent
    if request.collection is not None:
        # A server SDK forwards its end user's address as context.ip (Segment's convention).
        sent_ip = context.ip if context is not None else None
        draft.address = (valid_ip(sent_ip) if sent_ip else None) or request.client_ip
    return draft


def _new_event_id() -> str:
    """An id for an event sent without messageId (such events cannot be deduplicated)."""
    return str(uuid.uuid4())


def _bounded_id(value: str | int | None, field: str, limits: EventLimits) -> str | None:
    # Fast paths: an absent id, or the usual short non-blank string.
    if value is None:
        return None
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


def _page_fields(
    draft: Draft, context: SegmentContext | None, event_type: str, properties: dict[str, Any]
) -> None:
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
        try:
            path = _parse_page_url(url).path
        except UncachedResult as uncached:  # too long to keep: parsed, not cached
            path = uncached.result.path
    draft.url, draft.path, draft.title, draft.referrer, draft.search = (
        url,
        path,
        title,
        referrer,
        search,
    )


def _segment_consent(context: SegmentContext) -> bool:
    """False only when the sender says analytics consent was withheld: `context.consent.
    analytics` (the Strata tracker) or Segment Consent Management's `context.consent.
    categoryPreferences` with an `analytics` category (any letter case) set to false."""
    consent = context.consent
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


def _analytics_api(event: AnalyticsEvent, request: RequestInfo) -> Draft:
    """`page_view` becomes "$pageview", `screen_view` "$screen", `identify` "$identify"; any
    other eventType is a custom event of that name."""
    limits = request.limits
    consented = event.consentFlags is None or event.consentFlags.analytics
    if not consented and (
        request.collection is None or not request.collection.needs_cookieless_ids
    ):
        raise ItemSkipped("consentFlags.analytics is false: the event is not recorded")
    event_type, name = _ANALYTICS_API_TYPES.get(event.eventType or "", ("track", ""))
    if event_type == "track":
        name = check_event_name(event.eventType, "eventType", limits)
    event_id = _bounded_id(event.eventId, "eventId", limits) or _new_event_id()
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

    draft = Draft(
        event_id,
        request.project_id,
        event_type,
        name,
        request.received_at,
        distinct_id,
        anonymous_id,
        user_id,
        properties,
        traits,
    )
    draft.events_api = True
    draft.timestamp = event.timestamp
    draft.sent_at = event.sentAt
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
    draft.url, draft.path, draft.referrer = url, path, referrer
    draft.title = _text(properties.get("title")) if event_type == "page" else None
    info = event.deviceInfo
    draft.device_info = info
    draft.locale = info.language if info is not None else None
    draft.consented = consented
    draft.user_agent = (info.userAgent if info is not None else None) or request.fallback_user_agent
    if request.collection is not None:
        draft.address = request.client_ip
    return draft
