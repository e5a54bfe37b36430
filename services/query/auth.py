"""Who may ask what of the query API, in one place (docs/api-query.md, docs/dashboard.md).

Three kinds of caller, checked in this order:

- a bearer key (machines): read and admin keys may read, write keys may not; a key sees only
  its own project, and a key of no project (an operator's admin key) names one with
  `project=`. A read key acts as an analyst (it could always save cohorts), an admin key as
  an admin;
- a dashboard session (the `strata_session` cookie): the request names its `project=` and the
  user's role in it (viewer < analyst < admin) must include what the endpoint needs;
- a share link (`X-Strata-Share: <token>`): a viewer of one project that may make exactly the
  requests its dashboard's insights make, over any date range, and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
import msgspec
from aiohttp import web

from libs.common import keys
from libs.common.users import ADMIN, ANALYST, VIEWER, role_allows
from services.query.analyses import saved_definitions as saved
from services.query.dashboard.insight_kinds import (
    BY_ROUTE,
    InsightDefinition,
    request_signature,
    stored_signature,
)
from services.query.dashboard.sessions import SignedIn, signed_in
from services.query.dependencies import DEPS, ApiError
from services.query.params import ParamError, single

SHARE_HEADER = "X-Strata-Share"
RESTORES_PATH = "/api/v1/tiers/restores"
_KEY_ROLES = {"read": ANALYST, "admin": ADMIN}
_CACHE_LIMIT = 10_000
_NEEDS = {VIEWER: "read", ANALYST: "save insights, dashboards, cohorts or metrics", ADMIN: ""}


class ReadKeys:
    """Key lookups cached for a few seconds: a dashboard polling every second must not cost a
    database round trip per request, and a revoked key stops working within `ttl_s`."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, keys.ApiKey]] = {}

    async def lookup(self, secret: str) -> keys.ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await keys.lookup_key(self.pool, secret)
        if key is None:
            self._cache.pop(secret, None)
            return None
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[secret] = (now + self.ttl_s, key)
        return key


READ_KEYS = web.AppKey("read_keys", ReadKeys)


@dataclass(frozen=True)
class Access:
    """A caller allowed into one project with `role`: by key, session or share link."""

    project_id: str
    role: str
    key: keys.ApiKey | None = None
    user: SignedIn | None = None
    share_token: str | None = None

    @property
    def user_id(self) -> str | None:
        """The signed-in user (recorded as who saved something), None for keys and links."""
        return self.user.user_id if self.user is not None else None

    @property
    def actor(self) -> str:
        """Who to name in audit logs: the user's id or the key's id."""
        if self.user is not None:
            return self.user.user_id
        if self.key is not None:
            return self.key.id
        return f"share:{(self.share_token or '')[:8]}"


def bearer_secret(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "missing bearer token: send Authorization: Bearer <read key>")
    return secret.strip()


def _refuse(role: str, needed: str, who: str) -> ApiError:
    if needed == ADMIN:
        return ApiError(403, f"{who} cannot do this: it needs the admin role")
    return ApiError(403, f"{who} cannot {_NEEDS[needed]}: it needs the {needed} role")


async def _key_access(request: web.Request, needed: str) -> Access:
    key = await request.app[READ_KEYS].lookup(bearer_secret(request))
    if key is None:
        raise ApiError(401, "unknown or revoked key")
    role = _KEY_ROLES.get(key.role)
    if role is None:
        raise ApiError(403, f"a {key.role} key cannot read analytics; use a read key")
    if not role_allows(role, needed):
        raise ApiError(403, f"a {key.role} key cannot do this; use an admin key")
    asked = single(request.query, "project")
    if key.project_id is not None:
        if asked is not None and asked != key.project_id:
            raise ApiError(403, f"this key belongs to another project than {asked!r}")
        return Access(key.project_id, role, key=key)
    if not asked:
        raise ParamError("project", "required with a key that is not bound to a project")
    exists = await request.app[DEPS].pool.fetchval("SELECT 1 FROM projects WHERE id = $1", asked)
    if not exists:
        raise ApiError(404, f"unknown project {asked!r}")
    return Access(asked, role, key=key)


