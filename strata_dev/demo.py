"""Realistic demo traffic: several sites' visitors over months of history, then a live trickle,
sent as Segment `/v1/batch` calls to the ingest gateway.

Generation is separate from sending: `iter_backfill` yields Segment message dicts in batches
(cheap to build, deterministic for a plan and seed) so the benchmark can reuse it at millions
of events; `send_backfill` and `send_live` post them with bounded concurrency.

The traffic has what analytics users look at: daily and weekly seasonality with growth and a
launch spike, sessions of several pageviews along plausible paths, search/social/email/paid/
referral/direct acquisition (UTM tags where a campaign would set them), real user-agent strings
across devices, custom events (signup, add_to_cart, purchase with revenue, search), identify
calls that link an anonymous visitor to a user, returning visitors, bots, and non-interactive
events (scroll depth) that must not turn a bounce into an engaged session.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import heapq
import itertools
import random
import time
import zlib
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import msgspec

from libs.common.errors import StrataError

DEMO_PROJECTS = ("demo", "shop", "docs")
# The A/B test every demo visit is exposed to (the treatment converts a little better at
# checkout): POST /api/v1/analytics/experiments/analyze with "experiment": "new-checkout".
DEMO_EXPERIMENT = "new-checkout"
DEMO_EXPERIMENT_VARIANTS = ("control", "treatment")
DAY_MS = 86_400_000

Message = dict[str, Any]


class DemoError(StrataError, RuntimeError):
    """Demo traffic could not be delivered (bad key, ingest unreachable, ...)."""

    code = "demo_failed"


class DemoPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What to generate: `days` of history per project ending at `end` (default: now)."""

    projects: tuple[str, ...] = DEMO_PROJECTS
    days: int = 130
    visitors_per_day: int = 100  # average daily visitors per project, before seasonality
    seed: int = 7
    end: datetime | None = None

    def end_time(self) -> datetime:
        return (self.end or datetime.now(UTC)).astimezone(UTC)


class DemoBatch(msgspec.Struct, frozen=True):
    """Whole sessions of one project (a session never spans two batches)."""

    project: str
    day: date
    messages: list[Message]


# --- the world the visitors live in ---------------------------------------------------------


class _Weighted:
    """Weighted choice with precomputed cumulative weights (random.choices is slower)."""

    __slots__ = ("cumulative", "items", "total")

    def __init__(self, pairs: Sequence[tuple[Any, float]]) -> None:
        self.items = [item for item, _ in pairs]
        self.cumulative = list(itertools.accumulate(weight for _, weight in pairs))
        self.total = self.cumulative[-1]

    def pick(self, rng: random.Random) -> Any:
        return self.items[bisect.bisect_right(self.cumulative, rng.random() * self.total)]


_DESKTOP_UA = _Weighted(
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
            38,
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like "
            "Gecko) Chrome/124.0.0.0 Safari/537.36",
            18,
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/17.4.1 Safari/605.1.15",
            12,
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
            9,
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
            10,
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
            5,
        ),
        ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", 3),
    ]
)
_MOBILE_UA = _Weighted(
    [
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
            45,
        ),
        (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.6367.113 Mobile Safari/537.36",
            35,
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like "
            "Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
            12,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
            8,
        ),
    ]
)
_TABLET_UA = _Weighted(
    [
        (
            "Mozilla/5.0 (iPad; CPU OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
            70,
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.6367.113 Safari/537.36",
            30,
        ),
    ]
)
_BOT_UA = _Weighted(
    [
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 40),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 20),
        ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", 20),
        ("python-requests/2.31.0", 10),
        ("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", 10),
    ]
)

# (country, locale, timezone, weight)
_COUNTRIES = _Weighted(
    [
        (("US", "en-US", "America/New_York"), 30),
        (("US", "en-US", "America/Los_Angeles"), 10),
        (("GB", "en-GB", "Europe/London"), 9),
        (("DE", "de-DE", "Europe/Berlin"), 9),
        (("FR", "fr-FR", "Europe/Paris"), 6),
        (("IN", "en-IN", "Asia/Kolkata"), 8),
        (("CA", "en-CA", "America/Toronto"), 5),
        (("BR", "pt-BR", "America/Sao_Paulo"), 5),
        (("NL", "nl-NL", "Europe/Amsterdam"), 4),
        (("JP", "ja-JP", "Asia/Tokyo"), 4),
        (("AU", "en-AU", "Australia/Sydney"), 3),
        (("ES", "es-ES", "Europe/Madrid"), 3),
        (("PL", "pl-PL", "Europe/Warsaw"), 2),
        (("SE", "sv-SE", "Europe/Stockholm"), 2),
    ]
)

# Traffic by UTC hour: the US afternoon and European day overlap, quiet in the small hours.
_HOURS = _Weighted(
    [
        (h, w)
        for h, w in enumerate(
            [3, 2, 2, 2, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15, 15, 14, 13, 11, 9, 8, 7, 5, 4]
        )
    ]
)


