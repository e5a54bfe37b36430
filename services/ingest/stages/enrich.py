"""Stage 4, enrich: what ingest adds to an event from its context and the client address:
device (user agent, or a mobile SDK's os/device), acquisition (referrer, search engine, social
network, UTM tags, click ids, channel), interactivity, geo and bot ranges (docs/enrichment.md).
The rules are in `services.ingest.enrichment`; what repeats across events (user agents, page
URLs, referrers, sources, addresses) is looked up in bounded LRU caches there and in `geo` and
`networks`."""

from __future__ import annotations

from services.ingest.enrichment import (
    NO_ATTRIBUTION,
    add_source_properties,
    attribute,
    device_of,
    is_non_interactive,
)
from services.ingest.stages.draft import Draft, RequestInfo
from services.ingest.text_cache import UncachedResult, raw_lookup
from services.ingest.user_agents import UNKNOWN_AGENT, parse_user_agent

# The caches of `attribute` and `parse_user_agent` without their Python wrapper: called per
# event (an agent when it differs from the request's previous one), nearly always a hit.
_attribute = raw_lookup(attribute)
_parse_user_agent = raw_lookup(parse_user_agent)


def enrich(draft: Draft, request: RequestInfo) -> None:
    """Fill in the draft's device, source, interactivity, geo and bot columns."""
    properties = draft.properties
    context = draft.context
    url, path, referrer, search = draft.url, draft.path, draft.referrer, draft.search
    if draft.events_api:
        info = draft.device_info
        user_agent = info.userAgent if info is not None else None
        device = parse_user_agent(user_agent) if user_agent else UNKNOWN_AGENT
        draft.browser = device.browser or (info.browser if info is not None else None)
        draft.os = device.os or (info.operatingSystem if info is not None else None)
        draft.device_type = device.device_type or (info.deviceType if info is not None else None)
        draft.browser_version, draft.os_version = device.browser_version, device.os_version
        draft.is_bot = device.is_bot
        page_or_url = url or path
        source = (
            attribute(page_or_url, None, referrer, None)
            if page_or_url or referrer
            else NO_ATTRIBUTION
        )
    else:
        # A request's events nearly always share one user agent: it is looked up once.
        user_agent = context.userAgent if context is not None else None
        if user_agent:
            if user_agent == request.last_user_agent:
                device = request.last_device
            else:
                # What device_of does with an agent, through the cache without its wrapper.
                try:
                    device = _parse_user_agent(user_agent)
                except UncachedResult as uncached:  # too long to keep: parsed, not cached
                    device = uncached.result
                request.last_user_agent, request.last_device = user_agent, device
        else:
            device = device_of(context, request.fallback_user_agent)
        # One unpacking of the (browser, browser_version, os, os_version, device_type, is_bot)
        # tuple rather than six field reads.
        (
            draft.browser,
            draft.browser_version,
            draft.os,
            draft.os_version,
            draft.device_type,
            draft.is_bot,
        ) = device
        campaign = context.campaign if context is not None else None
        if url is None and path is None and referrer is None and campaign is None and not search:
            source = NO_ATTRIBUTION
        else:
            tags = (
                None
                if campaign is None
                else (
                    campaign.source,
                    campaign.medium,
                    campaign.name,
                    campaign.term,
                    campaign.content,
                )
            )
            try:
                source = _attribute(url or path, search, referrer, tags)
            except UncachedResult as uncached:  # too long to keep: computed, not cached
                source = uncached.result
    if source is not NO_ATTRIBUTION:
        (
            draft.referrer_domain,
            draft.channel,
            draft.utm_source,
            draft.utm_medium,
            draft.utm_campaign,
            draft.utm_term,
            draft.utm_content,
            engine,
            network,
            click_id,
        ) = source
        if engine is not None or network is not None or click_id is not None:
            add_source_properties(properties, source)
    # Most events carry none of the flags is_non_interactive reads: ruled out without a call.
    if (
        properties
        and (
            "$non_interactive" in properties
            or "nonInteraction" in properties
            or "non_interaction" in properties
        )
    ) or (
        context is not None
        and (context.nonInteraction is not None or context.non_interaction is not None)
    ):
        draft.non_interactive = is_non_interactive(properties, context)

    address = draft.address
    collection = request.collection
    if address is None or collection is None:
        return
    geo = collection.geo
    if geo is not None and draft.country is None:
        place = geo.locate(address)
        if place.country is not None:
            draft.country, draft.region, draft.city = place
    bot_networks = collection.bot_networks
    if not draft.is_bot and bot_networks is not None and bot_networks.contains(address):
        draft.is_bot = True
