"""Write keys: where a request carries one, and a TTL cache in front of the key table.

A revoked key keeps working for at most `ttl_s` (the cache's age), which is the price of not
querying PostgreSQL on every request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from typing import NamedTuple

import asyncpg

from libs.common.errors import StrataError
from libs.common.keys import ApiKey, lookup_key
from libs.common.privacy_policy import DEFAULT_POLICY, policy_of
from services.ingest.privacy import ProjectPrivacy

# Unknown keys are remembered for less time than known ones, so a key just created works
# promptly even after someone tried it too early.
_NEGATIVE_TTL_CAP_S = 2.0


class KeyStoreUnavailable(StrataError):
    """PostgreSQL could not be asked about a key (the request should be retried later)."""

    code = "key_store_unavailable"
    http_status = 503


_DEFAULT_PRIVACY = ProjectPrivacy(DEFAULT_POLICY)


class WriteKey(NamedTuple):
    key: ApiKey
    rate_limit_per_s: float | None  # the project's override of the default rate limit
    # The project's privacy controls, cached with the key: a change applies within the TTL.
    privacy: ProjectPrivacy = _DEFAULT_PRIVACY
    # The project's own sites: referrers on them are internal navigation (docs/enrichment.md).
    own_domains: tuple[str, ...] = ()


def key_from_authorization(header: str | None) -> str | None:
    """The key in an `Authorization` header: HTTP Basic's user name (Segment's convention,
    password empty) or a Bearer token."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    if scheme == "bearer":
        return credentials or None
    return None


class _Entry(NamedTuple):
    found: WriteKey | None
    expires_at: float


class WriteKeyCache:
    """Looks keys up in PostgreSQL and remembers the answer for `ttl_s`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        ttl_s: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._negative_ttl_s = min(ttl_s, _NEGATIVE_TTL_CAP_S)
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # One lookup per key at a time: a burst of requests with a cold key makes one query.
        self._pending: dict[str, asyncio.Future[WriteKey | None]] = {}

    async def resolve(self, secret: str) -> WriteKey | None:
        """The live key with this secret and its project's rate limit, or None."""
        entry = self._entries.get(secret)
        now = self._clock()
        if entry is not None and entry.expires_at > now:
            return entry.found
        pending = self._pending.get(secret)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[WriteKey | None] = asyncio.get_running_loop().create_future()
        self._pending[secret] = future
        try:
            found = await self._lookup(secret)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a lone waiter does not log it as lost
            raise
        else:
            future.set_result(found)
        finally:
            del self._pending[secret]
        self._remember(secret, found, now)
        return found

    async def _lookup(self, secret: str) -> WriteKey | None:
        try:
            async with self._pool.acquire() as conn:
                key = await lookup_key(conn, secret)
                if key is None:
                    return None
                if key.project_id is None:
                    return WriteKey(key, None)
                row = await conn.fetchrow(
                    "SELECT rate_limit_per_s, ip_policy, consent_policy, scrub_rules,"
                    " scrub_regexes, own_domains FROM projects WHERE id = $1",
                    key.project_id,
                )
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            # What asyncpg raises on a connection the server terminated mid-use.
            asyncpg.InternalClientError,
            TimeoutError,
        ) as exc:
            raise KeyStoreUnavailable(str(exc) or type(exc).__name__) from exc
        if row is None:
            return WriteKey(key, None)
        return WriteKey(
            key,
            row["rate_limit_per_s"],
            ProjectPrivacy(policy_of(row)),
            tuple(row["own_domains"] or ()),
        )

    def _remember(self, secret: str, found: WriteKey | None, now: float) -> None:
        if len(self._entries) >= self._max_entries:
            # Bounded: guessed keys must not grow the cache without limit.
            self._entries = {s: e for s, e in self._entries.items() if e.expires_at > now}
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
        ttl = self._ttl_s if found is not None else self._negative_ttl_s
        self._entries[secret] = _Entry(found, now + ttl)
