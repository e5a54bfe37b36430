"""Channel rules added for display, affiliate and social click ids, and the search engine and
social network names of referrers as the maintained referrer data set gives them."""

from __future__ import annotations

import pytest

from services.ingest.enrichment import attribute
from services.ingest.traffic_sources import (
    CHANNELS,
    classify_channel,
    parse_page_url,
    search_engine,
    social_network,
)
from services.ingest.user_agents import parse_user_agent


@pytest.mark.parametrize(
    ("referrer_host", "source", "medium", "click_id", "channel"),
    [
        (None, "partner-site", "affiliate", None, "affiliate"),
        (None, "awin", "Affiliates", None, "affiliate"),
        (None, "gdn", "display", None, "display"),
        (None, "adroll", "banner", None, "display"),
        (None, "dv360", "cpm", None, "display"),
        (None, "facebook", "cpm", None, "paid_social"),
        (None, "facebook", "display", None, "paid_social"),
        (None, None, None, "dclid", "display"),
        (None, None, None, "rdt_cid", "paid_social"),
        (None, None, None, "li_fat_id", "paid_social"),
        (None, None, None, "twclid", "paid_social"),
        (None, None, None, "wbraid", "paid_search"),
        # fbclid rides on every Facebook link: social, and paid only when the tags say so.
        (None, None, None, "fbclid", "organic_social"),
        ("l.facebook.com", None, None, "fbclid", "organic_social"),
        (None, "fb", "paid", "fbclid", "paid_social"),
        (None, None, "cpc", "fbclid", "paid_social"),
        (None, "bing", "cpc", None, "paid_search"),
        (None, "newsletter", "affiliate", None, "email"),  # e-mail is decided first
        ("outlook.live.com", None, None, None, "email"),
        ("search.brave.com", None, None, None, "organic_search"),
        ("www.ecosia.org", None, None, None, "organic_search"),
        ("unknown-engine.example", None, None, None, "referral"),
        ("m.youtube.com", None, None, None, "organic_social"),
        (None, None, "referral", None, "referral"),
    ],
)
def test_channel_rules(
    referrer_host: str | None,
    source: str | None,
    medium: str | None,
    click_id: str | None,
    channel: str,
) -> None:
    assert classify_channel(referrer_host, source, medium, click_id) == channel
    assert channel in CHANNELS


@pytest.mark.parametrize(
    ("host", "engine"),
    [
        ("google.com", "Google"),
        ("google.co.uk", "Google"),
        ("com.google.android.googlequicksearchbox", "Google"),
        ("bing.com", "Bing"),
        ("search.yahoo.co.jp", "Yahoo!"),
        ("duckduckgo.com", "DuckDuckGo"),
        ("yandex.ru", "Yandex"),
        ("search.brave.com", "Brave"),
        ("maps.google.com", None),  # Google, but not search
        ("mail.google.com", None),
        ("example.com", None),
    ],
)
def test_search_engine_names(host: str, engine: str | None) -> None:
    assert search_engine(host) == engine


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("l.facebook.com", "Facebook"),
        ("m.facebook.com", "Facebook"),
        ("t.co", "Twitter"),
        ("mobile.twitter.com", "Twitter"),
        ("lnkd.in", "LinkedIn"),
        ("linkedin.com", "LinkedIn"),
        ("old.reddit.com", "Reddit"),
        ("youtu.be", "Youtube"),
        ("news.ycombinator.com", "Hacker News"),
        ("instagram.com", "Instagram"),
        ("example.com", None),
    ],
)
def test_social_network_names(host: str, network: str | None) -> None:
    assert social_network(host) == network


def test_a_referrer_path_picks_the_data_sets_entry() -> None:
    # The data set keys some sites by host and path; the longest match wins, and a host
    # without an entry of its own is looked up without its leftmost labels.
    assert search_engine("www.google.co.uk") == "Google"
    assert search_engine("images.google.com", "/imgres") is not None
    assert social_network("l.facebook.com", "/l.php") == "Facebook"


def test_utm_sources_name_search_engines_and_networks_of_the_data_set() -> None:
    assert classify_channel(None, "Google", None, None) == "organic_search"
    assert classify_channel(None, "duckduckgo.com", None, None) == "organic_search"
    assert classify_channel(None, "Yahoo", None, None) == "organic_search"
    assert classify_channel(None, "LinkedIn", None, None) == "organic_social"
    assert classify_channel(None, "google", "cpc", None) == "paid_search"  # Google+ is not Google


def test_attribution_names_the_referrers_engine_and_network() -> None:
    searched = attribute("https://shop.example/", None, "https://www.google.de/", None)
    assert (searched.channel, searched.search_engine, searched.social_network) == (
        "organic_search",
        "Google",
        None,
    )
    shared = attribute("https://shop.example/?fbclid=IwAR0", None, "https://l.facebook.com/", None)
    assert (shared.channel, shared.search_engine, shared.social_network) == (
        "organic_social",
        None,
        "Facebook",
    )
    internal = attribute("https://shop.example/b", None, "https://shop.example/a", None)
    assert (internal.search_engine, internal.social_network) == (None, None)


def test_click_ids_are_read_from_the_page_url() -> None:
    assert parse_page_url("https://shop.example/?fbclid=x").click_id == "fbclid"
    assert parse_page_url("https://shop.example/?dclid=x&gclid=y").click_id == "dclid"
    assert parse_page_url("https://shop.example/?rdt_cid=1").click_id == "rdt_cid"


@pytest.mark.parametrize(
    ("user_agent", "is_bot"),
    [
        ("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", True),
        # Only the maintained crawler list knows these (no "bot", "crawl" or "spider").
        ("Mediapartners-Google", True),
        ("GoogleOther", True),
        ("Mozilla/4.5 (compatible; HTTrack 3.0x; Windows 98)", True),
        ("PostRank/2.0 (postrank.com)", True),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
            " Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
            False,
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko)"
            " SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
            False,
        ),
    ],
)
def test_bot_user_agents(user_agent: str, is_bot: bool) -> None:
    assert parse_user_agent(user_agent).is_bot is is_bot
