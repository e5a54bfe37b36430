"""Enrichment: user agents, referrers, UTM tags, channels and interactivity."""

from __future__ import annotations

import pytest

from services.ingest.enrichment import attribute, device_of, is_non_interactive
from services.ingest.segment_payloads import SegmentContext, SegmentDevice, SegmentOs
from services.ingest.traffic_sources import classify_channel, parse_page_url, referrer_domain
from services.ingest.user_agents import parse_user_agent

UA = {
    "chrome_windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like"
    " Gecko) Chrome/120.0.0.0 Safari/537.36",
    "safari_iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "safari_ipad": "Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
    " like Gecko) Version/16.0 Mobile/15E148 Safari/604.1",
    "chrome_android_phone": "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like"
    " Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
    "chrome_android_tablet": "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML,"
    " like Gecko) Chrome/120.0 Safari/537.36",
    "firefox_linux": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot_smartphone": "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P)"
    " AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.199 Mobile Safari/537.36"
    " (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "headless": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " HeadlessChrome/120.0.0.0 Safari/537.36",
    "curl": "curl/8.4.0",
    "python_requests": "python-requests/2.31.0",
    "cubot_phone": "Mozilla/5.0 (Linux; Android 11; CUBOT X30) AppleWebKit/537.36 (KHTML, like"
    " Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
}


@pytest.mark.parametrize(
    ("agent", "browser", "browser_version", "os", "device_type", "is_bot"),
    [
        ("chrome_windows", "Chrome", "120.0", "Windows", "desktop", False),
        ("safari_iphone", "Mobile Safari", "17.1", "iOS", "mobile", False),
        ("safari_ipad", "Mobile Safari", "16.0", "iOS", "tablet", False),
        ("chrome_android_phone", "Chrome Mobile", "120.0", "Android", "mobile", False),
        ("chrome_android_tablet", "Chrome", "120.0", "Android", "tablet", False),
        ("firefox_linux", "Firefox", "120.0", "Linux", "desktop", False),
        ("googlebot", "Googlebot", "2.1", None, None, True),
        ("googlebot_smartphone", "Googlebot", "2.1", "Android", "mobile", True),
        ("headless", "HeadlessChrome", "120.0", "Linux", "desktop", True),
        ("curl", "curl", "8.4", None, None, True),
        ("python_requests", "Python Requests", "2.31", None, None, True),
        ("cubot_phone", "Chrome Mobile", "120.0", "Android", "mobile", False),
    ],
)
def test_user_agent_parsing(
    agent: str,
    browser: str,
    browser_version: str,
    os: str | None,
    device_type: str | None,
    is_bot: bool,
) -> None:
    info = parse_user_agent(UA[agent])
    assert (info.browser, info.browser_version, info.os, info.device_type, info.is_bot) == (
        browser,
        browser_version,
        os,
        device_type,
        is_bot,
    )


def test_user_agents_are_parsed_once() -> None:
    parse_user_agent.cache_clear()
    for _ in range(3):
        parse_user_agent(UA["chrome_windows"])
    assert parse_user_agent.cache_info().hits == 2


def test_mobile_sdks_without_user_agent_use_context_os_and_device() -> None:
    ipad = SegmentContext(os=SegmentOs("iPadOS", "17.2"), device=SegmentDevice("ios", "iPad13,4"))
    android = SegmentContext(
        os=SegmentOs("Android", "14"), device=SegmentDevice("android", "Pixel 8")
    )
    assert device_of(ipad, None)[2:5] == ("iPadOS", "17.2", "tablet")
    assert device_of(android, None)[2:5] == ("Android", "14", "mobile")
    assert device_of(None, None).device_type is None
    # The payload's user agent wins over the HTTP fallback.
    with_agent = SegmentContext(userAgent=UA["curl"])
    assert device_of(with_agent, UA["chrome_windows"]).is_bot
    assert device_of(None, UA["chrome_windows"]).browser == "Chrome"


@pytest.mark.parametrize(
    ("referrer", "domain"),
    [
        ("https://www.google.co.uk/search?q=x", "google.co.uk"),
        ("https://News.YCombinator.com/item?id=1", "news.ycombinator.com"),
        ("android-app://com.google.android.gm/", "com.google.android.gm"),
        ("not a url", None),
        ("http://[::1", None),
    ],
)
def test_referrer_domain(referrer: str, domain: str | None) -> None:
    assert referrer_domain(referrer) == domain


