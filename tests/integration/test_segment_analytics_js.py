"""Segment's official browser library, @segment/analytics-next, unchanged, against Strata: a test
page served locally loads the library's pinned bundle (tests/support/analytics_js, `just
analytics-js`) in headless Chromium, points it at an in-process ingest with the load options
docs/api-ingest.md documents, and what the visitor does arrives on the raw stream mapped to
Strata's events, with no request leaving the machine (no Segment CDN, API or telemetry)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from nats.js import JetStreamContext
from playwright.async_api import Browser, BrowserContext, Page, Request

from libs.common.schemas.events_v1 import EventV1
from libs.common.subjects import Subjects
from tests.support.browser import VISITOR_AGENT, visitor_browser
from tests.support.project import TestProject
from tests.support.tracker import RunningIngest, start_ingest

pytestmark = [pytest.mark.infra, pytest.mark.browser]

ANALYTICS_NEXT_BUNDLE = (
    Path(__file__).resolve().parents[1] / "support" / "analytics_js" / "analytics-next.iife.js"
)
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

SHOP_PAGE = """<!doctype html>
<html><head><title>Shop</title>
<script src="/analytics-next.js"></script>
<script>
  window.analytics = SegmentAnalytics.AnalyticsBrowser.load({load_settings});
</script></head>
<body><h1>Strata test shop</h1></body></html>"""


def load_settings(write_key: str, ingest_host: str) -> dict[str, Any]:
    """AnalyticsBrowser.load's first argument for a Strata ingest at `ingest_host`
    (host:port): the CDN settings are given inline, so the library never fetches them."""
    return {
        "writeKey": write_key,
        "cdnSettings": {
            "integrations": {
                "Segment.io": {
                    "apiKey": write_key,
                    "apiHost": f"{ingest_host}/v1",
                    "protocol": "http",
                }
            },
            # The library's own telemetry would otherwise go to api.segment.io.
            "metrics": {"sampleRate": 0},
        },
    }


class Shop:
    """The test page on http://localhost:PORT, serving the analytics-next bundle beside it."""

    def __init__(self, ingest: RunningIngest, write_key: str) -> None:
        self.ingest = ingest
        self.write_key = write_key
        self.server: TestServer | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/analytics-next.js", self._bundle)
        app.router.add_get("/{page}.html", self._page)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    @property
    def origin(self) -> str:
        assert self.server is not None and self.server.port is not None
        return f"http://localhost:{self.server.port}"

    async def _bundle(self, _: web.Request) -> web.Response:
        return web.Response(
            body=ANALYTICS_NEXT_BUNDLE.read_bytes(), content_type="application/javascript"
        )

    async def _page(self, _: web.Request) -> web.Response:
        ingest_host = urlsplit(self.ingest.origin).netloc
        settings = json.dumps(load_settings(self.write_key, ingest_host))
        return web.Response(
            text=SHOP_PAGE.replace("{load_settings}", settings), content_type="text/html"
        )

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


@pytest.fixture
async def shop(
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    pool: asyncpg.Pool,
    project: TestProject,
) -> AsyncIterator[Shop]:
    ingest = await start_ingest(nats_url, js, subjects, pool)
    pages = Shop(ingest, project.write_key)
    await pages.start()
    try:
        yield pages
    finally:
        await pages.close()
        await ingest.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with visitor_browser() as launched:
        yield launched