class _Acquisition(msgspec.Struct, frozen=True):
    channel: str
    referrer: str | None = None
    utm: tuple[str, str, str] | None = None  # source, medium, campaign


_SEARCH_REFERRERS = _Weighted(
    [("https://www.google.com/", 82), ("https://www.bing.com/", 10), ("https://duckduckgo.com/", 8)]
)
_SOCIAL_REFERRERS = _Weighted(
    [
        ("https://t.co/", 40),
        ("https://www.linkedin.com/", 25),
        ("https://www.reddit.com/r/analytics/", 20),
        ("https://www.facebook.com/", 15),
    ]
)
_REFERRAL_REFERRERS = _Weighted(
    [
        ("https://github.com/strata-analytics/strata", 40),
        ("https://news.ycombinator.com/", 25),
        ("https://dev.to/", 20),
        ("https://stackoverflow.com/questions/", 15),
    ]
)


@dataclass(frozen=True)
class _Site:
    """One project's website: pages, how visitors move between them, and what they do there."""

    host: str
    titles: dict[str, str]
    # page -> next page ("" ends the session)
    moves: dict[str, _Weighted]
    # channel -> landing page
    landings: dict[str, _Weighted]
    channels: _Weighted
    devices: _Weighted  # "desktop" | "mobile" | "tablet"
    weekday_factor: tuple[float, ...]  # Monday first
    searches: tuple[str, ...]  # what visitors type into the site search
    # page templates ending in "/*" are expanded with one of these slugs
    slugs: dict[str, _Weighted] = field(default_factory=dict)


def _w(pairs: dict[str, float]) -> _Weighted:
    return _Weighted(list(pairs.items()))


