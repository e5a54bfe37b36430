"""The browser tracker in real headless Chromium (Debian's package, driven by Playwright): a
test page served locally loads /t.js from an in-process ingest, and what the visitor does
arrives on the raw stream with the right fields, without any client storage before consent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from nats.js import JetStreamContext
from playwright.async_api import Browser, BrowserContext, Page, Route

from libs.common.schemas.events_v1 import EventV1
from libs.common.subjects import Subjects
from services.ingest.cookieless import salts_bucket
from tests.support.browser import VISITOR_AGENT, ensure_chromium, visitor_browser
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client
from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.tracker import PARTITIONS, RunningIngest, start_ingest

pytestmark = [pytest.mark.infra, pytest.mark.browser]

# Calls made before t.js loads are queued by this stub (docs/tracker.md).
QUEUE_STUB = (
    "window.strata=window.strata||[];['track','page','identify','reset','consent']"
    ".forEach(function(m){strata[m]=strata[m]||function(){"
    "strata.push([m].concat([].slice.call(arguments)))}})"
)

SHOP_PAGE = """<!doctype html>
<html><head><title>Shop</title>{head}
<script src="{ingest}/t.js" data-write-key="{key}" {attributes} defer></script></head>
<body style="margin:0">
<h1 style="font-size:48px">Strata test shop</h1>
<p style="font-size:24px">Everything a visitor needs to find, painted large enough for LCP.</p>
<button id="signup" data-analytics="Signup Click" data-analytics-plan="pro"
  data-analytics-billing-cycle="yearly">Sign up</button>
<form id="newsletter" action="/subscribe"><input name="topic" value="news">
  <button id="join" class="primary btn w-1/2" type="submit">Join</button></form>
<a id="partner" href="{partner}/landing.html">Our partner</a>
<div style="height:4000px"></div>
<script>
  // A slow click handler, so the interaction is long enough to be measured for INP.
  document.getElementById('signup').addEventListener('click', function () {{
    var end = performance.now() + 80; while (performance.now() < end) {{}}
  }});
  document.getElementById('newsletter').addEventListener('submit', function (e) {{
    e.preventDefault();
  }});