class OffMachineRequests:
    """Every request the page tries to send off this machine. Observed, not intercepted:
    Playwright answers CORS preflights itself for routed requests, which would hide from the
    test whether ingest's own preflight answers admit the library's requests."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def observe(self, request: Request) -> None:
        if urlsplit(request.url).hostname not in LOCAL_HOSTS:
            self.urls.append(request.url)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[tuple[BrowserContext, OffMachineRequests]]:
    opened = await browser.new_context(user_agent=VISITOR_AGENT)
    off_machine = OffMachineRequests()
    opened.on("request", off_machine.observe)
    try:
        yield opened, off_machine
    finally:
        await opened.close()


async def _message_id(page: Page, call: str) -> str:
    """Runs an analytics call on the page; the messageId of the event it delivered."""
    delivered: str = await page.evaluate(
        f"{call}.then(function (ctx) {{"
        "  var failure = ctx.failedDelivery();"
        "  if (failure) throw failure.reason;"
        "  return ctx.event.messageId;"
        "})"
    )
    return delivered


def _by_id(events: list[EventV1]) -> dict[str, EventV1]:
    return {event.event_id: event for event in events}


async def test_analytics_next_calls_arrive_mapped_without_leaving_the_machine(
    shop: Shop, context: tuple[BrowserContext, OffMachineRequests]
) -> None:
    browser_context, off_machine = context
    page = await browser_context.new_page()
    url = f"{shop.origin}/shop.html?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
    await page.goto(url)

    page_id = await _message_id(page, "analytics.page('Shop', {section: 'home'})")
    anonymous_track_id = await _message_id(
        page, "analytics.track('Added to Cart', {sku: 'A-1', price: 9.5, tags: ['new']})"
    )
    # Segment's sign-up flow: alias the anonymous visitor to the new user id, then identify.
    alias_id = await _message_id(page, "analytics.alias('user-7')")
    identify_id = await _message_id(page, "analytics.identify('user-7', {plan: 'pro'})")
    known_track_id = await _message_id(page, "analytics.track('Checkout Started', {value: 42})")
    group_id = await _message_id(page, "analytics.group('org-7', {name: 'Acme'})")
    anonymous_id: str = await page.evaluate("analytics.instance.user().anonymousId()")

    sent = [page_id, anonymous_track_id, alias_id, identify_id, known_track_id, group_id]
    events = await shop.ingest.wait_for_events(lambda seen: set(sent) <= set(_by_id(seen)))
    # One event per call: the library's messageId is Strata's event id, stored once.
    assert sorted(event.event_id for event in events) == sorted(sent)
    by_id = _by_id(events)
    assert {event.project_id for event in events} == {"acme"}
    assert {(event.browser, event.is_bot) for event in events} == {("Chrome", False)}
    # The library's persistent anonymous id is every event's device key, before and after
    # identify, so one visitor's session and partition stay together.
    assert {(event.anonymous_id, event.distinct_id) for event in events} == {
        (anonymous_id, anonymous_id)
    }
    # Page context rides on every call, not only on page().
    assert {(event.url, event.path, event.title) for event in events} == {
        (url, "/shop.html", "Shop")
    }
    assert {(event.utm_source, event.utm_medium, event.utm_campaign) for event in events} == {
        ("newsletter", "email", "spring")
    }

    pageview = by_id[page_id]
    assert (pageview.type, pageview.name, pageview.user_id) == ("page", "$pageview", None)
    assert pageview.properties["name"] == "Shop"
    assert pageview.properties["section"] == "home"
    assert pageview.channel == "email"

    anonymous_track = by_id[anonymous_track_id]
    assert (anonymous_track.type, anonymous_track.name) == ("track", "Added to Cart")
    assert anonymous_track.user_id is None
    assert anonymous_track.properties == {"sku": "A-1", "price": 9.5, "tags": ["new"]}

    identify = by_id[identify_id]
    assert (identify.type, identify.name, identify.user_id) == ("identify", "$identify", "user-7")
    assert identify.traits == {"plan": "pro"}

    known_track = by_id[known_track_id]
    assert (known_track.name, known_track.user_id) == ("Checkout Started", "user-7")
    assert known_track.properties == {"value": 42}
    assert known_track.person_key == "user-7"

    alias = by_id[alias_id]
    assert (alias.type, alias.name) == ("alias", "$alias")
    assert (alias.previous_id, alias.user_id) == (anonymous_id, "user-7")

    group = by_id[group_id]
    assert (group.type, group.name, group.group_id) == ("group", "$group", "org-7")
    assert group.traits == {"name": "Acme"}

    assert off_machine.urls == []
