"""Cookieless visitor ids: what ingest derives for the browser tracker's events sent before the
visitor consented to client storage (no anonymousId, no userId).

The id is a hash of (daily salt, project, IP address, user agent): stable for one visitor on
one device for one UTC day, unlinkable across days, and never reversible to the IP address.
Salts live in a JetStream key-value bucket so every ingest replica derives the same id on the
same day; one is created at random on a day's first use and the bucket's max age discards it
about a day later. Nothing outside the bucket keeps a salt, and the process keeps only today's.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, date, datetime

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from libs.common.errors import StrataError
from libs.common.subjects import Subjects, subject_token
from services.ingest.segment_payloads import SegmentContext

TRACKER_LIBRARY = "strata.js"
COOKIELESS_ID_PREFIX = "cl-"
# A salt must outlive its own UTC day (it may be created at 00:00) and no more: 25 hours.
SALT_MAX_AGE_S = 25 * 3600.0
_SALT_BYTES = 32


class SaltsUnavailable(StrataError):
    """The salt store (JetStream) could not be reached; the request should be retried."""

    code = "salts_unavailable"
    http_status = 503


def salts_bucket(subjects: Subjects) -> str:
    """The key-value bucket holding this deployment's daily salts."""
    return f"{subject_token(subjects.prefix.upper())}_COOKIELESS_SALTS"


def cookieless_id(salt: bytes, project_id: str, ip: str, user_agent: str) -> str:
    """The visitor id of one (project, IP, user agent) under one day's salt."""
    digest = hashlib.blake2b(
        b"\x00".join((project_id.encode(), ip.encode(), user_agent.encode())),
        key=salt,
        digest_size=16,
    )
    return COOKIELESS_ID_PREFIX + digest.hexdigest()


class DailySalts:
    """Today's salt, shared by every ingest replica through a JetStream key-value bucket."""

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._bucket_name = salts_bucket(subjects)
        self._bucket: KeyValue | None = None
        self._day: date | None = None
        self._salt = b""
        self._lock = asyncio.Lock()

    async def salt_for(self, day: date) -> bytes:
        """The salt of `day` (UTC), created on the day's first use by any replica."""
        if day == self._day:
            return self._salt
        async with self._lock:
            if day != self._day:
                try:
                    salt = await self._fetch_or_create(day)
                except Exception as exc:
                    raise SaltsUnavailable(f"daily salt store unavailable: {exc}") from exc
                # Only today's salt is kept in memory: yesterday's is forgotten here.
                self._day, self._salt = day, salt
        return self._salt

    async def _fetch_or_create(self, day: date) -> bytes:
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = await self._js.create_key_value(
                KeyValueConfig(
                    bucket=self._bucket_name,
                    history=1,
                    ttl=SALT_MAX_AGE_S,
                    storage=StorageType.FILE,
                )
            )
        key = day.isoformat()
        try:
            await bucket.create(key, os.urandom(_SALT_BYTES))
        except KeyWrongLastSequenceError:
            pass  # another replica created today's salt first: use theirs
        entry = await bucket.get(key)
        if not entry.value:
            raise SaltsUnavailable(f"daily salt {key} is empty")
        return entry.value


class CookielessIds:
    """Derives the cookieless visitor id of a tracker request."""

    def __init__(self, salts: DailySalts) -> None:
        self._salts = salts

    async def visitor_id(
        self, project_id: str, ip: str, user_agent: str, now: datetime | None = None
    ) -> str:
        """The id of this visitor today; raises SaltsUnavailable when the store is down."""
        day = (now or datetime.now(UTC)).astimezone(UTC).date()
        salt = await self._salts.salt_for(day)
        return cookieless_id(salt, project_id, ip, user_agent)


def sent_by_tracker(context: SegmentContext | None) -> bool:
    """Whether a request's batch context says the browser tracker sent it (only its events
    may arrive without any id; other SDKs still get the 'missing id' error)."""
    library = context.library if context is not None else None
    return library is not None and library.name == TRACKER_LIBRARY
