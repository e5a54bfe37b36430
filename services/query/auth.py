"""Bearer-key authorization: read and admin keys may read, write keys may not; a key sees only
its own project, and a key of no project (an operator's admin key) names one with `project=`."""

from __future__ import annotations

import time

import asyncpg
from aiohttp import web

from libs.common import keys
from services.query.dependencies import DEPS, ApiError
from services.query.params import ParamError, single

_READ_ROLES = ("read", "admin")
_CACHE_LIMIT = 10_000


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


def bearer_secret(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "missing bearer token: send Authorization: Bearer <read key>")
    return secret.strip()


async def authorized_project(request: web.Request) -> str:
    """The project this request may read, or a 401/403/404 ApiError."""
    key = await request.app[READ_KEYS].lookup(bearer_secret(request))
    if key is None:
        raise ApiError(401, "unknown or revoked key")
    if key.role not in _READ_ROLES:
        raise ApiError(403, f"a {key.role} key cannot read analytics; use a read key")
    asked = single(request.query, "project")
    if key.project_id is not None:
        if asked is not None and asked != key.project_id:
            raise ApiError(403, f"this key belongs to another project than {asked!r}")
        return key.project_id
    if not asked:
        raise ParamError("project", "required with a key that is not bound to a project")
    exists = await request.app[DEPS].pool.fetchval("SELECT 1 FROM projects WHERE id = $1", asked)
    if not exists:
        raise ApiError(404, f"unknown project {asked!r}")
    return asked
