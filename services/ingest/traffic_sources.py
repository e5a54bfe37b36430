"""Where a visit came from: referrer domain, UTM parameters, click ids and a channel.

Channels (snake_case so they can be used as filter values): direct, organic_search,
paid_search, organic_social, paid_social, email, referral. The rules follow Google Analytics'
default channel grouping, simplified:

1. a paid-search click id (gclid, gbraid, wbraid, dclid, msclkid, yclid) -> paid_search;
   a paid-social click id (ttclid, twclid, li_fat_id, ScCid, epik) -> paid_social;
2. utm_medium or utm_source mentions e-mail, or the referrer is a webmail -> email;
3. a paid utm_medium (cpc, ppc, cpm, paid*, retargeting, display, banner, anything with "cp")
   -> paid_social when the source or referrer is a social network, else paid_search;
4. utm_medium social (social, sm, social-network, social-media) -> organic_social;
   utm_medium organic -> organic_search;
5. a search engine as referrer or utm_source -> organic_search; a social network ->
   organic_social;
6. any other referrer or UTM tag -> referral; nothing at all -> direct.

Every function here is cached per distinct input: referrers, URLs and tag combinations repeat,
so the per-event cost is a dictionary lookup.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

DIRECT = "direct"
ORGANIC_SEARCH = "organic_search"
PAID_SEARCH = "paid_search"
ORGANIC_SOCIAL = "organic_social"
PAID_SOCIAL = "paid_social"
EMAIL = "email"
REFERRAL = "referral"
CHANNELS = (DIRECT, ORGANIC_SEARCH, PAID_SEARCH, ORGANIC_SOCIAL, PAID_SOCIAL, EMAIL, REFERRAL)

PAID_SEARCH_CLICK_IDS = frozenset({"gclid", "gbraid", "wbraid", "dclid", "msclkid", "yclid"})
PAID_SOCIAL_CLICK_IDS = frozenset({"ttclid", "twclid", "li_fat_id", "sccid", "epik"})

_SEARCH_BRANDS = frozenset(
    {
        "google",
        "bing",
        "yahoo",
        "duckduckgo",
        "baidu",
        "yandex",
        "ecosia",
        "startpage",
        "qwant",
        "naver",
        "seznam",
        "sogou",
        "aol",
        "mojeek",
        "kagi",
        "dogpile",
        "yippy",
    }
)
_SEARCH_HOSTS = frozenset({"search.brave.com", "so.com", "search.aol.com", "perplexity.ai"})
# First labels of hosts under a search brand that are not search (Google Docs, ...).
_NOT_SEARCH_FIRST_LABELS = frozenset(
    {
        "mail",
        "docs",
        "drive",
        "calendar",
        "accounts",
        "sites",
        "groups",
        "play",
        "support",
        "developers",
        "cloud",
        "ads",
        "analytics",
        "meet",
        "photos",
        "translate",
    }
)
_SOCIAL_BRANDS = frozenset(
    {
        "facebook",
        "instagram",
        "twitter",
        "linkedin",
        "reddit",
        "pinterest",
        "youtube",
        "tiktok",
        "snapchat",
        "threads",
        "mastodon",
        "bluesky",
        "whatsapp",
        "telegram",
        "discord",
        "quora",
        "tumblr",
        "weibo",
        "messenger",
        "vkontakte",
    }
)
_SOCIAL_HOSTS = frozenset(
    {
        "t.co",
        "x.com",
        "fb.com",
        "fb.me",
        "lnkd.in",
        "redd.it",
        "youtu.be",
        "bsky.app",
        "t.me",
        "wa.me",
        "vk.com",
        "news.ycombinator.com",
        "pin.it",
    }
)
_SOCIAL_SOURCES = frozenset({"fb", "ig", "x", "vk", "yt", "li", "hn", "meta"})
_EMAIL_HOSTS = frozenset(
    {
        "mail.google.com",
        "com.google.android.gm",
        "outlook.live.com",
        "outlook.office.com",
        "outlook.office365.com",
        "mail.yahoo.com",
        "mail.aol.com",
        "mail.proton.me",
        "mail.zoho.com",
        "mail.yandex.ru",
        "mail.ru",
        "com.microsoft.office.outlook",
    }
)
_SOCIAL_MEDIUMS = frozenset(
    {
        "social",
        "sm",
        "social-network",
        "social_network",
        "social network",
        "social-media",
        "social_media",
        "social media",
        "organic_social",
        "organic-social",
    }
)
_PAID_MEDIUMS = frozenset({"ppc", "retargeting", "display", "banner", "ads", "paid"})


class PageUrl(NamedTuple):
    """The parts of a page URL that enrichment needs."""

    host: str | None  # lower case, without "www."
    path: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    click_id: str | None  # name of the first ad click id present (gclid, ttclid, ...)


def _bare_host(host: str | None) -> str | None:
    if not host:
        return None
    host = host.lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


@lru_cache(maxsize=16384)
def parse_page_url(url: str) -> PageUrl:
    """Host, path, UTM tags and ad click id of a page URL (or of a bare `?query`)."""
    try:
        parts = urlsplit(url)
        host = _bare_host(parts.hostname)
    except ValueError:  # e.g. an invalid IPv6 literal; the URL still stands as sent
        return PageUrl(None, None, None, None, None, None, None, None)
    path = parts.path or ("/" if host else None)
    tags = query_tags(parts.query)
    return PageUrl(host, path, *tags)


@lru_cache(maxsize=16384)
def query_tags(
    query: str,
) -> tuple[str | None, str | None, str | None, str | None, str | None, str | None]:
    """(utm_source, utm_medium, utm_campaign, utm_term, utm_content, click_id) of a query."""
    found: dict[str, str] = {}
    click_id: str | None = None
    for name, value in parse_qsl(query.lstrip("?")):
        key = name.lower()
        if key.startswith("utm_"):
            found.setdefault(key, value)
        elif click_id is None and (key in PAID_SEARCH_CLICK_IDS or key in PAID_SOCIAL_CLICK_IDS):
            click_id = key
    return (
        found.get("utm_source"),
        found.get("utm_medium"),
        found.get("utm_campaign"),
        found.get("utm_term"),
        found.get("utm_content"),
        click_id,
    )


@lru_cache(maxsize=16384)
def referrer_domain(referrer: str) -> str | None:
    """The referrer's host without "www." (`android-app://` referrers give the app id)."""
    try:
        return _bare_host(urlsplit(referrer).hostname)
    except ValueError:
        return None


