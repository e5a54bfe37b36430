"""Where a visit came from: referrer domain, search engine, social network, UTM parameters, click
ids and a channel.

Channels (snake_case so they can be used as filter values): direct, organic_search,
paid_search, organic_social, paid_social, email, referral, display, affiliate. The rules follow
Google Analytics' default channel grouping, simplified (docs/enrichment.md has the tables):

1. a paid-search click id (gclid, gbraid, wbraid, msclkid, yclid) -> paid_search; a display
   click id (dclid) -> display; a paid-social click id (ttclid, twclid, li_fat_id, ScCid, epik,
   rdt_cid) -> paid_social. fbclid is not paid: Facebook adds it to every outbound link, so it
   only says the visit came from Facebook (a social source);
2. utm_medium or utm_source mentions e-mail, or the referrer is a webmail -> email;
3. utm_medium affiliate(s) -> affiliate;
4. a paid utm_medium (cpc, ppc, paid*, retargeting, anything with "cp") or a display one
   (display, banner, expandable, interstitial, cpm) -> paid_social when the source or referrer is
   a social network (or the medium says social), else display for display mediums, else
   paid_search;
5. utm_medium social (social, sm, social-network, social-media) -> organic_social;
   utm_medium organic -> organic_search;
6. a search engine as referrer or utm_source -> organic_search; a social network ->
   organic_social;
7. any other referrer or UTM tag -> referral; nothing at all -> direct.

Search engines, social networks and webmail are those of Snowplow's referer-parser data set
(services/ingest/referrer_database.py), never a hand-written table.

Every function here is cached per distinct input: referrers, URLs and tag combinations repeat,
so the per-event cost is a dictionary lookup.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

from services.ingest.referrer_database import (
    EMAIL as EMAIL_SITE,
)
from services.ingest.referrer_database import (
    SEARCH,
    SOCIAL,
    ReferrerSite,
    default_database,
    normalized_source,
)
from services.ingest.text_cache import text_cache

DIRECT = "direct"
ORGANIC_SEARCH = "organic_search"
PAID_SEARCH = "paid_search"
ORGANIC_SOCIAL = "organic_social"
PAID_SOCIAL = "paid_social"
EMAIL = "email"
REFERRAL = "referral"
DISPLAY = "display"
AFFILIATE = "affiliate"
CHANNELS = (
    DIRECT,
    ORGANIC_SEARCH,
    PAID_SEARCH,
    ORGANIC_SOCIAL,
    PAID_SOCIAL,
    EMAIL,
    REFERRAL,
    DISPLAY,
    AFFILIATE,
)

PAID_SEARCH_CLICK_IDS = frozenset({"gclid", "gbraid", "wbraid", "msclkid", "yclid"})
DISPLAY_CLICK_IDS = frozenset({"dclid"})
PAID_SOCIAL_CLICK_IDS = frozenset({"ttclid", "twclid", "li_fat_id", "sccid", "epik", "rdt_cid"})
# Click ids that name a social network without saying the click was paid.
SOCIAL_CLICK_IDS = frozenset({"fbclid", "igshid"})
CLICK_IDS = PAID_SEARCH_CLICK_IDS | DISPLAY_CLICK_IDS | PAID_SOCIAL_CLICK_IDS | SOCIAL_CLICK_IDS

# Short `utm_source` names of social networks (Google Analytics' convention); the networks'
# own names and domains come from the referrer data set.
_SOCIAL_SOURCES = frozenset({"fb", "ig", "x", "vk", "yt", "li", "hn", "meta"})
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
_PAID_MEDIUMS = frozenset({"ppc", "retargeting", "ads", "paid"})
_DISPLAY_MEDIUMS = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
_AFFILIATE_MEDIUMS = frozenset({"affiliate", "affiliates"})


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


@text_cache(maxsize=16384)
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


@text_cache(maxsize=16384)
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
        elif click_id is None and key in CLICK_IDS:
            click_id = key
    return (
        found.get("utm_source"),
        found.get("utm_medium"),
        found.get("utm_campaign"),
        found.get("utm_term"),
        found.get("utm_content"),
        click_id,
    )


@text_cache(maxsize=16384)
def referrer_domain(referrer: str) -> str | None:
    """The referrer's host without "www." (`android-app://` referrers give the app id)."""
    try:
        return _bare_host(urlsplit(referrer).hostname)
    except ValueError:
        return None


@text_cache(maxsize=16384)
def referrer_site(host: str, path: str = "") -> ReferrerSite | None:
    """The site of the data set a referrer host (and path) belongs to, or None."""
    return default_database().lookup(host, path)


def search_engine(host: str, path: str = "") -> str | None:
    """The search engine a referrer belongs to (docs/enrichment.md), or None."""
    site = referrer_site(host, path)
    return site.name if site is not None and site.category == SEARCH else None


def social_network(host: str, path: str = "") -> str | None:
    """The social network a referrer belongs to (docs/enrichment.md), or None."""
    site = referrer_site(host, path)
    return site.name if site is not None and site.category == SOCIAL else None


def _is_search_host(host: str) -> bool:
    return search_engine(host) is not None


def _is_social_host(host: str) -> bool:
    return social_network(host) is not None


def _is_email_host(host: str) -> bool:
    site = referrer_site(host)
    return (site is not None and site.category == EMAIL_SITE) or host.startswith(
        ("webmail.", "mail.")
    )


def _source_names(source: str) -> tuple[str, ...]:
    """A `utm_source` as the names it may stand for: `Google`, `google.com` -> `google`."""
    names = [normalized_source(source)]
    if "." in source:
        labels = source.strip().lower().removeprefix("www.").split(".")
        names.append(
            normalized_source(
                labels[-3] if labels[-2] in ("co", "com") and len(labels) > 2 else labels[-2]
            )
        )
    return tuple(names)


def _is_search_source(source: str) -> bool:
    database = default_database()
    return any(name in database.search_sources for name in _source_names(source))


def _is_social_source(source: str) -> bool:
    database = default_database()
    return source in _SOCIAL_SOURCES or any(
        name in database.social_sources for name in _source_names(source)
    )


def _is_paid_medium(medium: str) -> bool:
    return medium in _PAID_MEDIUMS or medium.startswith("paid") or "cp" in medium


@text_cache(maxsize=16384)
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
    if click_id in DISPLAY_CLICK_IDS:
        return DISPLAY
    source = (utm_source or "").strip().lower()
    medium = (utm_medium or "").strip().lower()
    host = referrer_host or ""
    if "mail" in medium or "newsletter" in medium or "mail" in source or source == "newsletter":
        return EMAIL
    if host and _is_email_host(host):
        return EMAIL
    if medium in _AFFILIATE_MEDIUMS:
        return AFFILIATE
    social = (
        click_id in SOCIAL_CLICK_IDS
        or bool(source and _is_social_source(source))
        or bool(host and _is_social_host(host))
    )
    if medium and (medium in _DISPLAY_MEDIUMS or _is_paid_medium(medium)):
        if social or "social" in medium:
            return PAID_SOCIAL
        return DISPLAY if medium in _DISPLAY_MEDIUMS else PAID_SEARCH
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