</script>
</body></html>"""


class Site:
    """The test pages: `shop` on http://localhost:PORT, `partner` on http://127.0.0.1:PORT
    (another host, so links to it are outbound)."""

    def __init__(self, ingest: RunningIngest, write_key: str) -> None:
        self.ingest = ingest
        self.write_key = write_key
        self.server: TestServer | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{page}.html", self._page)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    @property
    def shop(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def partner(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _page(self, request: web.Request) -> web.Response:
        query = request.query
        html = SHOP_PAGE.format(
            head=f"<script>{QUEUE_STUB};{query['early']}</script>" if "early" in query else "",
            ingest=self.ingest.origin,
            key=self.write_key,
            attributes=query.get("attributes", ""),
            partner=self.partner,
        )
        return web.Response(text=html, content_type="text/html")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


@pytest.fixture
async def site(
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    pool: asyncpg.Pool,
    project: TestProject,
) -> AsyncIterator[Site]:
    ingest = await start_ingest(nats_url, js, subjects, pool)
    pages = Site(ingest, project.write_key)
    await pages.start()
    try:
        yield pages
    finally:
        await pages.close()
        await ingest.close()
        try:
            await js.delete_key_value(salts_bucket(subjects))
        except Exception:
            pass


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return str(ensure_chromium())


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with visitor_browser() as launched:
        yield launched


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    opened = await browser.new_context(user_agent=VISITOR_AGENT)
    try:
        yield opened
    finally:
        await opened.close()


async def _loaded(page: Page, url: str) -> None:
    await page.goto(url)
    await page.wait_for_function("window.strata && window.strata.v === 1")


async def _storage(page: Page) -> list[Any]:
    return list(
        await page.evaluate("[document.cookie, localStorage.length, sessionStorage.length]")
    )


def _named(events: list[EventV1], name: str) -> list[EventV1]:
    # Retries and beacons may carry an event twice: one event id is one event.
    unique = {event.event_id: event for event in events if event.name == name}
    return list(unique.values())


def _has(*names: str, pageviews: int = 0) -> Any:
    def arrived(events: list[EventV1]) -> bool:
        found = {event.name for event in events}
        return set(names) <= found and len(_named(events, "$pageview")) >= pageviews

    return arrived


async def test_a_visit_before_consent_arrives_complete_and_stores_nothing(
    site: Site, context: BrowserContext
) -> None:
    page = await context.new_page()
    await _loaded(page, f"{site.shop}/shop.html")
    assert await _storage(page) == ["", 0, 0]

    await page.evaluate("history.pushState({}, '', '/pricing')")
    await page.evaluate("location.hash = 'faq'")
    await page.wait_for_function("location.hash === '#faq'")
    await page.click("#signup")
    await page.evaluate(
        "setTimeout(function () { throw new Error('boom') }, 0);"
        "setTimeout(function () { Promise.reject(new Error('nope')) }, 0);"
    )
    await page.click("#join")
    await page.evaluate("window.scrollTo(0, 1000)")
    await page.evaluate("strata.identify('user-7', {plan: 'pro'})")
    await page.evaluate("strata.track('Checkout Started', {value: 42})")
    assert await _storage(page) == ["", 0, 0]
    # Leaving through an outbound link: the page's last events go by sendBeacon at pagehide.
    await page.click("#partner")
    await page.wait_for_url(f"{site.partner}/landing.html")

    events = await site.ingest.wait_for_events(
        _has(
            "Signup Click",
            "$error",
            "$form_submit",
            "$identify",
            "Checkout Started",
            "$outbound_click",
            "$web_vitals",
            "$page_leave",
            pageviews=4,
        )
    )
    assert {event.project_id for event in events} == {"acme"}
    assert {(event.browser, event.is_bot) for event in events} == {("Chrome", False)}

    pageviews = sorted(_named(events, "$pageview"), key=lambda event: event.ts)
    assert [(event.path, event.url) for event in pageviews] == [
        ("/shop.html", f"{site.shop}/shop.html"),
        ("/pricing", f"{site.shop}/pricing"),
        ("/pricing", f"{site.shop}/pricing#faq"),
        ("/landing.html", f"{site.partner}/landing.html"),
    ]
    assert pageviews[0].title == "Shop"
    # SPA navigation: the page navigated from is the referrer, inside the site.
    assert pageviews[1].referrer == f"{site.shop}/shop.html"
    # Across origins the browser's default referrer policy sends only the origin.
    assert pageviews[3].referrer == f"{site.shop}/"

    # Cookieless: no client id; ingest derived one visitor id, the same on the partner site
    # (same project, address and browser, same day), and it is the device key of every event.
    visitors = {event.distinct_id for event in events}
    assert len(visitors) == 1 and next(iter(visitors)).startswith("cl-")
    assert all(event.properties.get("$cookieless") is True for event in events)

    [signup] = _named(events, "Signup Click")
    assert signup.properties["plan"] == "pro"
    assert signup.properties["billing_cycle"] == "yearly"
    assert signup.path == "/pricing" and signup.user_id is None

    errors = {event.properties.get("kind", "error"): event for event in _named(events, "$error")}
    assert "boom" in errors["error"].properties["message"]
    assert errors["error"].properties["line"] > 0
    assert "nope" in errors["unhandledrejection"].properties["message"]

    [form] = _named(events, "$form_submit")
    assert form.properties["form_id"] == "newsletter"
    assert form.properties["action"] == "/subscribe"

    [identify] = _named(events, "$identify")
    assert identify.type == "identify"
    assert (identify.user_id, identify.traits) == ("user-7", {"plan": "pro"})
    [checkout] = _named(events, "Checkout Started")
    assert checkout.user_id == "user-7" and checkout.properties["value"] == 42

    [outbound] = _named(events, "$outbound_click")
    assert outbound.properties["url"] == f"{site.partner}/landing.html"
    assert outbound.properties["text"] == "Our partner"

    [vitals] = _named(events, "$web_vitals")
    assert vitals.non_interactive is True
    assert vitals.path == "/shop.html"  # measured for the page as loaded
    for metric in ("lcp", "fcp", "ttfb", "inp"):
        assert isinstance(vitals.properties[metric], int), metric
        assert vitals.properties[metric] >= 0
    assert vitals.properties["inp"] >= 80  # the slow click handler
    assert isinstance(vitals.properties["cls"], int | float)

    leaves = {event.url: event for event in _named(events, "$page_leave")}
    last = leaves[f"{site.shop}/pricing#faq"]
    assert last.non_interactive is True
    assert last.properties["engaged_ms"] > 0
    assert 0 < last.properties["scroll_depth"] <= 100

    # No cookie and no storage on either origin, at any point.
    assert await context.cookies() == []
    state = await context.storage_state()
    assert all(not origin["localStorage"] for origin in state["origins"])


async def test_after_consent_the_visitor_keeps_one_anonymous_id(
    site: Site, context: BrowserContext
) -> None:
    page = await context.new_page()
    # Consent and an event called before t.js loaded (the queue stub).
    early = "strata.consent({analytics: true}); strata.track('Early Bird', {n: 1})"
    await _loaded(page, f"{site.shop}/shop.html?attributes=data-autocapture&early={early}")
    stored_id = await page.evaluate("localStorage.getItem('strata_aid')")
    assert stored_id
    await page.evaluate("strata.track('Second Visit Soon')")
    await page.reload()
    await page.wait_for_function("window.strata && window.strata.v === 1")
    await page.evaluate("strata.track('After Reload')")
    await page.click("#join")  # autocaptured: the tag has data-autocapture

    events = await site.ingest.wait_for_events(
        _has("Early Bird", "Second Visit Soon", "After Reload", "$click", pageviews=2)
    )
    assert {event.anonymous_id for event in events} == {stored_id}
    assert {event.distinct_id for event in events} == {stored_id}
    assert not any("$cookieless" in event.properties for event in events)
    # The queued call runs once per page load (the page was loaded twice).
    early_birds = _named(events, "Early Bird")
    assert [event.properties for event in early_birds] == [{"n": 1}, {"n": 1}]

    [click] = _named(events, "$click")
    assert (click.properties["tag"], click.properties["text"]) == ("button", "Join")
    assert click.properties["id"] == "join"
    # The element chain selectors match on: root first, classes sorted, odd ones left out.
    assert (
        click.properties["$elements"] == "html > body > form#newsletter > button#join.btn.primary"
    )

    # Withdrawing consent clears everything the tracker stored.
    await page.evaluate("strata.consent({analytics: false})")
    assert [key for key in await page.evaluate("Object.keys(localStorage)")] == []


async def test_do_not_track_and_gpc_are_honoured_when_the_tag_says_so(
    site: Site, browser: Browser
) -> None:
    opted_out = await browser.new_context(user_agent=VISITOR_AGENT)
    await opted_out.add_init_script(
        "Object.defineProperty(navigator, 'globalPrivacyControl', {get: () => true})"
    )
    try:
        batches: list[str] = []
        page = await opted_out.new_page()
        page.on(
            "request",
            lambda request: (
                batches.append(request.post_data or "")
                if request.url.endswith("/v1/batch")
                else None
            ),
        )
        await _loaded(page, f"{site.shop}/shop.html?attributes=data-respect-dnt")
        await page.evaluate(
            "strata.consent({analytics: true}); strata.track('Ignored'); strata.flush()"
        )
        assert await _storage(page) == ["", 0, 0]
        await page.click("#signup")
        # Leaving would beacon anything queued: nothing is.
        await page.goto(f"{site.partner}/shop.html")
        await page.wait_for_function("window.strata && window.strata.v === 1")
        # The partner page's tag does not ask for it: the same browser is counted there.
        await page.evaluate("strata.track('Counted')")
        await page.evaluate("strata.flush()")
        events = await site.ingest.wait_for_events(_has("Counted"))
    finally:
        await opted_out.close()
    assert [event for event in events if (event.url or "").startswith(site.shop)] == []
    assert batches and not any("Ignored" in body or "Signup" in body for body in batches)


async def test_a_tracked_visit_is_visible_through_the_query_api(
    site: Site,
    context: BrowserContext,
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    subjects: Subjects,
    pool: asyncpg.Pool,
    project: TestProject,
) -> None:
    # The rest of the pipeline as deployed: sessionizer and aggregator processes.
    env = service_env(database_url, nats_url, subjects.prefix, partitions=PARTITIONS)
    ports = {"sessionizer": free_port(), "aggregator": free_port()}
    services = [
        ServiceProcess(name, {**env, "STRATA_HEALTH_PORT": str(port)}, tmp_path).start()
        for name, port in ports.items()
    ]
    try:
        for service, port in zip(services, ports.values(), strict=True):
            await asyncio.to_thread(service.wait_http, port)
        page = await context.new_page()
        await _loaded(page, f"{site.shop}/shop.html")
        await page.click("#signup")
        await page.click("#partner")
        await page.wait_for_url(f"{site.partner}/landing.html")

        async with query_client(pool, nats_url, subjects) as query:
            names: list[str] = []
            for _ in range(150):
                status, found = await get_json(
                    query, "/api/v1/analytics/events", project.read_key, {"limit": "100"}
                )
                assert status == 200, found
                names = [event["name"] for event in found["events"]]
                if names.count("$pageview") == 2 and "$web_vitals" in names:
                    break
                await asyncio.sleep(0.2)
            assert names.count("$pageview") == 2 and "$web_vitals" in names, names

            status, found = await get_json(
                query,
                "/api/v1/analytics/events",
                project.read_key,
                {"name": "Signup Click"},
            )
            [signup] = found["events"]
            assert signup["properties"]["plan"] == "pro"
            assert signup["session_id"]

            status, pages = await get_json(
                query, "/api/v1/analytics/pages", project.read_key, {"source": "events"}
            )
            assert status == 200, pages
            by_page = {row["page"]: row for row in pages["pages"]}
            assert by_page["/shop.html"]["pageviews"] == 1
            assert by_page["/shop.html"]["visitors"] == 1
            assert by_page["/landing.html"]["pageviews"] == 1

            status, performance = await get_json(
                query, "/api/v1/analytics/performance", project.read_key
            )
            assert status == 200, performance
            assert performance["overall"]["lcp"]["samples"] == 1
    finally:
        for service in services:
            service.stop()


async def test_failed_deliveries_are_retried_and_kept_offline_after_consent(
    site: Site, context: BrowserContext
) -> None:
    page = await context.new_page()
    attempts: list[str] = []

    async def network_down(route: Route) -> None:
        attempts.append(route.request.post_data or "")
        await route.abort("internetdisconnected")

    await context.route("**/v1/batch", network_down)
    await _loaded(page, f"{site.shop}/shop.html")
    await page.evaluate("strata.consent({analytics: true}); strata.track('Offline Event')")
    for _ in range(100):
        if any("Offline Event" in body for body in attempts):
            break
        await asyncio.sleep(0.1)
    assert any("Offline Event" in body for body in attempts), "the tracker never tried to send"
    # The attempt failed: the batch waits in the bounded queue, kept in localStorage now that
    # the visitor consented.
    assert "Offline Event" in await page.evaluate("localStorage.getItem('strata_q')")

    # Back online: the next retry (with backoff) delivers what was queued, each event once.
    await context.unroute("**/v1/batch")
    events = await site.ingest.wait_for_events(_has("Offline Event", pageviews=1))
    assert len(_named(events, "Offline Event")) == 1
    await page.wait_for_function("JSON.parse(localStorage.getItem('strata_q')).length === 0")

    # Queued while offline, and the browser refused the beacon at page leave (it does past its
    # quota): sent on the next visit.
    await context.route("**/v1/batch", network_down)
    await page.evaluate("navigator.sendBeacon = () => false; strata.track('Sent Next Visit')")
    await page.wait_for_function("localStorage.getItem('strata_q').includes('Sent Next Visit')")
    await page.goto("about:blank")
    await page.close()
    await context.unroute("**/v1/batch")
    next_visit = await context.new_page()
    await _loaded(next_visit, f"{site.shop}/shop.html")
    events = await site.ingest.wait_for_events(_has("Sent Next Visit"))
    assert len(_named(events, "Sent Next Visit")) == 1