_SITES: dict[str, _Site] = {
    # A SaaS marketing site: content brings visitors in, pricing and signup convert them.
    "demo": _Site(
        host="www.strata-demo.example",
        titles={
            "/": "Strata — product analytics you own",
            "/features": "Features — Strata",
            "/pricing": "Pricing — Strata",
            "/blog": "Blog — Strata",
            "/blog/*": "Blog post — Strata",
            "/docs": "Documentation — Strata",
            "/signup": "Create your account — Strata",
            "/app/onboarding": "Welcome — Strata",
            "/about": "About us — Strata",
            "/contact": "Contact — Strata",
        },
        moves={
            "/": _w(
                {"/features": 30, "/pricing": 25, "/blog": 12, "/docs": 8, "/about": 5, "": 40}
            ),
            "/features": _w({"/pricing": 35, "/signup": 10, "/docs": 10, "/": 5, "": 40}),
            "/pricing": _w({"/signup": 30, "/features": 10, "/contact": 8, "": 52}),
            "/blog": _w({"/blog/*": 60, "/": 5, "": 35}),
            "/blog/*": _w({"/blog/*": 15, "/features": 8, "/": 10, "/pricing": 5, "": 62}),
            "/docs": _w({"/pricing": 10, "/signup": 8, "": 82}),
            "/signup": _w({"/app/onboarding": 55, "/pricing": 10, "": 35}),
            "/app/onboarding": _w({"": 100}),
            "/about": _w({"/contact": 20, "/": 20, "": 60}),
            "/contact": _w({"": 100}),
        },
        landings={
            "Direct": _w({"/": 80, "/pricing": 10, "/docs": 10}),
            "Organic Search": _w({"/blog/*": 50, "/": 30, "/features": 10, "/pricing": 10}),
            "Organic Social": _w({"/blog/*": 70, "/": 30}),
            "Email": _w({"/blog/*": 60, "/features": 40}),
            "Paid Search": _w({"/pricing": 50, "/": 50}),
            "Referral": _w({"/": 50, "/docs": 30, "/blog/*": 20}),
        },
        channels=_w(
            {
                "Direct": 30,
                "Organic Search": 32,
                "Organic Social": 12,
                "Email": 8,
                "Paid Search": 8,
                "Referral": 10,
            }
        ),
        devices=_w({"desktop": 70, "mobile": 26, "tablet": 4}),
        weekday_factor=(1.1, 1.15, 1.15, 1.1, 1.0, 0.6, 0.55),
        searches=("pricing", "self-hosted", "retention"),
        slugs={
            "/blog/*": _Weighted(
                [
                    ("/blog/what-is-a-session", 30),
                    ("/blog/bounce-rate-explained", 25),
                    ("/blog/self-hosted-analytics", 20),
                    ("/blog/hyperloglog-for-humans", 12),
                    ("/blog/utm-tags-done-right", 8),
                    ("/blog/release-notes-2-0", 5),
                ]
            )
        },
    ),
    # A shop: product pages, a cart, a checkout that sometimes completes.
    "shop": _Site(
        host="shop.strata-demo.example",
        titles={
            "/": "Trailhead Outfitters",
            "/category/*": "Category — Trailhead Outfitters",
            "/product/*": "Product — Trailhead Outfitters",
            "/search": "Search — Trailhead Outfitters",
            "/cart": "Your cart — Trailhead Outfitters",
            "/checkout": "Checkout — Trailhead Outfitters",
            "/checkout/complete": "Thank you! — Trailhead Outfitters",
        },
        moves={
            "/": _w({"/category/*": 45, "/search": 15, "/product/*": 10, "": 30}),
            "/category/*": _w({"/product/*": 60, "/category/*": 10, "": 30}),
            "/search": _w({"/product/*": 55, "": 45}),
            "/product/*": _w({"/product/*": 25, "/cart": 20, "/category/*": 10, "": 45}),
            "/cart": _w({"/checkout": 55, "/product/*": 15, "": 30}),
            "/checkout": _w({"/checkout/complete": 60, "/cart": 10, "": 30}),
            "/checkout/complete": _w({"": 100}),
        },
        landings={
            "Direct": _w({"/": 85, "/cart": 15}),
            "Organic Search": _w({"/product/*": 55, "/category/*": 30, "/": 15}),
            "Organic Social": _w({"/product/*": 70, "/": 30}),
            "Email": _w({"/category/*": 50, "/product/*": 50}),
            "Paid Search": _w({"/product/*": 70, "/category/*": 30}),
            "Referral": _w({"/": 50, "/product/*": 50}),
        },
        channels=_w(
            {
                "Direct": 28,
                "Organic Search": 25,
                "Organic Social": 15,
                "Email": 12,
                "Paid Search": 15,
                "Referral": 5,
            }
        ),
        devices=_w({"desktop": 38, "mobile": 55, "tablet": 7}),
        weekday_factor=(0.9, 0.85, 0.9, 0.95, 1.05, 1.25, 1.2),
        searches=("tent", "waterproof jacket", "hiking boots", "backpack 40l", "sleeping bag"),
        slugs={
            "/category/*": _w(
                {
                    "/category/tents": 30,
                    "/category/backpacks": 30,
                    "/category/footwear": 25,
                    "/category/jackets": 15,
                }
            ),
            "/product/*": _Weighted(
                [
                    (f"/product/{sku}", w)
                    for sku, w in zip(
                        [
                            "tn-201",
                            "bp-045",
                            "bp-046",
                            "fw-310",
                            "fw-311",
                            "jk-090",
                            "tn-204",
                            "bp-050",
                            "fw-320",
                            "jk-095",
                        ],
                        [20, 16, 12, 11, 9, 8, 7, 6, 6, 5],
                        strict=True,
                    )
                ]
            ),
        },
    ),
    # Developer documentation: long reads, search, code copied; quiet at weekends.
    "docs": _Site(
        host="docs.strata-demo.example",
        titles={
            "/": "Strata documentation",
            "/docs/getting-started": "Getting started — Strata docs",
            "/docs/*": "Guide — Strata docs",
            "/api/*": "API reference — Strata docs",
            "/search": "Search — Strata docs",
            "/changelog": "Changelog — Strata docs",
        },
        moves={
            "/": _w({"/docs/getting-started": 45, "/docs/*": 20, "/search": 15, "": 20}),
            "/docs/getting-started": _w({"/docs/*": 45, "/api/*": 20, "": 35}),
            "/docs/*": _w({"/docs/*": 35, "/api/*": 20, "/search": 10, "": 35}),
            "/api/*": _w({"/api/*": 35, "/docs/*": 15, "": 50}),
            "/search": _w({"/docs/*": 50, "/api/*": 30, "": 20}),
            "/changelog": _w({"/docs/*": 20, "": 80}),
        },
        landings={
            "Direct": _w({"/": 60, "/api/*": 25, "/changelog": 15}),
            "Organic Search": _w({"/docs/*": 55, "/api/*": 35, "/docs/getting-started": 10}),
            "Organic Social": _w({"/changelog": 50, "/docs/*": 50}),
            "Email": _w({"/changelog": 70, "/docs/*": 30}),
            "Paid Search": _w({"/docs/getting-started": 100}),
            "Referral": _w({"/docs/getting-started": 50, "/api/*": 50}),
        },
        channels=_w(
            {
                "Direct": 35,
                "Organic Search": 40,
                "Organic Social": 5,
                "Email": 5,
                "Paid Search": 2,
                "Referral": 13,
            }
        ),
        devices=_w({"desktop": 88, "mobile": 10, "tablet": 2}),
        weekday_factor=(1.2, 1.2, 1.2, 1.15, 1.0, 0.4, 0.35),
        searches=("session timeout", "bounce rate", "write key", "kubernetes", "utm"),
        slugs={
            "/docs/*": _w(
                {
                    "/docs/sessions": 25,
                    "/docs/ingest": 22,
                    "/docs/tiering": 15,
                    "/docs/kubernetes": 14,
                    "/docs/funnels": 12,
                    "/docs/retention": 12,
                }
            ),
            "/api/*": _w(
                {"/api/metrics": 35, "/api/events": 25, "/api/sessions": 20, "/api/batch": 20}
            ),
        },
    ),
}