def _is_search_host(host: str) -> bool:
    if host in _SEARCH_HOSTS:
        return True
    labels = host.split(".")
    if labels[0] in _NOT_SEARCH_FIRST_LABELS:
        return False
    return any(label in _SEARCH_BRANDS for label in labels[:-1])


def _is_social_host(host: str) -> bool:
    if host in _SOCIAL_HOSTS or any(host.endswith("." + h) for h in _SOCIAL_HOSTS):
        return True
    return any(label in _SOCIAL_BRANDS for label in host.split(".")[:-1])


def _is_email_host(host: str) -> bool:
    return host in _EMAIL_HOSTS or host.startswith(("webmail.", "mail."))


def _is_search_source(source: str) -> bool:
    return any(brand in source for brand in _SEARCH_BRANDS if len(brand) > 3) or source in (
        "aol",
        "duck",
    )


def _is_social_source(source: str) -> bool:
    return source in _SOCIAL_SOURCES or any(brand in source for brand in _SOCIAL_BRANDS)


def _is_paid_medium(medium: str) -> bool:
    return medium in _PAID_MEDIUMS or medium.startswith("paid") or "cp" in medium


@lru_cache(maxsize=16384)
def classify_channel(
    referrer_host: str | None,
    utm_source: str | None,
    utm_medium: str | None,
    click_id: str | None,
) -> str:
    """The acquisition channel of a visit (see the module docstring for the rules)."""
    if click_id in PAID_SEARCH_CLICK_IDS:
        return PAID_SEARCH
    if click_id in PAID_SOCIAL_CLICK_IDS:
        return PAID_SOCIAL
    source = (utm_source or "").strip().lower()
    medium = (utm_medium or "").strip().lower()
    host = referrer_host or ""
    if "mail" in medium or "newsletter" in medium or "mail" in source or source == "newsletter":
        return EMAIL
    if host and _is_email_host(host):
        return EMAIL
    social = bool(source and _is_social_source(source)) or bool(host and _is_social_host(host))
    if medium and _is_paid_medium(medium):
        return PAID_SOCIAL if social or "social" in medium else PAID_SEARCH
    if medium in _SOCIAL_MEDIUMS:
        return ORGANIC_SOCIAL
    if medium == "organic":
        return ORGANIC_SEARCH
    if (source and _is_search_source(source)) or (host and _is_search_host(host)):
        return ORGANIC_SEARCH
    if social:
        return ORGANIC_SOCIAL
    if host or source or medium:
        return REFERRAL
    return DIRECT
