"""A project's people, keys and settings, for its admins (docs/dashboard.md, "Roles"):

- GET    /api/v1/members                 members and open invitations
- POST   /api/v1/members                 add an existing user, or invite a new one (a link)
- PUT    /api/v1/members/{user_id}       change a member's role
- DELETE /api/v1/members/{user_id}       remove a member
- GET    /api/v1/keys                    the project's API keys (no secrets)
- POST   /api/v1/keys                    create one (its secret is shown once)
- DELETE /api/v1/keys/{key_id}           revoke one
- GET    /api/v1/project                 name, time zone, storage days and privacy (viewers too)
- PUT    /api/v1/project                 change them (admins)

A project always keeps one admin: removing or demoting the last one is refused (409).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from aiohttp import web

from libs.common import keys, privacy_policy, users
from libs.common.users import ADMIN, VIEWER
from services.query.auth import project_access
from services.query.dashboard.accounts import invite_token_hash, json_response, read_json
from services.query.dependencies import DEPS, ApiError

INVITE_DAYS = 7


class MemberBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    role: str


class RoleBody(msgspec.Struct, forbid_unknown_fields=True):
    role: str


class KeyBody(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    name: str = ""


class ProjectBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str | None = None
    timezone: str | None = None
    ip_policy: str | None = None
    consent_policy: str | None = None
    scrub_rules: list[str] | None = None


def _role(role: str) -> str:
    try:
        return users.check_role(role)
    except users.UserError as exc:
        raise ApiError(400, f"role: {exc}") from None


async def get_members(request: web.Request) -> web.Response:
    access = await project_access(request, ADMIN)
    pool = request.app[DEPS].pool
    rows = await pool.fetch(
        """SELECT u.id, u.email, u.name, m.role, m.created_at FROM project_members m
           JOIN users u ON u.id = m.user_id WHERE m.project_id = $1 ORDER BY u.email""",
        access.project_id,
    )
    invites = await pool.fetch(
        """SELECT email, role, created_at, expires_at FROM user_invites
           WHERE project_id = $1 AND accepted_at IS NULL AND expires_at > now()
           ORDER BY created_at""",
        access.project_id,
    )
    return json_response(
        {
            "members": [
                {
                    "user_id": r["id"],
                    "email": r["email"],
                    "name": r["name"],
                    "role": r["role"],
                    "since": r["created_at"],
                }
                for r in rows
            ],
            "invites": [dict(r) for r in invites],
        }
    )


async def post_member(request: web.Request) -> web.Response:
    """An existing user becomes a member at once (200); a new address gets an invitation link
    (201 with `invite_path`, shown to the admin to pass on)."""
    access = await project_access(request, ADMIN)
    body: MemberBody = await read_json(request, MemberBody)
    role = _role(body.role)
    try:
        email = users.normalize_email(body.email)
    except users.UserError as exc:
        raise ApiError(400, f"email: {exc}") from None
    pool = request.app[DEPS].pool
    async with pool.acquire() as conn, conn.transaction():
        existing = await users.find_user(conn, email)
        if existing is not None:
            await users.set_role(conn, existing.id, access.project_id, role)
            return json_response({"added": {"user_id": existing.id, "email": email, "role": role}})
        token = secrets.token_urlsafe(32)
        await conn.execute(
            """INSERT INTO user_invites (token_hash, project_id, email, role, invited_by,
                                         expires_at)
               VALUES ($1, $2, $3, $4, $5, now() + $6::interval)""",
            invite_token_hash(token),
            access.project_id,
            email,
            role,
            access.user_id,
            timedelta(days=INVITE_DAYS),
        )
    return json_response(
        {"invited": {"email": email, "role": role, "invite_path": f"/invite/{token}"}}, 201
    )


async def _other_admins(conn: object, project_id: str, user_id: str) -> int:
    count: int = await conn.fetchval(  # type: ignore[attr-defined]
        """SELECT count(*) FROM project_members
           WHERE project_id = $1 AND role = 'admin' AND user_id <> $2""",
        project_id,
        user_id,
    )
    return count


async def put_member(request: web.Request) -> web.Response:
    access = await project_access(request, ADMIN)
    body: RoleBody = await read_json(request, RoleBody)
    role = _role(body.role)
    user_id = request.match_info["user_id"]
    pool = request.app[DEPS].pool
    async with pool.acquire() as conn, conn.transaction():
        current = await conn.fetchval(
            """SELECT role FROM project_members WHERE project_id = $1 AND user_id = $2
               FOR UPDATE""",
            access.project_id,
            user_id,
        )
        if current is None:
            raise ApiError(404, f"{user_id!r} is not a member of this project")
        if role != ADMIN and not await _other_admins(conn, access.project_id, user_id):
            raise ApiError(409, "a project keeps at least one admin")
        await users.set_role(conn, user_id, access.project_id, role)
    return json_response({"user_id": user_id, "role": role})


async def delete_member(request: web.Request) -> web.Response:
    access = await project_access(request, ADMIN)
    user_id = request.match_info["user_id"]
    pool = request.app[DEPS].pool
    async with pool.acquire() as conn, conn.transaction():
        if not await _other_admins(conn, access.project_id, user_id):
            raise ApiError(409, "a project keeps at least one admin")
        if not await users.remove_membership(conn, user_id, access.project_id):
            raise ApiError(404, f"{user_id!r} is not a member of this project")
    return web.Response(status=204)


async def get_keys(request: web.Request) -> web.Response:
    access = await project_access(request, ADMIN)
    async with request.app[DEPS].pool.acquire() as conn:
        found = await keys.list_keys(conn, access.project_id)
    return json_response({"keys": found})


async def post_key(request: web.Request) -> web.Response:
    access = await project_access(request, ADMIN)
    body: KeyBody = await read_json(request, KeyBody)
    if body.role not in keys.ROLES:
        raise ApiError(400, f"role: one of {', '.join(keys.ROLES)}, not {body.role!r}")
    async with request.app[DEPS].pool.acquire() as conn:
        key, secret = await keys.create_key(conn, access.project_id, body.role, body.name[:100])
    return json_response({"key": key, "secret": secret}, 201)


async def delete_key(request: web.Request) -> web.Response:
    access = await project_access(request, ADMIN)
    key_id = request.match_info["key_id"]
    pool = request.app[DEPS].pool
    owner = await pool.fetchval("SELECT project_id FROM api_keys WHERE id = $1", key_id)
    if owner != access.project_id:
        raise ApiError(404, f"no key {key_id!r} in this project")
    async with pool.acquire() as conn:
        if not await keys.revoke_key(conn, key_id):
            raise ApiError(404, f"key {key_id!r} is revoked already")
    return web.Response(status=204)


async def _project_body(request: web.Request, project_id: str) -> dict[str, object]:
    pool = request.app[DEPS].pool
    row = await pool.fetchrow(
        """SELECT id, name, timezone, hot_days, cold_days, retention_days FROM projects
           WHERE id = $1""",
        project_id,
    )
    assert row is not None
    async with pool.acquire() as conn:
        policy = await privacy_policy.load_policy(conn, project_id)
    return {**dict(row), "privacy": policy}


async def get_project(request: web.Request) -> web.Response:
    access = await project_access(request, VIEWER)
    return json_response(await _project_body(request, access.project_id))


async def put_project(request: web.Request) -> web.Response:
    access = await project_access(request, ADMIN)
    body: ProjectBody = await read_json(request, ProjectBody)
    if body.name is not None and not 0 < len(body.name.strip()) <= 200:
        raise ApiError(400, "name: 1 to 200 characters")
    if body.timezone is not None:
        try:
            ZoneInfo(body.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ApiError(400, f"timezone: unknown IANA time zone {body.timezone!r}") from None
    pool = request.app[DEPS].pool
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE projects SET name = coalesce($2, name), timezone = coalesce($3, timezone)
               WHERE id = $1""",
            access.project_id,
            body.name.strip() if body.name is not None else None,
            body.timezone,
        )
        current = await privacy_policy.load_policy(conn, access.project_id)
        try:
            updated = msgspec.structs.replace(
                current,
                ip_policy=body.ip_policy or current.ip_policy,
                consent_policy=body.consent_policy or current.consent_policy,
                scrub_rules=(
                    current.scrub_rules
                    if body.scrub_rules is None
                    else privacy_policy.parse_scrub_rules(",".join(body.scrub_rules) or "none")
                ),
            )
            privacy_policy.check_policy(updated)
            await privacy_policy.save_policy(conn, access.project_id, updated)
        except privacy_policy.PolicyError as exc:
            raise ApiError(400, str(exc)) from None
    return json_response(await _project_body(request, access.project_id))


def add_project_admin_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/members", get_members)
    r.add_post("/api/v1/members", post_member)
    r.add_put("/api/v1/members/{user_id}", put_member)
    r.add_delete("/api/v1/members/{user_id}", delete_member)
    r.add_get("/api/v1/keys", get_keys)
    r.add_post("/api/v1/keys", post_key)
    r.add_delete("/api/v1/keys/{key_id}", delete_key)
    r.add_get("/api/v1/project", get_project)
    r.add_put("/api/v1/project", put_project)