_PRICES = {
    "tn-201": 349.0,
    "tn-204": 499.0,
    "bp-045": 129.0,
    "bp-046": 149.0,
    "bp-050": 89.0,
    "fw-310": 159.0,
    "fw-311": 179.0,
    "fw-320": 139.0,
    "jk-090": 229.0,
    "jk-095": 279.0,
}
_PLANS = _w({"free": 60, "team": 30, "business": 10})


def _site_for(project: str) -> _Site:
    """Known demo projects get their own site; any other project name reuses one by hash."""
    if project in _SITES:
        return _SITES[project]
    names = sorted(_SITES)
    return _SITES[names[zlib.crc32(project.encode()) % len(names)]]


def _acquisition(site: _Site, rng: random.Random, week: int) -> _Acquisition:
    channel: str = site.channels.pick(rng)
    if channel == "Organic Search":
        return _Acquisition(channel, _SEARCH_REFERRERS.pick(rng))
    if channel == "Organic Social":
        return _Acquisition(channel, _SOCIAL_REFERRERS.pick(rng))
    if channel == "Referral":
        return _Acquisition(channel, _REFERRAL_REFERRERS.pick(rng))
    if channel == "Email":
        return _Acquisition(channel, None, ("newsletter", "email", f"weekly-{week % 53:02d}"))
    if channel == "Paid Search":
        campaign = "brand" if rng.random() < 0.6 else "spring-sale"
        return _Acquisition(channel, "https://www.google.com/", ("google", "cpc", campaign))
    return _Acquisition(channel)


# --- visitors and sessions ------------------------------------------------------------------


class _Visitor:
    __slots__ = ("anonymous_id", "context", "user_id")

    def __init__(self, anonymous_id: str, context: dict[str, Any]) -> None:
        self.anonymous_id = anonymous_id
        self.context = context  # shared by every event of this visitor (read-only)
        self.user_id: str | None = None


def _iso_ms(ms: int, prefixes: dict[int, str]) -> str:
    """ISO-8601 UTC with milliseconds, fast: the part up to the hour is cached."""
    hour, rem = divmod(ms, 3_600_000)
    prefix = prefixes.get(hour)
    if prefix is None:
        if len(prefixes) > 100_000:  # a long live run: keep the cache bounded
            prefixes.clear()
        prefix = datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:")
        prefixes[hour] = prefix
    minute, rem = divmod(rem, 60_000)
    return f"{prefix}{minute:02d}:{rem // 1000:02d}.{rem % 1000:03d}Z"


