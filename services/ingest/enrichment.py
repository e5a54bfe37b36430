"""Enrichment of an event from its context: device (user agent, or a mobile SDK's os/device),
acquisition (referrer, search engine, social network, UTM tags, click ids, channel) and
interactivity (docs/enrichment.md). Geo and bot ranges from the client IP are in `collection`.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import urlsplit

from services.ingest.referrer_database import default_database
from services.ingest.segment_payloads import SegmentContext
from services.ingest.text_cache import text_cache
from services.ingest.traffic_sources import (
    classify_channel,
    parse_page_url,
    query_tags,
    referrer_domain,
    search_engine,
    social_network,
)
from services.ingest.user_agents import UNKNOWN_AGENT, UserAgentInfo, parse_user_agent


class Attribution(NamedTuple):
    referrer_domain: str | None
    channel: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    search_engine: str | None = None  # the referrer's search engine (Google, Bing, ...)
    social_network: str | None = None  # the referrer's or source's network (Facebook, ...)
    click_id: str | None = None  # the name of the page URL's ad click id (gclid, fbclid, ...)


NO_ATTRIBUTION = Attribution(None, None, None, None, None, None, None)

# Properties that carry the referrer's search engine and social network and the click id's
# name (EventV1 has no columns for them; `$`-names never collide with a sender's properties).
SEARCH_ENGINE_PROPERTY = "$search_engine"
SOCIAL_NETWORK_PROPERTY = "$social_network"
CLICK_ID_PROPERTY = "$click_id"
SOURCE_PROPERTIES = (SEARCH_ENGINE_PROPERTY, SOCIAL_NETWORK_PROPERTY, CLICK_ID_PROPERTY)


# A common browser agent: parsing it loads every user agent and crawler pattern set.
_SAMPLE_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36"
)


def load_rule_data() -> None:
    """Load the referrer data set and the user agent and crawler patterns now rather than on
    the first event: loading takes a CPU-second or so, which would otherwise stall the event
    loop (every request in flight) on a new process's first request."""
    default_database()
    parse_user_agent(_SAMPLE_USER_AGENT)


def add_source_properties(properties: dict[str, Any], source: Attribution) -> None:
    """Record the search engine, social network and click id of an attributed event in its
    properties."""
    if source.search_engine is not None:
        properties.setdefault(SEARCH_ENGINE_PROPERTY, source.search_engine)
    if source.social_network is not None:
        properties.setdefault(SOCIAL_NETWORK_PROPERTY, source.social_network)
    if source.click_id is not None:
        properties.setdefault(CLICK_ID_PROPERTY, source.click_id)


def same_site(a: str, b: str) -> bool:
    """Whether two hosts (lower case, without `www.`) are one site: equal, or one a subdomain
    of the other (`shop.example.com` and `example.com`)."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


@text_cache(maxsize=32768)
def attribute(
    url: str | None,
    search: str | None,
    referrer: str | None,
    campaign: tuple[str | None, str | None, str | None, str | None, str | None] | None,
) -> Attribution:
    """Referrer domain, UTM tags and channel of an event.

    `campaign` is (source, medium, name, term, content) from the SDK's `context.campaign`;
    without it the tags are read from the page URL's query (or `context.page.search`).
    The channel is None when the event carries no acquisition signal: no page, referrer or
    tag (a server-side call), or a referrer on the page's own site (the page's host or a
    subdomain relation of it) with no tags: navigation inside the site says nothing about how
    the visitor arrived, so such a referrer is not kept as the referrer domain either.
    """
    page = parse_page_url(url) if url else None
    ref_domain = referrer_domain(referrer) if referrer else None
    if campaign is not None and any(campaign):
        source, medium, name, term, content = campaign
        click_id = page.click_id if page is not None else None
    elif page is not None and (
        page.utm_source or page.utm_medium or page.utm_campaign or page.click_id
    ):
        source, medium, name, term, content = (
            page.utm_source,
            page.utm_medium,
            page.utm_campaign,
            page.utm_term,
            page.utm_content,
        )
        click_id = page.click_id
    elif search:
        source, medium, name, term, content, click_id = query_tags(search)
    else:
        source = medium = name = term = content = click_id = None
    tagged = bool(source or medium or name or click_id)
    internal = (
        ref_domain is not None
        and page is not None
        and page.host is not None
        and same_site(ref_domain, page.host)
    )
    if tagged:
        channel: str | None = classify_channel(
            None if internal else ref_domain, source, medium, click_id
        )
    elif internal or (page is None and ref_domain is None):
        channel = None
    else:
        channel = classify_channel(ref_domain, None, None, None)
    engine = network = None
    if ref_domain is not None and not internal:
        path = _referrer_path(referrer)
        engine = search_engine(ref_domain, path)
        network = social_network(ref_domain, path)
    return Attribution(
        None if internal else ref_domain,
        channel,
        source,
        medium,
        name,
        term,
        content,
        engine,
        network,
        click_id,
    )


def _referrer_path(referrer: str | None) -> str:
    try:
        return urlsplit(referrer).path if referrer else ""
    except ValueError:
        return ""


_MOBILE_APP_OS = {"ios": "iOS", "ipados": "iOS", "android": "Android"}


def device_of(context: SegmentContext | None, fallback_user_agent: str | None) -> UserAgentInfo:
    """Browser/OS/device from the user agent; for mobile SDKs (no user agent) from
    `context.os` and `context.device`."""
    user_agent = (context.userAgent if context is not None else None) or fallback_user_agent
    if user_agent:
        return parse_user_agent(user_agent)
    if context is None or (context.os is None and context.device is None):
        return UNKNOWN_AGENT
    os_name = context.os.name if context.os is not None else None
    os_version = context.os.version if context.os is not None else None
    device_type: str | None = None
    if context.device is not None:
        model = (context.device.model or "").lower()
        kind = (context.device.type or os_name or "").lower()
        if "ipad" in model or "tablet" in model:
            device_type = "tablet"
        elif kind in _MOBILE_APP_OS:
            device_type = "mobile"
            os_name = os_name or _MOBILE_APP_OS[kind]
    return UserAgentInfo(None, None, os_name, os_version, device_type, False)


def _truthy_flag(value: Any) -> bool:
    return value is not None and (value is True or value == 1 or value == "true")


def is_non_interactive(properties: dict[str, Any], context: SegmentContext | None) -> bool:
    """Events that keep a session alive without ending its bounce (scroll depth, heartbeats):
    `properties.$non_interactive`, or Google Analytics' `nonInteraction` / `non_interaction`
    in the properties or the context."""
    # Most events carry none of the flags: three key tests rule them out without a call.
    if properties and (
        "$non_interactive" in properties
        or "nonInteraction" in properties
        or "non_interaction" in properties
    ):
        get = properties.get
        if (
            _truthy_flag(get("$non_interactive"))
            or _truthy_flag(get("nonInteraction"))
            or _truthy_flag(get("non_interaction"))
        ):
            return True
    if context is not None and (
        context.nonInteraction is not None or context.non_interaction is not None
    ):
        return _truthy_flag(context.nonInteraction) or _truthy_flag(context.non_interaction)
    return False