async def session_role(request: web.Request, user: SignedIn, project_id: str) -> str | None:
    """The user's role in the project, None when not a member (read on every request, so a
    changed or removed membership applies at once)."""
    role: str | None = await request.app[DEPS].pool.fetchval(
        "SELECT role FROM project_members WHERE project_id = $1 AND user_id = $2",
        project_id,
        user.user_id,
    )
    return role


async def _session_access(request: web.Request, user: SignedIn, needed: str) -> Access:
    asked = single(request.query, "project")
    if not asked:
        raise ParamError("project", "required: name the project (the dashboard sends it)")
    role = await session_role(request, user, asked)
    if role is None:
        raise ApiError(403, f"you are not a member of project {asked!r}")
    if not role_allows(role, needed):
        raise _refuse(role, needed, f"a {role}")
    return Access(asked, role, user=user)


async def share_scope(
    pool: asyncpg.Pool, token: str
) -> tuple[str, str, list[tuple[str, saved.SavedVersion]]] | None:
    """(project, dashboard id, [(insight id, its latest version)]) of a live share link."""
    row = await pool.fetchrow(
        """SELECT project_id, dashboard_id FROM dashboard_shares
           WHERE token = $1 AND revoked_at IS NULL""",
        token,
    )
    if row is None:
        return None
    project_id, dashboard_id = row["project_id"], row["dashboard_id"]
    try:
        dashboard = await saved.latest(pool, saved.DASHBOARDS, project_id, dashboard_id)
    except ApiError:
        return None  # the dashboard was deleted: its links show nothing
    tiles = msgspec.json.decode(dashboard.definition).get("tiles", [])
    insights = []
    for insight_id in dict.fromkeys(t.get("insight_id") for t in tiles if isinstance(t, dict)):
        if not isinstance(insight_id, str):
            continue
        try:
            insights.append(
                (insight_id, await saved.latest(pool, saved.INSIGHTS, project_id, insight_id))
            )
        except ApiError:
            continue  # a tile whose insight was deleted shows nothing
    return project_id, dashboard_id, insights


async def _share_access(request: web.Request, token: str, needed: str) -> Access:
    scope = await share_scope(request.app[DEPS].pool, token)
    if scope is None:
        raise ApiError(401, "this share link was revoked or does not exist")
    project_id, _, insights = scope
    if needed != VIEWER:
        raise ApiError(403, "a share link is read-only")
    asked = single(request.query, "project")
    if asked is not None and asked != project_id:
        raise ApiError(403, "a share link shows only its own dashboard")
    route = (request.method, request.path)
    if request.method == "GET" and request.path.startswith(RESTORES_PATH + "/"):
        # A tile whose range needs archived days shows the restore's progress.
        return Access(project_id, VIEWER, share_token=token)
    if route in BY_ROUTE:
        body = await request.read() if request.method == "POST" else b""
        asked_for = request_signature(
            request.method, request.path, list(request.query.items()), body
        )
        for _, version in insights:
            definition = msgspec.json.decode(version.definition, type=InsightDefinition)
            method, path, signature = stored_signature(definition)
            if (method, path) == route and signature == asked_for:
                return Access(project_id, VIEWER, share_token=token)
    raise ApiError(403, "a share link shows only its own dashboard")


async def project_access(request: web.Request, needed: str = VIEWER) -> Access:
    """Who is asking and for which project, when their role includes `needed`; otherwise a
    401/403/404 ApiError (or a 400 ParamError for a missing `project`)."""
    if "Authorization" in request.headers:
        return await _key_access(request, needed)
    user = await signed_in(request)
    if user is not None:
        return await _session_access(request, user, needed)
    share = request.headers.get(SHARE_HEADER)
    if share:
        return await _share_access(request, share, needed)
    if request.cookies.get("strata_session"):
        raise ApiError(401, "your session has expired: sign in again")
    raise ApiError(401, "missing bearer token: send Authorization: Bearer <read key>")


async def authorized_project(request: web.Request) -> str:
    """The project this request may read, or a 401/403/404 ApiError."""
    return (await project_access(request, VIEWER)).project_id