class _SessionWriter:
    """Builds the Segment messages of sessions for one project (state: id counters, visitors)."""

    def __init__(self, project: str, rng: random.Random, id_tag: str, max_pool: int = 20000):
        self.project = project
        self.site = _site_for(project)
        self.rng = rng
        self.id_tag = id_tag
        self.next_id = itertools.count(1)
        self.next_visitor = itertools.count(1)
        self.next_user = itertools.count(1)
        self.visitors: list[_Visitor] = []
        self.max_pool = max_pool
        self.prefixes: dict[int, str] = {}

    # Visitors ------------------------------------------------------------------------------

    def _new_visitor(self, bot: bool) -> _Visitor:
        rng = self.rng
        country, locale, timezone = _COUNTRIES.pick(rng)
        if bot:
            ua = _BOT_UA.pick(rng)
        else:
            device = self.site.devices.pick(rng)
            ua = (
                _DESKTOP_UA
                if device == "desktop"
                else _MOBILE_UA
                if device == "mobile"
                else _TABLET_UA
            ).pick(rng)
        n = next(self.next_visitor)
        context = {
            "userAgent": ua,
            "locale": locale,
            "timezone": timezone,
            "location": {"country": country},
            "library": {"name": "strata-demo", "version": "1.0"},
        }
        return _Visitor(f"anon-{self.id_tag}-{self.project}-{n}", context)

    def _visitor(self) -> _Visitor:
        # A third of the sessions come from someone seen before (cookie still set).
        if self.visitors and self.rng.random() < 0.33:
            return self.visitors[int(self.rng.random() * len(self.visitors))]
        visitor = self._new_visitor(bot=False)
        if len(self.visitors) < self.max_pool:
            self.visitors.append(visitor)
        else:
            self.visitors[int(self.rng.random() * self.max_pool)] = visitor
        return visitor

    # Messages ------------------------------------------------------------------------------

    def _base(self, kind: str, visitor: _Visitor, ms: int, context: Message) -> Message:
        message: Message = {
            "type": kind,
            "messageId": f"{self.id_tag}-{self.project}-{next(self.next_id)}",
            "anonymousId": visitor.anonymous_id,
            "timestamp": _iso_ms(ms, self.prefixes),
            "context": context,
        }
        if visitor.user_id is not None:
            message["userId"] = visitor.user_id
        return message

    def _page(
        self,
        visitor: _Visitor,
        ms: int,
        path: str,
        referrer: str | None,
        search: str,
        campaign: Message | None = None,
    ) -> Message:
        """A pageview; its `context` (with `page`, as analytics.js sends it) is reused by the
        events that follow on the same page."""
        site = self.site
        url = f"https://{site.host}{path}{search}"
        title = site.titles.get(path) or site.titles.get(_template_of(path), path)
        page: dict[str, Any] = {"path": path, "url": url, "title": title, "search": search}
        if referrer:
            page["referrer"] = referrer
        context = {**visitor.context, "page": page}
        if campaign is not None:
            context["campaign"] = campaign
        message = self._base("page", visitor, ms, context)
        message["name"] = title
        message["properties"] = page
        return message

    def _track(
        self, visitor: _Visitor, ms: int, context: Message, event: str, properties: Message
    ) -> Message:
        message = self._base("track", visitor, ms, context)
        message["event"] = event
        message["properties"] = properties
        return message

    def _identify(self, visitor: _Visitor, ms: int, context: Message, traits: Message) -> Message:
        message = self._base("identify", visitor, ms, context)
        message["traits"] = traits
        return message

    def _experiment_variant(self, visitor: _Visitor) -> str:
        """The visitor's variant of the demo's A/B test: fixed per visitor (a hash of the id)."""
        digest = hashlib.blake2b(visitor.anonymous_id.encode(), digest_size=2).digest()
        return DEMO_EXPERIMENT_VARIANTS[digest[0] % len(DEMO_EXPERIMENT_VARIANTS)]

    def _web_vitals(self, visitor: _Visitor, ms: int, context: Message, path: str) -> Message:
        """Core Web Vitals of a page load, as a RUM snippet reports them: milliseconds, CLS
        unitless; slow devices and heavy pages load slower (log-normal tails)."""
        rng = self.rng
        mobile = "Mobile" in str(visitor.context.get("userAgent", ""))
        slow = 1.6 if mobile else 1.0
        ttfb = rng.lognormvariate(5.0, 0.5) * slow
        fcp = ttfb + rng.lognormvariate(6.6, 0.45) * slow
        return self._track(
            visitor,
            ms,
            context,
            "$web_vitals",
            {
                "path": path,
                "ttfb": round(ttfb),
                "fcp": round(fcp),
                "lcp": round(fcp + rng.lognormvariate(6.0, 0.7) * slow),
                "inp": round(rng.lognormvariate(4.6, 0.6) * slow),
                "cls": round(rng.lognormvariate(-3.2, 1.0), 4),
                "nonInteraction": 1,
            },
        )

    def session(self, start_ms: int, week: int) -> list[Message]:
        """One visit: a landing page, a walk through the site, the events done on the way."""
        rng = self.rng
        if rng.random() < 0.03:
            return self._bot_session(start_ms)
        site = self.site
        visitor = self._visitor()
        acquisition = _acquisition(site, rng, week)
        page = site.landings[acquisition.channel].pick(rng)
        search = ""
        campaign: Message | None = None
        if acquisition.utm is not None:
            source, medium, name = acquisition.utm
            search = f"?utm_source={source}&utm_medium={medium}&utm_campaign={name}"
            campaign = {"source": source, "medium": medium, "name": name}
        messages: list[Message] = []
        ms = start_ms
        referrer = acquisition.referrer
        previous_url: str | None = None
        for step in range(12):
            path = self._concrete(page)
            # The landing page carries the campaign, as analytics.js sends it.
            message = self._page(
                visitor, ms, path, referrer, search, campaign if step == 0 else None
            )
            messages.append(message)
            previous_url = message["properties"]["url"]
            if step == 0:
                # Every visit sees the running A/B test once per landing.
                messages.append(
                    self._track(
                        visitor,
                        ms + 50,
                        message["context"],
                        "$experiment_exposure",
                        {
                            "experiment": DEMO_EXPERIMENT,
                            "variant": self._experiment_variant(visitor),
                            "nonInteraction": 1,
                        },
                    )
                )
            if rng.random() < 0.6:
                messages.append(self._web_vitals(visitor, ms + 800, message["context"], path))
            ms = self._page_actions(visitor, message["context"], messages, ms + 800, page, path)
            page = site.moves[page].pick(rng)
            if not page:
                break
            ms += int(min(rng.lognormvariate(3.4, 0.9), 900.0) * 1000) + 500
            referrer = previous_url
            search = ""
        return messages

    def _concrete(self, page: str) -> str:
        slugs = self.site.slugs.get(page)
        return page if slugs is None else str(slugs.pick(self.rng))

    def _page_actions(
        self,
        visitor: _Visitor,
        context: Message,
        out: list[Message],
        ms: int,
        page: str,
        path: str,
    ) -> int:
        """Events done on a page after its pageview; returns the time of the last one."""
        rng = self.rng
        # Readers scroll: a non-interactive event that keeps the session alive but must not
        # count as engagement (a single pageview plus scroll depth is still a bounce).
        if rng.random() < 0.2:
            ms += rng.randrange(3000, 40000)
            out.append(
                self._track(
                    visitor,
                    ms,
                    context,
                    "scroll_depth",
                    {"depth": rng.choice((25, 50, 75, 100)), "path": path, "nonInteraction": 1},
                )
            )
        if page == "/signup" and rng.random() < 0.5:
            ms += rng.randrange(20000, 90000)
            user_id = visitor.user_id or f"user-{self.id_tag}-{self.project}-{next(self.next_user)}"
            plan = _PLANS.pick(rng)
            out.append(
                self._track(visitor, ms, context, "signup", {"plan": plan, "method": "email"})
            )
            visitor.user_id = user_id
            ms += 200
            out.append(
                self._identify(
                    visitor,
                    ms,
                    context,
                    {
                        "email": f"{user_id}@example.com",
                        "plan": plan,
                        "created_at": _iso_ms(ms, self.prefixes),
                    },
                )
            )
        elif page == "/product/*" and rng.random() < 0.3:
            sku = path.rsplit("/", 1)[1]
            ms += rng.randrange(5000, 60000)
            out.append(
                self._track(
                    visitor,
                    ms,
                    context,
                    "add_to_cart",
                    {"sku": sku, "price": _PRICES[sku], "quantity": 1, "currency": "USD"},
                )
            )
        elif page == "/checkout" and rng.random() < (
            0.8 if self._experiment_variant(visitor) == "treatment" else 0.7
        ):
            ms += rng.randrange(5000, 30000)
            out.append(self._track(visitor, ms, context, "checkout_started", {"currency": "USD"}))
        elif page == "/checkout/complete":
            if visitor.user_id is None:
                visitor.user_id = f"user-{self.id_tag}-{self.project}-{next(self.next_user)}"
                out.append(
                    self._identify(
                        visitor, ms, context, {"email": f"{visitor.user_id}@example.com"}
                    )
                )
            items = rng.randrange(1, 4)
            skus = [self._concrete("/product/*").rsplit("/", 1)[1] for _ in range(items)]
            revenue = round(sum(_PRICES[s] for s in skus), 2)
            ms += 300
            out.append(
                self._track(
                    visitor,
                    ms,
                    context,
                    "purchase",
                    {
                        "order_id": f"o-{self.id_tag}-{next(self.next_id)}",
                        "revenue": revenue,
                        "currency": "USD",
                        "items": items,
                        "skus": skus,
                    },
                )
            )
        elif page == "/search":
            ms += rng.randrange(2000, 15000)
            query = rng.choice(self.site.searches)
            out.append(self._track(visitor, ms, context, "search", {"query": query}))
        elif page in ("/docs/*", "/api/*") and rng.random() < 0.12:
            ms += rng.randrange(10000, 120000)
            out.append(self._track(visitor, ms, context, "copy_code", {"path": path}))
        return ms

    def _bot_session(self, start_ms: int) -> list[Message]:
        """A crawler: no cookies kept, many pages a second or two apart, no referrer."""
        visitor = self._new_visitor(bot=True)
        pages = list(self.site.titles)
        messages = []
        ms = start_ms
        for _ in range(self.rng.randrange(4, 16)):
            path = self._concrete(self.rng.choice(pages))
            messages.append(self._page(visitor, ms, path, None, ""))
            ms += self.rng.randrange(500, 3000)
        return messages


