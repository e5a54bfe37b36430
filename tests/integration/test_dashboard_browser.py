"""The dashboard in real headless Chromium (Debian's, driven by Playwright), over the query app
with a generated dataset: signing in by keyboard, every page rendering without a console error,
the overview's numbers equal to the API's for the same range and filters, a funnel built in the
UI equal to the API's answer, CSV exports that parse, share links that work logged out for
their dashboard only, a viewer kept from admin actions, forged and cross-project requests
refused, no serious or critical axe-core violation, and the restore progress shown in place
of a chart until archived days are readable. Screenshots of the main pages are written to
docs/screenshots/ when STRATA_UPDATE_SCREENSHOTS=1 (`just screenshots`)."""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, BrowserContext, Page

from libs.common import keys, users
from libs.common.day_files import DayFileCache
from libs.common.object_store import ObjectStoreOptions, open_object_store
from libs.common.subjects import Subjects
from services.query.scan_engine import ScanEngine
from services.tiering.tier_moves import archive_cold_parts
from tests.support.analytics_dataset import generate_events, load
from tests.support.browser import visitor_browser
from tests.support.project import TestProject
from tests.support.query_app import FAST_PASSWORD_HASHER, get_json, query_client
from tests.support.tier_layouts import tier_layout

pytestmark = [pytest.mark.infra, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "tests" / "support" / "axe" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery"
PAGES = [
    "overview",
    "dashboards",
    "insights",
    "funnels",
    "retention",
    "paths",
    "cohorts",
    "metrics",
    "experiments",
    "events",
    "tiers",
    "setup",
    "settings",
]


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    """One Chromium for the whole module (a launch costs about a second)."""
    async with visitor_browser() as launched:
        yield launched


class Site:
    """The query app on a real port, a dataset of the last 40 days, and four users."""

    def __init__(self, client: TestClient, shots: Path) -> None:  # type: ignore[type-arg]
        self.client = client
        self.base = str(client.make_url("")).rstrip("/")
        self.shots = shots

    async def api(self, path: str, key: str, params: Any = None) -> Any:
        status, body = await get_json(self.client, path, key, params)
        assert status == 200, body
        return body

    async def post(self, path: str, key: str, body: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        async with self.client.post(path, json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            return await r.json()


@pytest.fixture
async def site(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject, tmp_path: Path
) -> AsyncIterator[Site]:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    events = generate_events("acme", today - timedelta(days=40), 40, devices=120, seed=11)
    async with pool.acquire() as conn:
        await load(conn, events)
        await keys.ensure_project(conn, "globex", "Globex")
        for email, roles in (
            ("adam@example.com", {"acme": "admin"}),
            ("vera@example.com", {"acme": "viewer"}),
            ("otto@example.com", {"globex": "admin"}),
        ):
            user = await users.create_user(conn, email, PASSWORD, hasher=FAST_PASSWORD_HASHER)
            for project_id, role in roles.items():
                await users.set_role(conn, user.id, project_id, role)
    async with query_client(pool, nats_url, subjects) as client:
        yield Site(client, tmp_path / "shots")


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "response",
            lambda r: (
                r.status >= 400 and self.errors.append(f"{r.status} {r.request.method} {r.url}")
            ),
        )


async def open_page(context: BrowserContext) -> Watched:
    page = await context.new_page()
    return Watched(page)


async def sign_in_by_keyboard(watched: Watched, base: str, email: str) -> None:
    page = watched.page
    await page.goto(f"{base}/")
    try:
        await page.wait_for_selector("text=Sign in to Strata")
    except Exception:
        raise AssertionError(f"{watched.errors} {page.url} {await page.content()}") from None
    await page.keyboard.type(email)  # the e-mail field has the focus
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await page.wait_for_selector("[data-testid=overview][data-ready=true]", timeout=30_000)


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Serious or critical axe-core violations of the page as it is."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the debugging protocol, which the page's CSP does not govern.
        await page.evaluate(AXE.read_text() + "\n;true")
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def screenshot(site: Site, page: Page, name: str) -> None:
    site.shots.mkdir(parents=True, exist_ok=True)
    path = site.shots / f"{name}.png"
    await page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 10_000, f"{name} screenshot is blank"
    if os.environ.get("STRATA_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / f"{name}.png")


def last_30_days() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"from": (today - timedelta(days=29)).isoformat(), "to": today.isoformat()}


async def kpis(page: Page) -> dict[str, float]:
    await page.wait_for_selector("[data-testid=overview][data-ready=true]")
    values = await page.eval_on_selector_all(
        "[data-testid^=kpi-]", "els => els.map(e => [e.dataset.testid.slice(4), e.dataset.value])"
    )
    return {name: float(v) for name, v in values if v != ""}


async def test_an_admin_uses_every_page_and_its_numbers_are_the_apis(
    chromium: Browser, site: Site, project: TestProject
) -> None:
    context = await chromium.new_context(
        viewport={"width": 1360, "height": 900}, accept_downloads=True
    )
    try:
        watched = await open_page(context)
        page = watched.page
        await page.goto(f"{site.base}/login")
        await page.wait_for_selector("text=Sign in to Strata")
        assert await axe_violations(page) == []
        await screenshot(site, page, "login")
        await sign_in_by_keyboard(watched, site.base, "adam@example.com")

        # The overview's key figures are the metrics API's for the same range...
        window = last_30_days()
        metrics = (
            "visitors,pageviews,sessions,views_per_session,bounce_rate,avg_session_duration,events"
        )
        expected = await site.api(
            "/api/v1/analytics/metrics",
            project.read_key,
            {**window, "metrics": metrics, "interval": "day", "timezone": "UTC"},
        )
        shown = await kpis(page)
        assert shown == pytest.approx({m: expected["totals"][m] for m in shown}, rel=1e-9)
        assert set(shown) >= {"visitors", "pageviews", "sessions", "bounce_rate"}
        assert shown["visitors"] > 0
        await page.wait_for_selector("[data-testid=freshness]")
        assert await axe_violations(page) == []
        await screenshot(site, page, "overview")

        # ...and after clicking a row (keyboard: focus it, press Enter) for the same filter.
        row = page.get_by_role("button", name="organic_search")
        await row.focus()
        await page.keyboard.press("Enter")
        await page.wait_for_url("**filter=channel%3Aorganic_search**")
        filtered = await site.api(
            "/api/v1/analytics/metrics",
            project.read_key,
            [
                *window.items(),
                ("metrics", metrics),
                ("interval", "day"),
                ("filter", "channel:organic_search"),
            ],
        )
        await page.wait_for_function(
            "v => document.querySelector('[data-testid=kpi-visitors]')?.dataset.value"
            " === String(v)",
            arg=filtered["totals"]["visitors"],
        )
        shown = await kpis(page)
        assert shown == pytest.approx({m: filtered["totals"][m] for m in shown}, rel=1e-9)
        assert shown["visitors"] < expected["totals"]["visitors"]

        # A table's CSV export parses and holds the table's rows (the API's top pages).
        await page.get_by_role("button", name="Remove filter channel:organic_search").click()
        await page.wait_for_function(
            "v => document.querySelector('[data-testid=kpi-visitors]')?.dataset.value"
            " === String(v)",
            arg=expected["totals"]["visitors"],
        )
        await page.wait_for_selector("[data-testid=overview][data-ready=true]")
        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Export CSV of Top pages").click()
        download = await download_info.value
        text = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
        rows = list(csv.DictReader(text.splitlines()))
        top = await site.api("/api/v1/analytics/pages", project.read_key, {**window, "limit": "10"})
        assert [(r["Page"], int(r["Pageviews"])) for r in rows] == [
            (p["page"], p["pageviews"]) for p in top["pages"]
        ]

        # The pages panel's exit pages are the metrics API's sessions by exit page.
        await page.get_by_role("tab", name="Exit pages").click()
        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Export CSV of Exit pages").click()
        download = await download_info.value
        text = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
        exits = await site.api(
            "/api/v1/analytics/metrics",
            project.read_key,
            {**window, "metrics": "sessions,bounce_rate", "breakdown": "exit_page", "limit": "10"},
        )
        assert [
            (r["Exit page"], int(r["Sessions"])) for r in csv.DictReader(text.splitlines())
        ] == [(r["value"], r["totals"]["sessions"]) for r in exits["breakdown"]["results"]]
        assert exits["breakdown"]["results"]

        # Every page renders (its heading), with no console error.
        for name in PAGES:
            await page.goto(f"{site.base}/p/acme/{name}")
            await page.wait_for_selector("main h1", timeout=15_000)
            await page.wait_for_load_state("networkidle")
            if name == "setup":
                await page.wait_for_selector("text=Events are arriving")

        # A funnel built in the UI answers what the API answers.
        await page.goto(f"{site.base}/p/acme/funnels")
        await page.get_by_label("Step 2 event").fill("signup")
        await page.get_by_role("button", name="Run funnel").click()
        await page.wait_for_selector("[data-testid=funnel-result]")
        answer = await site.post(
            "/api/v1/analytics/funnels",
            project.read_key,
            {
                **window,
                "timezone": "UTC",
                "steps": [{"event": "$pageview"}, {"event": "signup"}],
                "window": {"value": 7, "unit": "day"},
            },
        )
        for step in answer["steps"]:
            text = await page.text_content(f"[data-testid=funnel-step-{step['step']}]")
            assert int(text or "-1") == step["count"]
        assert answer["steps"][1]["count"] > 0
        assert await axe_violations(page) == []
        await screenshot(site, page, "funnel")

        for name, ready in (
            ("retention", "Run retention"),
            ("paths", "Show paths"),
        ):
            await page.goto(f"{site.base}/p/acme/{name}")
            await page.get_by_role("button", name=ready).click()
            await page.wait_for_selector(f"[data-testid={name}-result]")
            assert await axe_violations(page) == []
            await screenshot(site, page, name)

        # The ready-made overview dashboard, shared by a link.
        await page.goto(f"{site.base}/p/acme/dashboards/overview")
        await page.wait_for_selector("[data-insight=overview-pages] table")
        await page.get_by_role("button", name="Create a read-only link").click()
        link = await (await page.wait_for_selector("[data-testid=share-link]")).input_value()
        assert await axe_violations(page) == []
        await screenshot(site, page, "dashboard")
        for name in ("settings", "tiers", "setup"):
            await page.goto(f"{site.base}/p/acme/{name}")
            await page.wait_for_load_state("networkidle")
            assert await axe_violations(page) == [], name
        await screenshot(site, page, "setup")
        assert watched.errors == []

        # Logged out, the link shows that dashboard and nothing else.
        # axe-core is injected inline: the page's CSP (scripts from its own origin only) is
        # set aside for the test contexts.
        outsider = await chromium.new_context(
            viewport={"width": 1360, "height": 900}, bypass_csp=True
        )
        try:
            shared = await open_page(outsider)
            await shared.page.goto(link)
            await shared.page.wait_for_selector("[data-insight=overview-channels] table")
            assert await shared.page.locator("[data-insight]").count() == 5
            assert await axe_violations(shared.page) == []
            await screenshot(site, shared.page, "shared-dashboard")
            token = link.rsplit("/", 1)[1]
            statuses = await shared.page.evaluate(
                """async token => {
                    const h = {headers: {"X-Strata-Share": token}};
                    const paths = ["/api/v1/analytics/events", "/api/v1/insights",
                                   "/api/v1/analytics/metrics?metrics=visitors,events",
                                   "/api/v1/dashboards/product"];
                    return Promise.all(paths.map(p => fetch(p, h).then(r => r.status)));
                }""",
                token,
            )
            assert statuses == [403, 403, 403, 403]
            assert [e for e in shared.errors if "403" not in e] == []
        finally:
            await outsider.close()
    finally:
        await context.close()


async def test_a_viewer_cannot_reach_admin_actions_and_forged_requests_are_refused(
    chromium: Browser, site: Site
) -> None:
    context = await chromium.new_context(bypass_csp=True)
    try:
        watched = await open_page(context)
        page = watched.page
        await sign_in_by_keyboard(watched, site.base, "vera@example.com")
        assert await page.text_content("[data-testid=role]") == "viewer"
        await page.goto(f"{site.base}/p/acme/settings")
        await page.wait_for_selector("[data-testid=not-admin]")
        assert await page.get_by_role("region", name="Members").count() == 0
        assert await page.get_by_role("button", name="Save settings").count() == 0
        await page.goto(f"{site.base}/p/acme/overview")
        await page.wait_for_selector("[data-testid=overview][data-ready=true]")
        assert await page.get_by_role("button", name="Add annotation").count() == 0
        # What the page could still try by hand, the server refuses.
        statuses = await page.evaluate(
            """async () => {
                const me = await (await fetch("/api/v1/auth/me")).json();
                const json = {"Content-Type": "application/json", "X-CSRF-Token": me.csrf_token};
                const post = (path, body, headers) =>
                    fetch(path, {method: "POST", headers, body: JSON.stringify(body)})
                        .then(r => r.status);
                const insight = {name: "x", definition: {kind: "pages"}};
                return [
                    await post("/api/v1/keys?project=acme", {role: "admin"}, json),
                    await post("/api/v1/members?project=acme",
                               {email: "e@x.io", role: "admin"}, json),
                    await post("/api/v1/insights?project=acme", insight, json),
                    // No CSRF token: refused whatever the role.
                    await post("/api/v1/auth/password", {current_password: "a", new_password: "b"},
                               {"Content-Type": "application/json"}),
                    // Another project's data.
                    await fetch("/api/v1/analytics/metrics?project=globex").then(r => r.status),
                    await fetch("/api/v1/dashboards?project=globex").then(r => r.status),
                ];
            }"""
        )
        assert statuses == [403, 403, 403, 403, 403, 403]
    finally:
        await context.close()


async def test_a_chart_over_archived_days_shows_the_restore_then_the_answer_in_place(
    chromium: Browser,
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    first_day = datetime(2025, 4, 1, tzinfo=UTC)  # past cold_days: its files go to Archive
    events = generate_events("acme", first_day, 6, devices=40, seed=5)
    async with tier_layout("all_exported", pool, events, tmp_path, move_cold=True) as layout:
        run = await archive_cold_parts(pool, layout.store)
        assert not run.failures and run.parts_archived > 0
        store = open_object_store(
            f"file://{tmp_path / 'objects-all_exported'}",
            ObjectStoreOptions(file_restore_delay_s=3),
        )
        engine = ScanEngine(DayFileCache(tmp_path / "cache-restores", 256 * 1024 * 1024, store))
        async with pool.acquire() as conn:
            user = await users.create_user(
                conn, "adam@example.com", PASSWORD, hasher=FAST_PASSWORD_HASHER
            )
            await users.set_role(conn, user.id, "acme", "admin")
        try:
            async with query_client(pool, nats_url, subjects, scan_engine=engine) as client:
                base = str(client.make_url("")).rstrip("/")
                context = await chromium.new_context()
                try:
                    watched = await open_page(context)
                    page = watched.page
                    await sign_in_by_keyboard(watched, base, "adam@example.com")
                    await page.goto(f"{base}/p/acme/funnels?from=2025-04-01&to=2025-04-06")
                    await page.evaluate("window.sameDocument = true")
                    await page.get_by_role("button", name="Run funnel").click()
                    progress = await page.wait_for_selector("[data-testid=restore-progress]")
                    assert "Restoring archived days 2025-04-01" in (
                        await progress.text_content() or ""
                    )
                    await page.wait_for_selector("[data-testid=funnel-result]", timeout=30_000)
                    # The answer replaced the progress in the same document, no reload.
                    assert await page.evaluate("window.sameDocument") is True
                    assert await page.locator("[data-testid=restore-progress]").count() == 0
                    expected = await client.post(
                        "/api/v1/analytics/funnels",
                        json={
                            "from": "2025-04-01",
                            "to": "2025-04-06",
                            "timezone": "UTC",
                            "steps": [{"event": "$pageview"}, {"event": "signup"}],
                            "window": {"value": 7, "unit": "day"},
                        },
                        headers={"Authorization": f"Bearer {project.read_key}"},
                    )
                    answer = await expected.json()
                    assert answer["steps"][0]["count"] > 0
                    for step in answer["steps"]:
                        shown = await page.text_content(f"[data-testid=funnel-step-{step['step']}]")
                        assert int(shown or "-1") == step["count"]
                finally:
                    await context.close()
        finally:
            engine.close()
            await store.close()
