"""The dashboard's server side over HTTP: sign-in, cookie sessions (attributes, logout, expiry,
password change), throttling, CSRF, every role check, project isolation, saved insights and
dashboards (versioned, ready-made), annotations, members, keys and share links that show their
dashboard and nothing else. The bearer-key API is unchanged (test_query_api.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from libs.common import keys, users
from libs.common.subjects import Subjects
from services.aggregator.writer import write_events
from tests.integration.test_query_api import DAY, event
from tests.support.project import TestProject
from tests.support.query_app import FAST_PASSWORD_HASHER, query_client

pytestmark = pytest.mark.infra

PASSWORD = "correct horse battery"
METRICS = "/api/v1/analytics/metrics"


@dataclass
class Browser:
    """One signed-in browser: its own cookie jar and the session's CSRF token."""

    client: TestClient  # type: ignore[type-arg]
    csrf: str
    me: dict[str, Any]
    cookie: str

    def headers(self) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf}


async def make_user(pool: asyncpg.Pool, email: str, roles: dict[str, str]) -> str:
    async with pool.acquire() as conn:
        user = await users.create_user(conn, email, PASSWORD, hasher=FAST_PASSWORD_HASHER)
        for project_id, role in roles.items():
            await users.set_role(conn, user.id, project_id, role)
    return user.id


async def sign_in(
    client: TestClient,  # type: ignore[type-arg]
    email: str,
    password: str = PASSWORD,
) -> Browser:
    client.session.cookie_jar.clear()
    async with client.post("/api/v1/auth/login", json={"email": email, "password": password}) as r:
        body = await r.json()
        assert r.status == 200, body
        cookie = r.cookies["strata_session"].value
    client.session.cookie_jar.clear()
    return Browser(client, body["csrf_token"], body, cookie)


@pytest.fixture
async def people(pool: asyncpg.Pool, project: TestProject) -> dict[str, str]:
    """acme's viewer, analyst and admin, and globex's admin (who is nobody in acme)."""
    async with pool.acquire() as conn:
        await keys.ensure_project(conn, "globex", "Globex")
        await write_events(conn, [event("a-1", DAY), event("a-2", DAY + timedelta(minutes=3))])
    return {
        "viewer": await make_user(pool, "Vera@Example.com", {"acme": "viewer"}),
        "analyst": await make_user(pool, "ana@example.com", {"acme": "analyst"}),
        "admin": await make_user(pool, "adam@example.com", {"acme": "admin"}),
        "outsider": await make_user(pool, "otto@example.com", {"globex": "admin"}),
    }


@pytest.fixture
async def client(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects
) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with query_client(pool, nats_url, subjects) as c:
        yield c


async def call(
    browser: Browser, method: str, path: str, body: Any = None, **params: str
) -> tuple[int, Any]:
    browser.client.session.cookie_jar.clear()
    async with browser.client.request(
        method,
        path,
        params=params,
        json=body,
        headers=browser.headers(),
        cookies={"strata_session": browser.cookie},
    ) as r:
        if "strata_session" in r.cookies:  # a password change starts a new session
            browser.cookie = r.cookies["strata_session"].value
        answer = await r.json() if r.content_type == "application/json" else None
    browser.client.session.cookie_jar.clear()
    return r.status, answer