def test_page_url_parts_and_utm_tags() -> None:
    page = parse_page_url(
        "https://www.shop.example/p/1?UTM_Source=newsletter&utm_medium=email&utm_campaign=may"
        "&utm_term=shoes&utm_content=hero&gclid=abc"
    )
    assert page == ("shop.example", "/p/1", "newsletter", "email", "may", "shoes", "hero", "gclid")
    assert parse_page_url("https://shop.example").path == "/"
    assert parse_page_url("/only/a/path").path == "/only/a/path"


@pytest.mark.parametrize(
    ("referrer_host", "source", "medium", "click_id", "channel"),
    [
        (None, None, None, None, "direct"),
        ("google.com", None, None, None, "organic_search"),
        ("google.de", None, None, None, "organic_search"),
        ("bing.com", None, None, None, "organic_search"),
        ("duckduckgo.com", None, None, None, "organic_search"),
        ("com.google.android.googlequicksearchbox", None, None, None, "organic_search"),
        ("drive.google.com", None, None, None, "referral"),  # a known non-search Google page
        ("mail.google.com", None, None, None, "email"),
        ("com.google.android.gm", None, None, None, "email"),
        ("l.facebook.com", None, None, None, "organic_social"),
        ("t.co", None, None, None, "organic_social"),
        ("news.ycombinator.com", None, None, None, "organic_social"),
        ("linkedin.com", None, None, None, "organic_social"),
        ("blog.example.org", None, None, None, "referral"),
        (None, "google", "cpc", None, "paid_search"),
        (None, "facebook", "cpc", None, "paid_social"),
        (None, "linkedin", "paid_social", None, "paid_social"),
        ("instagram.com", None, "paid", None, "paid_social"),
        (None, None, None, "gclid", "paid_search"),
        ("google.com", None, None, "msclkid", "paid_search"),
        (None, None, None, "ttclid", "paid_social"),
        (None, "newsletter", "email", None, "email"),
        (None, "mailchimp", None, None, "email"),
        (None, "twitter", "social", None, "organic_social"),
        (None, "fb", None, None, "organic_social"),
        (None, "google", "organic", None, "organic_search"),
        (None, "google", None, None, "organic_search"),
        (None, "partner-site", "affiliate", None, "affiliate"),
        (None, None, None, None, "direct"),
    ],
)
def test_channel_classification(
    referrer_host: str | None,
    source: str | None,
    medium: str | None,
    click_id: str | None,
    channel: str,
) -> None:
    assert classify_channel(referrer_host, source, medium, click_id) == channel


def test_attribution_prefers_context_campaign_over_the_url() -> None:
    result = attribute(
        "https://shop.example/?utm_source=url&utm_medium=cpc",
        None,
        "https://www.bing.com/",
        ("newsletter", "email", "may", None, None),
    )
    assert (result.utm_source, result.utm_medium, result.utm_campaign) == (
        "newsletter",
        "email",
        "may",
    )
    assert (result.referrer_domain, result.channel) == ("bing.com", "email")


def test_attribution_reads_tags_from_context_page_search() -> None:
    result = attribute("/landing", "?utm_source=google&utm_medium=cpc", None, None)
    assert (result.utm_source, result.channel) == ("google", "paid_search")


def test_navigation_inside_the_site_carries_no_channel() -> None:
    internal = attribute("https://shop.example/b", None, "https://www.shop.example/a", None)
    assert (internal.referrer_domain, internal.channel) == (None, None)  # not a referrer
    # A subdomain of the site, or the site from a subdomain, is the site too.
    for page, referrer in (
        ("https://shop.example/b", "https://blog.shop.example/post"),
        ("https://app.shop.example/", "https://shop.example/pricing"),
    ):
        assert attribute(page, None, referrer, None)[:2] == (None, None)
    # ...unless the link was tagged.
    tagged = attribute(
        "https://shop.example/b?utm_source=banner", None, "https://shop.example/a", None
    )
    assert tagged.channel == "referral"
    assert attribute("https://shop.example/", None, None, None).channel == "direct"


@pytest.mark.parametrize(
    ("properties", "context", "expected"),
    [
        ({}, None, False),
        ({"$non_interactive": True}, None, True),
        ({"nonInteraction": 1}, None, True),
        ({"non_interaction": "true"}, None, True),
        ({"$non_interactive": False}, None, False),
        ({}, SegmentContext(nonInteraction=True), True),
        ({}, SegmentContext(non_interaction=1), True),
        ({"nonInteraction": 0}, SegmentContext(), False),
    ],
)
def test_non_interactive_flags(
    properties: dict[str, object], context: SegmentContext | None, expected: bool
) -> None:
    assert is_non_interactive(properties, context) is expected
