"""Cookie sessions of dashboard users, kept in PostgreSQL so any query replica serves any browser.

The cookie holds a random token; the table keeps its SHA-256 (migration 0018). A session ends
on sign-out, on a password change, when its user is removed, after `idle_s` without a request,
and `max_s` after sign-in whatever happens.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from aiohttp import web

SESSION_COOKIE = "strata_session"
CSRF_HEADER = "X-CSRF-Token"
# last_seen_at is written at most this often per session (a polling page must not write on
# every request); idle expiry is therefore exact to within this.
_TOUCH_EVERY = timedelta(seconds=60)


@dataclass(frozen=True)
class SignedIn:
    """The user behind a live session."""

    user_id: str
    email: str
    name: str
    csrf_token: str
    expires_at: datetime


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class SessionStore:
    """Creates, resolves and ends sessions."""

    def __init__(self, pool: asyncpg.Pool, idle_s: float, max_s: float) -> None:
        self.pool = pool
        self.idle = timedelta(seconds=idle_s)
        self.max = timedelta(seconds=max_s)

    async def create(self, user_id: str, user_agent: str) -> tuple[str, str]:
        """A new session of `user_id`: (cookie token, CSRF token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        await self.pool.execute(
            """INSERT INTO dashboard_sessions (token_hash, user_id, csrf_token, expires_at,
                                               user_agent)
               VALUES ($1, $2, $3, now() + $4::interval, $5)""",
            token_hash(token),
            user_id,
            csrf,
            self.max,
            user_agent[:300],
        )
        return token, csrf

    async def resolve(self, token: str) -> SignedIn | None:
        """The live session of `token`, or None (unknown, idle too long or past its limit)."""
        row = await self.pool.fetchrow(
            """SELECT s.user_id, s.csrf_token, s.expires_at, s.last_seen_at, u.email, u.name,
                      now() AS now
               FROM dashboard_sessions s JOIN users u ON u.id = s.user_id
               WHERE s.token_hash = $1""",
            token_hash(token),
        )
        if row is None:
            return None
        now = row["now"]
        if now >= row["expires_at"] or now - row["last_seen_at"] > self.idle:
            await self.pool.execute(
                "DELETE FROM dashboard_sessions WHERE token_hash = $1", token_hash(token)
            )
            return None
        if now - row["last_seen_at"] > _TOUCH_EVERY:
            await self.pool.execute(
                "UPDATE dashboard_sessions SET last_seen_at = now() WHERE token_hash = $1",
                token_hash(token),
            )
        return SignedIn(
            user_id=row["user_id"],
            email=row["email"],
            name=row["name"],
            csrf_token=row["csrf_token"],
            expires_at=row["expires_at"],
        )

    async def end(self, token: str) -> None:
        await self.pool.execute(
            "DELETE FROM dashboard_sessions WHERE token_hash = $1", token_hash(token)
        )

    async def prune(self) -> None:
        """Forget sessions that can no longer be used (called now and then on sign-in)."""
        await self.pool.execute(
            """DELETE FROM dashboard_sessions
               WHERE expires_at < now() OR last_seen_at < now() - $1::interval""",
            self.idle,
        )


SESSIONS = web.AppKey("dashboard_sessions", SessionStore)
_RESOLVED = web.RequestKey("signed_in", object)


def session_token(request: web.Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


async def signed_in(request: web.Request) -> SignedIn | None:
    """The session of this request's cookie (looked up once per request), or None."""
    if _RESOLVED in request:
        cached = request[_RESOLVED]
        return cached if isinstance(cached, SignedIn) else None
    token = session_token(request)
    found = await request.app[SESSIONS].resolve(token) if token else None
    request[_RESOLVED] = found
    return found
