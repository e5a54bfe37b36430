"""Signing in and out of the dashboard (docs/dashboard.md, "Users and sessions"):

- POST /api/v1/auth/login            e-mail + password -> session cookie and CSRF token
- POST /api/v1/auth/logout           ends the session
- GET  /api/v1/auth/me               the signed-in user, their projects and roles, CSRF token
- POST /api/v1/auth/password         change one's password (ends every other session)
- GET  /api/v1/auth/invites/{token}  what an invitation is for
- POST /api/v1/auth/invites/accept   set a password for an invitation and sign in

Failed sign-ins are counted per e-mail and per client address over a sliding window; past the
limit the answer is 429 with Retry-After, before any password is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

import msgspec
import structlog
from aiohttp import web
from argon2 import PasswordHasher

from libs.common import users
from services.query.dashboard.sessions import (
    SESSION_COOKIE,
    SESSIONS,
    SignedIn,
    session_token,
    signed_in,
)
from services.query.dependencies import DEPS, SETTINGS, ApiError
from services.query.responses import json_encoder

log = structlog.get_logger()

PASSWORD_HASHER = web.AppKey("password_hasher", PasswordHasher)
# Checked against when the e-mail is unknown, so a wrong address costs as long as a wrong
# password and the timing tells nothing about which accounts exist.
_NO_SUCH_USER_HASH = web.AppKey("no_such_user_hash", str)
_MAX_BODY = 16 * 1024


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    password: str


class PasswordBody(msgspec.Struct, forbid_unknown_fields=True):
    current_password: str
    new_password: str


class AcceptInviteBody(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    password: str
    name: str = ""


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json_encoder.encode(body), status=status, content_type="application/json"
    )


async def read_json(request: web.Request, body_type: type[Any]) -> Any:
    """The request's JSON body as `body_type`; 400/415 naming the problem."""
    if request.content_type != "application/json":
        raise ApiError(415, "send the body as Content-Type: application/json")
    raw = await request.read()
    if len(raw) > _MAX_BODY:
        raise ApiError(413, f"the body is larger than {_MAX_BODY} bytes")
    try:
        return msgspec.json.decode(raw, type=body_type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, f"invalid body: {exc}") from None


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def cookie_is_secure(request: web.Request) -> bool:
    """Secure cookies when the browser reached us over TLS (directly or through a proxy that
    says so); `STRATA_DASHBOARD_COOKIE_SECURE=always|never` overrides."""
    mode = request.app[SETTINGS].dashboard_cookie_secure
    if mode == "always":
        return True
    if mode == "never":
        return False
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_session_cookie(request: web.Request, response: web.Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(request.app[SETTINGS].dashboard_session_max_s),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=cookie_is_secure(request),
    )