async def test_sign_in_sets_a_safe_cookie_and_sessions_end_on_logout_expiry_and_password_change(
    client: TestClient,  # type: ignore[type-arg]
    pool: asyncpg.Pool,
    people: dict[str, str],
) -> None:
    login = {"email": "vera@example.com", "password": PASSWORD}
    async with client.post("/api/v1/auth/login", json=login) as r:
        assert r.status == 200
        cookie = r.cookies["strata_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
        body = await r.json()
    assert body["user"]["email"] == "vera@example.com"  # stored lower-cased
    assert body["projects"] == [{"id": "acme", "name": "Acme", "role": "viewer", "timezone": "UTC"}]
    # Behind a TLS-terminating proxy the cookie is Secure.
    client.session.cookie_jar.clear()
    headers = {"X-Forwarded-Proto": "https"}
    async with client.post("/api/v1/auth/login", json=login, headers=headers) as r:
        assert r.cookies["strata_session"]["secure"]
    token_hashes = await pool.fetch("SELECT token_hash FROM dashboard_sessions")
    assert all(len(r["token_hash"]) == 32 for r in token_hashes)  # only hashes are stored

    vera = await sign_in(client, "vera@example.com")
    status, _ = await call(vera, "GET", METRICS, project="acme", **{"from": "2025-05-05"})
    assert status == 200
    # Logout ends the session at once; the old cookie is refused.
    assert (await call(vera, "POST", "/api/v1/auth/logout"))[0] == 204
    assert (await call(vera, "GET", "/api/v1/auth/me"))[1]["user"] is None

    # Idle expiry: a session unused for longer than the idle limit is gone.
    vera = await sign_in(client, "vera@example.com")
    await pool.execute("UPDATE dashboard_sessions SET last_seen_at = now() - interval '13 hours'")
    status, body = await call(vera, "GET", "/api/v1/auth/me")
    assert (status, body["user"]) == (200, None)
    status, body = await call(vera, "GET", METRICS, project="acme")
    assert (status, body["error"]) == (401, "your session has expired: sign in again")
    # Absolute expiry, however recently used.
    vera = await sign_in(client, "vera@example.com")
    await pool.execute("UPDATE dashboard_sessions SET expires_at = now() - interval '1 second'")
    assert (await call(vera, "GET", "/api/v1/auth/me"))[1]["user"] is None

    # A password change ends every other session; the changing browser gets a new one.
    other = await sign_in(client, "vera@example.com")
    vera = await sign_in(client, "vera@example.com")
    change = {"current_password": "wrong password!", "new_password": "a new long secret"}
    assert (await call(vera, "POST", "/api/v1/auth/password", change))[0] == 403
    change["current_password"] = PASSWORD
    status, body = await call(vera, "POST", "/api/v1/auth/password", change)
    assert status == 200
    vera.csrf = body["csrf_token"]
    assert (await call(vera, "GET", "/api/v1/auth/me"))[1]["user"]["email"] == "vera@example.com"
    assert (await call(other, "GET", "/api/v1/auth/me"))[1]["user"] is None
    await sign_in(client, "vera@example.com", "a new long secret")


async def test_failed_sign_ins_are_throttled_per_email_and_say_when_to_retry(
    client: TestClient,  # type: ignore[type-arg]
    people: dict[str, str],
) -> None:
    wrong = {"email": "ana@example.com", "password": "not the password"}
    for _ in range(5):
        async with client.post("/api/v1/auth/login", json=wrong) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "wrong e-mail or password"
    # Locked: even the right password is refused until the window passes.
    right = {"email": "ana@example.com", "password": PASSWORD}
    async with client.post("/api/v1/auth/login", json=right) as r:
        assert r.status == 429
        assert 0 < int(r.headers["Retry-After"]) <= 900
        assert "too many failed sign-ins" in (await r.json())["error"]
    # Another account is not locked by it; an unknown address answers like a wrong password.
    await sign_in(client, "adam@example.com")
    nobody = {"email": "nobody@example.com", "password": PASSWORD}
    async with client.post("/api/v1/auth/login", json=nobody) as r:
        assert r.status == 401
    # A form post from another site is no sign-in.
    async with client.post(
        "/api/v1/auth/login", json=right, headers={"Origin": "https://evil.example"}
    ) as r:
        assert r.status == 403


async def test_every_mutation_needs_the_session_csrf_token_and_same_origin(
    client: TestClient,  # type: ignore[type-arg]
    people: dict[str, str],
) -> None:
    ana = await sign_in(client, "ana@example.com")
    insight = {
        "name": "Visitors",
        "definition": {"kind": "metrics", "query": {"metrics": "visitors"}},
    }
    path = "/api/v1/insights"
    client.session.cookie_jar.update_cookies({"strata_session": ana.cookie})
    async with client.post(path, params={"project": "acme"}, json=insight) as r:
        assert r.status == 403
        assert "X-CSRF-Token" in (await r.json())["error"]
    bad = {"X-CSRF-Token": "forged"}
    async with client.post(path, params={"project": "acme"}, json=insight, headers=bad) as r:
        assert r.status == 403
    cross = {**ana.headers(), "Origin": "https://evil.example"}
    async with client.post(path, params={"project": "acme"}, json=insight, headers=cross) as r:
        assert r.status == 403
    # Deleting and signing out are mutations too.
    async with client.post("/api/v1/auth/logout") as r:
        assert r.status == 403
    status, created = await call(ana, "POST", path, insight, project="acme")
    assert status == 201, created
    client.session.cookie_jar.update_cookies({"strata_session": ana.cookie})
    async with client.delete(f"{path}/{created['id']}", params={"project": "acme"}) as r:
        assert r.status == 403
    assert (await call(ana, "GET", f"{path}/{created['id']}", project="acme"))[0] == 200
    assert (await call(ana, "POST", "/api/v1/auth/logout"))[0] == 204


async def test_roles_are_enforced_by_the_server_and_projects_stay_apart(
    client: TestClient,  # type: ignore[type-arg]
    people: dict[str, str],
    project: TestProject,
) -> None:
    insight = {"name": "Pages", "definition": {"kind": "pages", "query": {"limit": "5"}}}
    cohort = {
        "name": "Everyone",
        "definition": {"type": "behavioral", "event": "$pageview", "last_days": 30},
    }
    vera = await sign_in(client, "vera@example.com")
    # A viewer reads everything...
    assert (await call(vera, "GET", METRICS, project="acme"))[0] == 200
    assert (await call(vera, "GET", "/api/v1/dashboards", project="acme"))[0] == 200
    assert (await call(vera, "GET", "/api/v1/project", project="acme"))[0] == 200
    # ...and changes nothing.
    status, body = await call(vera, "POST", "/api/v1/insights", insight, project="acme")
    assert (status, body["error"]) == (
        403,
        "a viewer cannot save insights, dashboards, cohorts or metrics: it needs the analyst role",
    )
    cohorts = "/api/v1/analytics/cohorts"
    assert (await call(vera, "POST", cohorts, cohort, project="acme"))[0] == 403
    annotation = {"at": "2025-05-05T12:00:00Z", "text": "launch"}
    assert (await call(vera, "POST", "/api/v1/annotations", annotation, project="acme"))[0] == 403
    for method, path in (
        ("GET", "/api/v1/members"),
        ("GET", "/api/v1/keys"),
        ("POST", "/api/v1/keys"),
        ("PUT", "/api/v1/project"),
        ("POST", "/api/v1/privacy/erasure"),
    ):
        status, body = await call(vera, method, path, {}, project="acme")
        assert status == 403, (method, path, body)

    ana = await sign_in(client, "ana@example.com")
    status, saved = await call(ana, "POST", "/api/v1/insights", insight, project="acme")
    assert status == 201 and saved["created_by"] == people["analyst"]
    status, body = await call(ana, "POST", cohorts, cohort, project="acme")
    assert status == 201, body
    assert (await call(ana, "POST", "/api/v1/annotations", annotation, project="acme"))[0] == 201
    for method, path in (("GET", "/api/v1/members"), ("POST", "/api/v1/keys")):
        status, body = await call(ana, method, path, {"role": "read"}, project="acme")
        assert (status, body["error"]) == (403, "a analyst cannot do this: it needs the admin role")
    assert (await call(ana, "PUT", "/api/v1/project", {"name": "X"}, project="acme"))[0] == 403

    adam = await sign_in(client, "adam@example.com")
    status, created = await call(adam, "POST", "/api/v1/keys", {"role": "read"}, project="acme")
    assert status == 201 and created["secret"].startswith("sk_r_")
    status, listed = await call(adam, "GET", "/api/v1/keys", project="acme")
    assert created["key"]["id"] in {k["id"] for k in listed["keys"]}
    assert "secret" not in listed["keys"][0]
    key_id = created["key"]["id"]
    assert (await call(adam, "DELETE", f"/api/v1/keys/{key_id}", project="acme"))[0] == 204
    status, project_body = await call(
        adam,
        "PUT",
        "/api/v1/project",
        {"name": "Acme Inc", "ip_policy": "truncate"},
        project="acme",
    )
    assert status == 200
    assert (project_body["name"], project_body["privacy"]["ip_policy"]) == ("Acme Inc", "truncate")
    erase = {"user_id": "nobody-at-all"}
    assert (await call(adam, "POST", "/api/v1/privacy/erasure", erase, project="acme"))[0] == 202

    # Cross-project: a member of globex only is refused in acme, whatever the endpoint...
    otto = await sign_in(client, "otto@example.com")
    status, body = await call(otto, "GET", METRICS, project="acme")
    assert (status, body["error"]) == (403, "you are not a member of project 'acme'")
    assert (await call(otto, "GET", f"/api/v1/insights/{saved['id']}", project="acme"))[0] == 403
    # ...and acme's insight does not exist from globex; a key of globex cannot revoke acme's.
    assert (await call(otto, "GET", f"/api/v1/insights/{saved['id']}", project="globex"))[0] == 404
    status, body = await call(otto, "GET", "/api/v1/keys", project="globex")
    assert status == 200 and body["keys"] == []
    acme_key = (await call(adam, "GET", "/api/v1/keys", project="acme"))[1]["keys"][0]["id"]
    assert (await call(otto, "DELETE", f"/api/v1/keys/{acme_key}", project="globex"))[0] == 404
    # A request without a project is a 400 naming it.
    status, body = await call(otto, "GET", METRICS)
    assert (status, body["param"]) == (400, "project")
    # The bearer-key API is unchanged beside sessions: a read key reads, not admin endpoints.
    bearer = {"Authorization": f"Bearer {project.read_key}"}
    async with client.get(METRICS, headers=bearer) as r:
        assert r.status == 200
    async with client.get("/api/v1/members", headers=bearer) as r:
        assert r.status == 403


async def test_members_are_invited_and_managed_and_a_project_keeps_an_admin(
    client: TestClient,  # type: ignore[type-arg]
    pool: asyncpg.Pool,
    people: dict[str, str],
) -> None:
    adam = await sign_in(client, "adam@example.com")
    # An existing user is added at once; a new address gets an invitation link.
    status, body = await call(
        adam,
        "POST",
        "/api/v1/members",
        {"email": "otto@example.com", "role": "viewer"},
        project="acme",
    )
    assert (status, body["added"]["role"]) == (200, "viewer")
    status, body = await call(
        adam,
        "POST",
        "/api/v1/members",
        {"email": "new@example.com", "role": "analyst"},
        project="acme",
    )
    assert status == 201
    invite_path = body["invited"]["invite_path"]
    token = invite_path.rsplit("/", 1)[1]
    client.session.cookie_jar.clear()
    async with client.get(f"/api/v1/auth/invites/{token}") as r:
        assert (await r.json())["role"] == "analyst"
    accept = {"token": token, "password": "short", "name": "Nia"}
    async with client.post("/api/v1/auth/invites/accept", json=accept) as r:
        assert r.status == 400
    accept["password"] = "long enough password"
    async with client.post("/api/v1/auth/invites/accept", json=accept) as r:
        assert r.status == 201
        me = await r.json()
    assert me["projects"][0]["role"] == "analyst" and me["user"]["name"] == "Nia"
    async with client.post("/api/v1/auth/invites/accept", json=accept) as r:
        assert r.status == 404  # used once

    adam = await sign_in(client, "adam@example.com")
    status, members = await call(adam, "GET", "/api/v1/members", project="acme")
    roles = {m["email"]: m["role"] for m in members["members"]}
    assert roles == {
        "adam@example.com": "admin",
        "ana@example.com": "analyst",
        "new@example.com": "analyst",
        "otto@example.com": "viewer",
        "vera@example.com": "viewer",
    }
    # The last admin can be neither demoted nor removed.
    me_path = f"/api/v1/members/{people['admin']}"
    assert (await call(adam, "PUT", me_path, {"role": "viewer"}, project="acme"))[0] == 409
    assert (await call(adam, "DELETE", me_path, project="acme"))[0] == 409
    # A changed role applies to the member's next request.
    vera_path = f"/api/v1/members/{people['viewer']}"
    assert (await call(adam, "PUT", vera_path, {"role": "admin"}, project="acme"))[0] == 200
    vera = await sign_in(client, "vera@example.com")
    assert (await call(vera, "GET", "/api/v1/members", project="acme"))[0] == 200
    adam = await sign_in(client, "adam@example.com")
    assert (await call(adam, "DELETE", vera_path, project="acme"))[0] == 204
    assert (await call(adam, "PUT", me_path, {"role": "viewer"}, project="acme"))[0] == 409


async def test_insights_and_dashboards_are_versioned_and_projects_start_with_three(
    client: TestClient,  # type: ignore[type-arg]
    people: dict[str, str],
) -> None:
    ana = await sign_in(client, "ana@example.com")
    status, listed = await call(ana, "GET", "/api/v1/dashboards", project="acme")
    assert status == 200
    assert [d["id"] for d in listed["dashboards"]] == ["operations", "overview", "product"]
    overview = next(d for d in listed["dashboards"] if d["id"] == "overview")
    tile_ids = [t["insight_id"] for t in overview["definition"]["tiles"]]
    status, insights = await call(ana, "GET", "/api/v1/insights", project="acme")
    assert set(tile_ids) <= {i["id"] for i in insights["insights"]}

    # A bad definition is a 400 naming the field; a good one is version 1, an update version 2.
    bad = {"name": "x", "definition": {"kind": "pie-of-everything"}}
    status, body = await call(ana, "POST", "/api/v1/insights", bad, project="acme")
    assert (status, body["param"]) == (400, "definition.kind")
    insight = {
        "id": "signups",
        "name": "Signups",
        "definition": {"kind": "metrics", "query": {"metrics": "event:signup"}},
    }
    assert (await call(ana, "POST", "/api/v1/insights", insight, project="acme"))[0] == 201
    insight["name"] = "Signups per day"
    status, updated = await call(ana, "PUT", "/api/v1/insights/signups", insight, project="acme")
    assert (status, updated["version"]) == (200, 2)
    status, detail = await call(ana, "GET", "/api/v1/insights/signups", project="acme")
    assert [v["name"] for v in detail["history"]] == ["Signups per day", "Signups"]

    board = {
        "id": "growth",
        "name": "Growth",
        "definition": {"tiles": [{"insight_id": "signups", "width": 2}]},
    }
    assert (await call(ana, "POST", "/api/v1/dashboards", board, project="acme"))[0] == 201
    board["definition"]["tiles"].append({"insight_id": "no-such-insight"})
    status, body = await call(ana, "PUT", "/api/v1/dashboards/growth", board, project="acme")
    assert (status, body["param"]) == (400, "definition.tiles[1].insight_id")

    # A ready-made dashboard deleted stays deleted.
    assert (await call(ana, "DELETE", "/api/v1/dashboards/overview", project="acme"))[0] == 204
    status, listed = await call(ana, "GET", "/api/v1/dashboards", project="acme")
    assert [d["id"] for d in listed["dashboards"]] == ["growth", "operations", "product"]

    # Annotations: listed by range, deleted by an analyst.
    for at, text in (("2025-05-01T09:00:00Z", "launch"), ("2025-06-01", "pricing change")):
        body = {"at": at, "text": text}
        assert (await call(ana, "POST", "/api/v1/annotations", body, project="acme"))[0] == 201
    status, body = await call(
        ana,
        "GET",
        "/api/v1/annotations",
        project="acme",
        **{"from": "2025-05-01", "to": "2025-05-31"},
    )
    assert [a["text"] for a in body["annotations"]] == ["launch"]
    path = f"/api/v1/annotations/{body['annotations'][0]['id']}"
    assert (await call(ana, "DELETE", path, project="acme"))[0] == 204
    status, body = await call(ana, "GET", "/api/v1/annotations", project="acme")
    assert [a["text"] for a in body["annotations"]] == ["pricing change"]


async def test_a_share_link_shows_its_dashboard_logged_out_and_nothing_else(
    client: TestClient,  # type: ignore[type-arg]
    people: dict[str, str],
) -> None:
    ana = await sign_in(client, "ana@example.com")
    for insight in (
        {
            "id": "views",
            "name": "Views",
            "definition": {"kind": "metrics", "query": {"metrics": "pageviews"}},
        },
        {
            "id": "funnel",
            "name": "Funnel",
            "definition": {
                "kind": "funnel",
                "query": {"steps": [{"event": "$pageview"}, {"event": "signup"}]},
            },
        },
        {"id": "secret", "name": "Not shared", "definition": {"kind": "pages", "query": {}}},
    ):
        assert (await call(ana, "POST", "/api/v1/insights", insight, project="acme"))[0] == 201
    tiles = [{"insight_id": "views"}, {"insight_id": "funnel"}]
    board = {"id": "public", "name": "Public", "definition": {"tiles": tiles}}
    assert (await call(ana, "POST", "/api/v1/dashboards", board, project="acme"))[0] == 201
    status, share = await call(ana, "POST", "/api/v1/dashboards/public/shares", project="acme")
    assert status == 201 and share["path"] == f"/share/{share['token']}"
    vera = await sign_in(client, "vera@example.com")
    assert (await call(vera, "POST", "/api/v1/dashboards/public/shares", project="acme"))[0] == 403

    client.session.cookie_jar.clear()
    token = share["token"]
    async with client.get(f"/api/v1/shared/{token}") as r:
        shared = await r.json()
    assert shared["dashboard"]["id"] == "public"
    assert [i["id"] for i in shared["insights"]] == ["views", "funnel"]
    as_share = {"X-Strata-Share": token}
    # The insights' own queries, over any range, answer...
    params = {"metrics": "pageviews", "from": "2025-05-05", "to": "2025-05-05", "interval": "hour"}
    async with client.get(METRICS, params=params, headers=as_share) as r:
        assert r.status == 200
        assert (await r.json())["totals"] == {"pageviews": 2}
    funnel = {"steps": [{"event": "$pageview"}, {"event": "signup"}], "from": "2025-05-01"}
    async with client.post("/api/v1/analytics/funnels", json=funnel, headers=as_share) as r:
        assert r.status == 200
    # ...anything else does not: another metric, the persons behind a step, another insight's
    # query, another endpoint, another project, a write.
    refused = [
        ("GET", METRICS, {"metrics": "visitors"}, None),
        ("POST", "/api/v1/analytics/funnels", {}, {**funnel, "persons": {"step": 1}}),
        ("GET", "/api/v1/analytics/pages", {}, None),
        ("GET", "/api/v1/analytics/events", {}, None),
        ("GET", "/api/v1/insights", {}, None),
        ("GET", METRICS, {"metrics": "pageviews", "project": "globex"}, None),
        ("POST", "/api/v1/insights", {}, {"name": "x", "definition": {"kind": "pages"}}),
    ]
    for method, path, query, body in refused:
        async with client.request(method, path, params=query, json=body, headers=as_share) as r:
            assert r.status == 403, (method, path, query, await r.text())
    # Revoked: the link stops at once.
    ana = await sign_in(client, "ana@example.com")
    assert (await call(ana, "DELETE", f"/api/v1/shares/{token}", project="acme"))[0] == 204
    client.session.cookie_jar.clear()
    async with client.get(f"/api/v1/shared/{token}") as r:
        assert r.status == 404
    async with client.get(METRICS, params={"metrics": "pageviews"}, headers=as_share) as r:
        assert r.status == 401


async def test_setup_status_says_whether_events_arrived_and_how_fresh_they_are(
    client: TestClient,  # type: ignore[type-arg]
    pool: asyncpg.Pool,
    people: dict[str, str],
) -> None:
    adam = await sign_in(client, "adam@example.com")
    status, body = await call(adam, "GET", "/api/v1/project/status", project="acme")
    assert status == 200
    assert body["has_events"] and body["first_event_day"] == "2025-05-05"
    # Older than two days: the start of the newest day with events (from the rollups).
    assert body["last_event_at"].startswith("2025-05-05T00:00:00")
    otto = await sign_in(client, "otto@example.com")
    status, body = await call(otto, "GET", "/api/v1/project/status", project="globex")
    assert (status, body["has_events"], body["last_event_at"]) == (200, False, None)
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await write_events(conn, [event("g-1", now, project_id="globex")])
    status, body = await call(otto, "GET", "/api/v1/project/status", project="globex")
    assert body["has_events"] and body["first_event_day"] == now.date().isoformat()
    assert datetime.fromisoformat(body["last_event_at"]) == now
