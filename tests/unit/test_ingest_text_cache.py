"""The per-event lookup caches stay bounded in memory: a long input is answered, not kept."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from services.ingest.enrichment import attribute
from services.ingest.stages.draft import RequestInfo
from services.ingest.stages.path import item_event
from services.ingest.text_cache import MAX_CACHED_CHARS
from services.ingest.traffic_sources import parse_page_url
from services.ingest.user_agents import parse_user_agent
from services.ingest.validation import EventLimits

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


def test_a_long_user_agent_is_parsed_but_not_kept() -> None:
    parse_user_agent.cache_clear()
    padded = FIREFOX + " " + "x" * MAX_CACHED_CHARS
    for _ in range(3):
        assert parse_user_agent(padded).browser == "Firefox"
    assert parse_user_agent.cache_info().currsize == 0
    for _ in range(3):
        assert parse_user_agent(FIREFOX).browser == "Firefox"
    assert (parse_user_agent.cache_info().currsize, parse_user_agent.cache_info().hits) == (1, 2)


def test_long_urls_are_attributed_but_not_kept() -> None:
    attribute.cache_clear()
    parse_page_url.cache_clear()
    url = "https://shop.example/?utm_source=news&pad=" + "p" * MAX_CACHED_CHARS
    for _ in range(2):
        source = attribute(url, None, "https://www.google.com/", None)
        assert (source.utm_source, source.referrer_domain) == ("news", "google.com")
    assert attribute.cache_info().currsize == 0
    assert parse_page_url.cache_info().currsize == 0
    # The text in a campaign tuple counts too.
    campaign = ("s" * MAX_CACHED_CHARS, "cpc", None, None, None)
    assert attribute("/p", None, None, campaign).utm_medium == "cpc"
    assert attribute.cache_info().currsize == 0
    assert attribute("/p", None, None, ("news", "cpc", None, None, None)).utm_medium == "cpc"
    assert attribute.cache_info().currsize == 1


def test_the_event_path_takes_long_urls_from_the_caches_without_keeping_them() -> None:
    """validate and enrich call the caches without their wrapper (`raw_lookup`): a page URL
    or user agent too long to keep still gives the event its path, attribution and device,
    and is not kept."""
    attribute.cache_clear()
    parse_page_url.cache_clear()
    parse_user_agent.cache_clear()
    request = RequestInfo(
        project_id="acme", received_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC), limits=EventLimits()
    )
    long_url = "https://shop.example/pricing?utm_source=news&pad=" + "p" * MAX_CACHED_CHARS
    long_agent = FIREFOX + " " + "x" * MAX_CACHED_CHARS
    short = ("https://shop.example/pricing?utm_source=news", FIREFOX)
    for url, agent in ((long_url, long_agent), (long_url, long_agent), short):
        item = {
            "type": "page",
            "messageId": "m-1",
            "anonymousId": "a-1",
            "context": {
                "userAgent": agent,
                "page": {"url": url, "referrer": "https://www.google.com/"},
            },
        }
        event = item_event(msgspec.json.encode(item), None, request)
        assert (event.path, event.utm_source, event.referrer_domain, event.browser) == (
            "/pricing",
            "news",
            "google.com",
            "Firefox",
        )
        assert event.channel == attribute(url, None, "https://www.google.com/", None).channel
    # Only the short URL and agent were kept, by each cache.
    assert attribute.cache_info().currsize == 1
    assert parse_page_url.cache_info().currsize == 1
    assert parse_user_agent.cache_info().currsize == 1