def check_same_origin(request: web.Request) -> None:
    """Refuse a request another site's page made the browser send (signing a victim in to the
    attacker's account); a same-origin fetch or a non-browser client passes."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise ApiError(403, "cross-site request refused")
    origin = request.headers.get("Origin")
    if origin and origin.split("://", 1)[-1] != request.host:
        raise ApiError(403, "cross-origin request refused")


async def projects_of(request: web.Request, user_id: str) -> list[dict[str, str]]:
    rows = await request.app[DEPS].pool.fetch(
        """SELECT m.project_id, m.role, p.name, p.timezone FROM project_members m
           JOIN projects p ON p.id = m.project_id WHERE m.user_id = $1 ORDER BY m.project_id""",
        user_id,
    )
    return [
        {"id": r["project_id"], "name": r["name"], "role": r["role"], "timezone": r["timezone"]}
        for r in rows
    ]


async def _me_body(request: web.Request, user: SignedIn, csrf_token: str) -> dict[str, Any]:
    return {
        "user": {"id": user.user_id, "email": user.email, "name": user.name},
        "projects": await projects_of(request, user.user_id),
        "csrf_token": csrf_token,
        "expires_at": user.expires_at,
    }


class LoginThrottle:
    """Failed sign-ins per e-mail and per client in PostgreSQL (shared by every replica)."""

    def __init__(self, max_per_email: int, max_per_client: int, window_s: float) -> None:
        self.max_per_email = max_per_email
        self.max_per_client = max_per_client
        self.window = timedelta(seconds=window_s)

    async def retry_after(self, request: web.Request, email: str, client: str) -> int | None:
        """Seconds until another try is allowed, or None when it is allowed now."""
        row = await request.app[DEPS].pool.fetchrow(
            """SELECT count(*) FILTER (WHERE email = $1) AS by_email,
                      min(failed_at) FILTER (WHERE email = $1) AS email_first,
                      count(*) FILTER (WHERE client = $2) AS by_client,
                      min(failed_at) FILTER (WHERE client = $2) AS client_first,
                      now() AS now
               FROM login_failures
               WHERE (email = $1 OR client = $2) AND failed_at > now() - $3::interval""",
            email,
            client,
            self.window,
        )
        assert row is not None
        waits = []
        if row["by_email"] >= self.max_per_email:
            waits.append(row["email_first"] + self.window - row["now"])
        if row["by_client"] >= self.max_per_client:
            waits.append(row["client_first"] + self.window - row["now"])
        if not waits:
            return None
        return max(1, int(max(waits).total_seconds()) + 1)

    async def failed(self, request: web.Request, email: str, client: str) -> None:
        pool = request.app[DEPS].pool
        await pool.execute(
            "INSERT INTO login_failures (email, client) VALUES ($1, $2)", email, client
        )
        await pool.execute(
            "DELETE FROM login_failures WHERE failed_at < now() - $1::interval", self.window
        )

    async def succeeded(self, request: web.Request, email: str) -> None:
        await request.app[DEPS].pool.execute("DELETE FROM login_failures WHERE email = $1", email)


LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)


async def _check_password(request: web.Request, stored: str | None, password: str) -> bool:
    hasher = request.app[PASSWORD_HASHER]
    target = stored if stored is not None else request.app[_NO_SUCH_USER_HASH]
    ok = await asyncio.to_thread(users.verify_password, hasher, target, password)
    return ok and stored is not None


async def _start_session(request: web.Request, user_id: str, status: int = 200) -> web.Response:
    store = request.app[SESSIONS]
    token, csrf = await store.create(user_id, request.headers.get("User-Agent", ""))
    user = await store.resolve(token)
    assert user is not None
    response = json_response(await _me_body(request, user, csrf), status=status)
    set_session_cookie(request, response, token)
    response.headers["Cache-Control"] = "no-store"
    return response


async def post_login(request: web.Request) -> web.Response:
    """Sign in: 200 with the session cookie, 401 for a wrong pair, 429 when throttled."""
    check_same_origin(request)
    body: LoginBody = await read_json(request, LoginBody)
    try:
        email = users.normalize_email(body.email)
    except users.UserError:
        raise ApiError(401, "wrong e-mail or password") from None
    client = client_address(request)
    throttle = request.app[LOGIN_THROTTLE]
    wait = await throttle.retry_after(request, email, client)
    if wait is not None:
        log.warning("login_throttled", email=email, client=client)
        response = json_response(
            {"error": f"too many failed sign-ins; try again in {wait} s", "param": None}, 429
        )
        response.headers["Retry-After"] = str(wait)
        return response
    pool = request.app[DEPS].pool
    row = await pool.fetchrow("SELECT id, password_hash FROM users WHERE email = $1", email)
    stored = row["password_hash"] if row is not None else None
    if not await _check_password(request, stored, body.password):
        await throttle.failed(request, email, client)
        log.info("login_failed", email=email, client=client)
        raise ApiError(401, "wrong e-mail or password")
    assert row is not None
    await throttle.succeeded(request, email)
    hasher = request.app[PASSWORD_HASHER]
    if hasher.check_needs_rehash(row["password_hash"]):
        new_hash = await asyncio.to_thread(hasher.hash, body.password)
        await pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1", row["id"], new_hash)
    await request.app[SESSIONS].prune()
    log.info("login", user=row["id"], client=client)
    return await _start_session(request, row["id"])


async def post_logout(request: web.Request) -> web.Response:
    """End this browser's session (204 also when it had already ended)."""
    token = session_token(request)
    if token:
        await request.app[SESSIONS].end(token)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def require_signed_in(request: web.Request) -> SignedIn:
    user = await signed_in(request)
    if user is None:
        raise ApiError(401, "sign in first")
    return user


