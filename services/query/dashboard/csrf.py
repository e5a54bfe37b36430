"""CSRF protection of the dashboard's cookie sessions: every request that changes something
(any method but GET/HEAD/OPTIONS) and is authenticated by the session cookie must carry the
session's token in `X-CSRF-Token`, and must not come from another origin. A bearer key or a
share link is not sent by the browser on its own, so those requests need no token."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.query.dashboard.sessions import CSRF_HEADER, SESSION_COOKIE, signed_in
from services.query.dependencies import ApiError

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sign-in and accepting an invitation start a session: they check the origin themselves.
_STARTS_A_SESSION = frozenset({"/api/v1/auth/login", "/api/v1/auth/invites/accept"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def csrf_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if (
        request.method in _SAFE_METHODS
        or "Authorization" in request.headers
        or SESSION_COOKIE not in request.cookies
        or request.path in _STARTS_A_SESSION
    ):
        return await handler(request)
    user = await signed_in(request)
    if user is None:
        return await handler(request)  # no live session: the endpoint answers 401 itself
    origin = request.headers.get("Origin")
    if origin and origin.split("://", 1)[-1] != request.host:
        raise ApiError(403, "cross-origin request refused")
    sent = request.headers.get(CSRF_HEADER, "")
    if not secrets.compare_digest(sent.encode(), user.csrf_token.encode()):
        raise ApiError(403, f"missing or wrong {CSRF_HEADER}: reload the page and try again")
    return await handler(request)
