"""User agent -> browser, OS, device type and bot flag.

Parsing uses ua-parser's maintained uap-core regexes. An agent is a bot when uap-core's device
family is "Spider", when it matches the maintained crawler-user-agents pattern list (about 1,500
crawlers, scrapers and monitors), or when it matches AUTOMATED_CLIENT below (headless browsers
and HTTP libraries). A full parse costs about a millisecond, so results are cached per distinct
user agent: real traffic repeats a few thousand agents, so nearly every event is a cache hit.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from crawleruseragents import is_crawler
from ua_parser import parse

from services.ingest.text_cache import text_cache

# Automated clients uap-core does not call "Spider": headless and test browsers, uptime
# probes, link unfurlers and plain HTTP libraries. Matched once per distinct user agent.
AUTOMATED_CLIENT = re.compile(
    r"(?<!cu)bot\b|bot/|crawl|spider|slurp|scrape|headless|phantomjs|puppeteer|playwright|selenium"
    r"|webdriver|lighthouse|pagespeed|pingdom|uptimerobot|statuscake|site24x7|gtmetrix"
    r"|facebookexternalhit|embedly|bitlybot|preview|^curl/|^wget/|python-requests"
    r"|python-urllib|aiohttp|httpx|go-http-client|^java/|libwww-perl|node-fetch|^axios/"
    r"|apache-httpclient|postmanruntime|insomnia",
    re.IGNORECASE,
)

_MOBILE_OS = frozenset(
    {
        "iOS",
        "Android",
        "Windows Phone",
        "BlackBerry OS",
        "KaiOS",
        "Firefox OS",
        "Symbian OS",
        "Tizen",
        "Sailfish",
        "webOS",
    }
)
_DESKTOP_OS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Chrome OS",
        "Fedora",
        "Debian",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Red Hat",
        "SUSE",
        "Gentoo",
        "Mint",
        "Arch Linux",
        "Solaris",
    }
)
_CONSOLES = ("PlayStation", "Xbox", "Nintendo")


class UserAgentInfo(NamedTuple):
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device_type: str | None  # desktop | mobile | tablet | console | tv; None when unknown
    is_bot: bool


UNKNOWN_AGENT = UserAgentInfo(None, None, None, None, None, False)


def _version(major: str | None, minor: str | None) -> str | None:
    if major is None:
        return None
    return f"{major}.{minor}" if minor is not None else major


@text_cache(maxsize=16384)
def parse_user_agent(user_agent: str) -> UserAgentInfo:
    """Browser, OS and device type of a user agent string, and whether it is a bot."""
    if not user_agent:
        return UNKNOWN_AGENT
    result = parse(user_agent)
    agent, os, device = result.user_agent, result.os, result.device
    device_family = device.family if device is not None else ""
    device_brand = (device.brand or "") if device is not None else ""
    os_family = os.family if os is not None else None
    is_bot = (
        device_family == "Spider"
        or AUTOMATED_CLIENT.search(user_agent) is not None
        or is_crawler(user_agent)
    )
    return UserAgentInfo(
        browser=agent.family if agent is not None else None,
        browser_version=_version(agent.major, agent.minor) if agent is not None else None,
        os=os_family,
        os_version=_version(os.major, os.minor) if os is not None else None,
        device_type=_device_type(user_agent, os_family, device_family, device_brand),
        is_bot=is_bot,
    )


def _device_type(
    user_agent: str, os_family: str | None, device_family: str, device_brand: str
) -> str | None:
    if any(console in device_family for console in _CONSOLES):
        return "console"
    if "TV" in device_family or "SmartTV" in user_agent or "SMART-TV" in user_agent:
        return "tv"
    if (
        device_family == "iPad"
        or device_brand == "Generic_Android_Tablet"
        or "Tablet" in device_family
        or "Kindle" in device_family
        # Android browsers leave "Mobile" out of tablets' user agents (Google's guidance);
        # app HTTP stacks (Dalvik) do not follow it, so only browsers are judged this way.
        or (os_family == "Android" and "Mobile" not in user_agent and "Mozilla/" in user_agent)
    ):
        return "tablet"
    if os_family in _MOBILE_OS or device_brand == "Generic_Smartphone" or "Mobile" in user_agent:
        return "mobile"
    if os_family in _DESKTOP_OS or device_family == "Mac":
        return "desktop"
    return None