async def get_me(request: web.Request) -> web.Response:
    """The signed-in user, or `{"user": null}` (a 200: the app asks before anyone signed in)."""
    user = await signed_in(request)
    if user is None:
        body: dict[str, Any] = {"user": None, "projects": [], "csrf_token": None}
        response = json_response(body)
    else:
        response = json_response(await _me_body(request, user, user.csrf_token))
    response.headers["Cache-Control"] = "no-store"
    return response


async def post_password(request: web.Request) -> web.Response:
    """Change one's own password; every session ends and this browser gets a new one."""
    user = await require_signed_in(request)
    body: PasswordBody = await read_json(request, PasswordBody)
    pool = request.app[DEPS].pool
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.user_id)
    if not await _check_password(request, stored, body.current_password):
        raise ApiError(403, "the current password is wrong")
    hasher = request.app[PASSWORD_HASHER]
    try:
        async with pool.acquire() as conn:
            await users.set_password(conn, user.user_id, body.new_password, hasher=hasher)
    except users.UserError as exc:
        raise ApiError(400, f"new_password: {exc}") from None
    return await _start_session(request, user.user_id)


def invite_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _open_invite(request: web.Request, token: str) -> Any:
    row = await request.app[DEPS].pool.fetchrow(
        """SELECT i.project_id, i.email, i.role, p.name AS project_name
           FROM user_invites i JOIN projects p ON p.id = i.project_id
           WHERE i.token_hash = $1 AND i.accepted_at IS NULL AND i.expires_at > now()""",
        invite_token_hash(token),
    )
    if row is None:
        raise ApiError(404, "this invitation was used, has expired or does not exist")
    return row


async def get_invite(request: web.Request) -> web.Response:
    row = await _open_invite(request, request.match_info["token"])
    return json_response(
        {
            "email": row["email"],
            "project": {"id": row["project_id"], "name": row["project_name"]},
            "role": row["role"],
        }
    )


async def post_accept_invite(request: web.Request) -> web.Response:
    """Create the invited account with its password, make it a member, sign it in."""
    check_same_origin(request)
    body: AcceptInviteBody = await read_json(request, AcceptInviteBody)
    row = await _open_invite(request, body.token)
    try:
        users.check_password(body.password)
    except users.UserError as exc:
        raise ApiError(400, f"password: {exc}") from None
    hasher = request.app[PASSWORD_HASHER]
    password_hash = await asyncio.to_thread(hasher.hash, body.password)
    pool = request.app[DEPS].pool
    async with pool.acquire() as conn, conn.transaction():
        taken = await conn.fetchval(
            """UPDATE user_invites SET accepted_at = now()
               WHERE token_hash = $1 AND accepted_at IS NULL RETURNING 1""",
            invite_token_hash(body.token),
        )
        if not taken:
            raise ApiError(404, "this invitation was used, has expired or does not exist")
        if await conn.fetchval("SELECT 1 FROM users WHERE email = $1", row["email"]):
            raise ApiError(409, f"{row['email']} has an account already: sign in instead")
        user_id = await conn.fetchval(
            """INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, $4)
               RETURNING id""",
            users.new_user_id(),
            row["email"],
            body.name.strip(),
            password_hash,
        )
        await users.set_role(conn, user_id, row["project_id"], row["role"])
    return await _start_session(request, user_id, status=201)


def setup_accounts(app: web.Application, hasher: PasswordHasher) -> None:
    """The sign-in routes and what they keep on the app."""
    settings = app[SETTINGS]
    app[PASSWORD_HASHER] = hasher
    app[_NO_SUCH_USER_HASH] = hasher.hash("no such user")
    app[LOGIN_THROTTLE] = LoginThrottle(
        settings.login_max_failures_per_email,
        settings.login_max_failures_per_client,
        settings.login_window_s,
    )
    r = app.router
    r.add_post("/api/v1/auth/login", post_login)
    r.add_post("/api/v1/auth/logout", post_logout)
    r.add_get("/api/v1/auth/me", get_me)
    r.add_post("/api/v1/auth/password", post_password)
    r.add_get("/api/v1/auth/invites/{token}", get_invite)
    r.add_post("/api/v1/auth/invites/accept", post_accept_invite)