def _template_of(path: str) -> str:
    head, _, _ = path.rpartition("/")
    return f"{head}/*"


# --- backfill -------------------------------------------------------------------------------


def _plan_tag(plan: DemoPlan, end: datetime) -> str:
    """Ids are deterministic for a plan, so resending the same backfill is deduplicated, while
    a different plan never reuses another plan's ids."""
    key = f"{plan.seed}|{plan.days}|{plan.visitors_per_day}|{','.join(plan.projects)}|{end:%Y%m%d}"
    return f"{zlib.crc32(key.encode()):08x}"


def _day_volume(
    site: _Site, rng: random.Random, day: date, index: int, days: int, base: int
) -> int:
    """Visitors on a day: weekly shape, steady growth, noise, and a launch-day spike."""
    growth = 0.6 + 0.8 * (index + 1) / days
    volume = base * site.weekday_factor[day.weekday()] * growth * rng.lognormvariate(0, 0.12)
    if index == days - 45:  # launched on Hacker News: a one-day spike
        volume *= 3.5
    return max(0, round(volume))


def iter_backfill(plan: DemoPlan, batch_size: int = 100) -> Iterator[DemoBatch]:
    """History from `plan.days` days before the end to the end, oldest first, as batches of
    whole sessions (at most `batch_size` messages unless one session is longer)."""
    end = plan.end_time()
    tag = _plan_tag(plan, end)
    writers = {p: _SessionWriter(p, random.Random(f"{plan.seed}:{p}"), tag) for p in plan.projects}
    end_ms = int(end.timestamp() * 1000)
    end_iso = _iso_ms(end_ms, {})
    first_day = end.date() - timedelta(days=plan.days - 1)
    for index in range(plan.days):
        day = first_day + timedelta(days=index)
        day_ms = (day - date(1970, 1, 1)).days * DAY_MS
        week = day.isocalendar().week
        for project, writer in writers.items():
            rng = writer.rng
            visitors = _day_volume(writer.site, rng, day, index, plan.days, plan.visitors_per_day)
            # ~15% of visitors come back later the same day.
            starts = sorted(
                day_ms + _HOURS.pick(rng) * 3_600_000 + int(rng.random() * 3_600_000)
                for _ in range(visitors + visitors * 15 // 100)
            )
            batch: list[Message] = []
            for start in starts:
                if start >= end_ms:
                    break  # today is generated only up to now; the live trickle continues it
                session = writer.session(start, week)
                if session[-1]["timestamp"] > end_iso:
                    session = [m for m in session if m["timestamp"] <= end_iso]
                if batch and len(batch) + len(session) > batch_size:
                    yield DemoBatch(project, day, batch)
                    batch = []
                batch.extend(session)
            if batch:
                yield DemoBatch(project, day, batch)


def iter_messages(plan: DemoPlan) -> Iterator[tuple[str, Message]]:
    """Every backfill message with its project, oldest day first."""
    for batch in iter_backfill(plan):
        for message in batch.messages:
            yield batch.project, message


def write_ndjson(plan: DemoPlan, path: str, batch_size: int = 100) -> int:
    """Write the backfill as NDJSON lines {"project", "batch"}; returns the message count."""
    encoder = msgspec.json.Encoder()
    count = 0
    with open(path, "wb") as out:
        for batch in iter_backfill(plan, batch_size):
            out.write(encoder.encode({"project": batch.project, "batch": batch.messages}))
            out.write(b"\n")
            count += len(batch.messages)
    return count


# --- sending --------------------------------------------------------------------------------


class IngestTarget(msgspec.Struct, frozen=True):
    """Where to send one project's traffic."""

    ingest_url: str
    write_key: str


class SendStats(msgspec.Struct):
    batches: int = 0
    accepted: int = 0
    rejected: int = 0
    skipped: int = 0  # dropped on purpose by ingest (e.g. consent or IP policy), not errors
    retries: int = 0
    first_rejection: str = ""


Progress = Callable[[str], None]


class IngestClient:
    """Posts Segment batches; waits out 429/503 (Retry-After) and brief outages, fails fast on
    a bad key or a request ingest refuses."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        targets: dict[str, IngestTarget],
        stats: SendStats,
        max_outage_s: float = 60.0,
    ) -> None:
        self.session = session
        self.targets = targets
        self.stats = stats
        self.max_outage_s = max_outage_s
        self.encoder = msgspec.json.Encoder()

    async def send(self, project: str, messages: list[Message]) -> None:
        target = self.targets.get(project)
        if target is None:
            raise DemoError(f"no write key for project {project!r}")
        url = target.ingest_url.rstrip("/") + "/v1/batch"
        # Segment's scheme: HTTP Basic with the write key as the user name, no password.
        headers = {
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{target.write_key}:".encode()).decode(),
        }
        outage_since: float | None = None
        delay = 0.2
        while True:
            # sentAt is the real send time, so ingest's clock-skew correction leaves the
            # (backdated) timestamps as they are.
            body = self.encoder.encode({"batch": messages, "sentAt": datetime.now(UTC).isoformat()})
            try:
                async with self.session.post(url, data=body, headers=headers) as response:
                    text = await response.text()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > self.max_outage_s:
                    raise DemoError(f"ingest at {target.ingest_url} unreachable: {exc}") from exc
                self.stats.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if status in (429, 503):
                self.stats.retries += 1
                await asyncio.sleep(_retry_after_s(retry_after, delay))
                delay = min(delay * 2, 5.0)
                continue
            if status == 401 or status == 403:
                raise DemoError(
                    f"ingest refused the write key of project {project!r} ({status}): {text[:200]}"
                )
            self._count(status, text, len(messages))
            return

    def _count(self, status: int, text: str, sent: int) -> None:
        self.stats.batches += 1
        accepted, rejected, skipped = _outcome(status, text, sent)
        self.stats.accepted += accepted
        self.stats.rejected += rejected
        self.stats.skipped += skipped
        if rejected and not self.stats.first_rejection:
            self.stats.first_rejection = f"{status}: {text[:300]}"


def _retry_after_s(header: str | None, fallback: float) -> float:
    try:
        return max(0.05, min(float(header), 30.0)) if header else fallback
    except ValueError:
        return fallback


def _outcome(status: int, text: str, sent: int) -> tuple[int, int, int]:
    """(accepted, rejected, skipped) from ingest's answer: it accepts a batch's good events and
    lists the bad ones with reasons."""
    try:
        body = msgspec.json.decode(text or "{}")
    except msgspec.DecodeError:
        body = None
    if not isinstance(body, dict):
        return (sent, 0, 0) if 200 <= status < 300 else (0, sent, 0)
    rejected_items = body.get("rejected")
    skipped_items = body.get("skipped")
    rejected = len(rejected_items) if isinstance(rejected_items, list) else 0
    skipped = len(skipped_items) if isinstance(skipped_items, list) else 0
    accepted = body.get("accepted")
    if not isinstance(accepted, int):
        accepted = sent - rejected - skipped if 200 <= status < 300 else 0
    if not 200 <= status < 300 and rejected == 0:
        rejected = sent - skipped
    return accepted, rejected, skipped


async def send_backfill(
    batches: Iterable[DemoBatch],
    client: IngestClient,
    *,
    concurrency: int = 8,
    progress: Progress | None = None,
    total_days: int | None = None,
    progress_every_s: float = 2.0,
) -> SendStats:
    """Send every batch with at most `concurrency` requests in flight; reports progress."""
    stats = client.stats
    started = time.monotonic()
    state = _Position()
    in_flight = asyncio.Semaphore(concurrency)
    sending: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        sending.discard(task)
        in_flight.release()
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    async def report() -> None:
        while True:
            await asyncio.sleep(progress_every_s)
            if progress is not None:
                progress(_progress_line(stats, started, state.day, state.days, total_days))

    reporter = asyncio.create_task(report())
    try:
        last_day = None
        for batch in batches:
            if batch.day != last_day:
                last_day = batch.day
                state.day = batch.day.isoformat()
                state.days += 1
            await in_flight.acquire()
            if failures:
                raise failures[0]
            task = asyncio.create_task(client.send(batch.project, batch.messages))
            sending.add(task)
            task.add_done_callback(finished)
        while sending:
            await asyncio.wait(set(sending))
        if failures:
            raise failures[0]
    finally:
        reporter.cancel()
        for task in list(sending):
            task.cancel()
        await asyncio.gather(reporter, *sending, return_exceptions=True)
    if progress is not None:
        progress(_progress_line(stats, started, state.day, state.days, total_days) + " done")
    return stats


@dataclass
class _Position:
    day: str = ""
    days: int = 0


def _progress_line(
    stats: SendStats, started: float, day: str, days: int, total_days: int | None
) -> str:
    elapsed = max(time.monotonic() - started, 1e-6)
    of = f"/{total_days}" if total_days else ""
    line = (
        f"demo: backfill day {days}{of} ({day}): {stats.accepted:,} events accepted"
        f" ({stats.accepted / elapsed:,.0f}/s)"
    )
    if stats.skipped:
        line += f", {stats.skipped:,} skipped by ingest policy"
    if stats.rejected:
        line += f", {stats.rejected:,} rejected (first: {stats.first_rejection[:120]})"
    return line


# --- live trickle ---------------------------------------------------------------------------


async def iter_live(
    projects: Sequence[str],
    sessions_per_minute: float,
    seed: int,
    *,
    clock: Callable[[], float] = time.time,
    tick_s: float = 0.5,
) -> AsyncGenerator[DemoBatch, None]:
    """Sessions starting now at `sessions_per_minute` (all projects together), each event sent
    when its time comes, so "active visitors" and "events per minute" look alive."""
    rng = random.Random(f"{seed}:live:{clock()}")
    tag = f"live{rng.getrandbits(32):08x}"
    writers = {p: _SessionWriter(p, random.Random(rng.getrandbits(64)), tag) for p in projects}
    ordered = list(writers)
    pending: list[tuple[str, int, str, Message]] = []
    order = itertools.count()
    last = clock()
    while True:
        now = clock()
        expected = (now - last) * sessions_per_minute / 60.0
        last = now
        starts = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
        now_ms = int(now * 1000)
        for _ in range(starts):
            project = ordered[int(rng.random() * len(ordered))]
            week = datetime.fromtimestamp(now, UTC).isocalendar().week
            for message in writers[project].session(now_ms, week):
                heapq.heappush(pending, (message["timestamp"], next(order), project, message))
        due: dict[str, list[Message]] = {}
        current = _iso_ms(now_ms, writers[ordered[0]].prefixes)
        while pending and pending[0][0] <= current:
            _, _, project, message = heapq.heappop(pending)
            due.setdefault(project, []).append(message)
        today = datetime.fromtimestamp(now, UTC).date()
        for project, messages in due.items():
            yield DemoBatch(project, today, messages)
        await asyncio.sleep(tick_s)


async def send_live(
    client: IngestClient,
    projects: Sequence[str],
    *,
    sessions_per_minute: float = 30.0,
    seed: int = 7,
    progress: Progress | None = None,
    progress_every_s: float = 30.0,
) -> None:
    """Send the live trickle until cancelled."""
    last_report = time.monotonic()
    reported = client.stats.accepted
    async for batch in iter_live(projects, sessions_per_minute, seed):
        await client.send(batch.project, batch.messages)
        now = time.monotonic()
        if progress is not None and now - last_report >= progress_every_s:
            sent = client.stats.accepted - reported
            progress(f"demo: live: {sent:,} events in the last {now - last_report:.0f}s")
            last_report, reported = now, client.stats.accepted
