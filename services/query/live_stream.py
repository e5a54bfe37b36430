"""GET /api/v1/analytics/stream/metrics: Server-Sent Events with active visitors and events per
minute, fed by a core NATS subscription on the project's enriched subjects. One subscription
per project is shared by every client in this process; it is seeded from PostgreSQL when it
starts, so a restarted query service is accurate at once."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.common.rollup_keys import VISITOR_COLUMN
from libs.common.schemas.events_v1 import EventV1, enriched_batch_decoder
from libs.common.subjects import Subjects
from services.query.auth import authorized_project
from services.query.dependencies import SETTINGS
from services.query.params import parse_bool, reject_unknown
from services.query.responses import LiveMetrics, json_encoder

ACTIVE_WINDOW_S = 300  # a visitor is active for 5 minutes after their latest event
RATE_WINDOW_S = 60

log = structlog.get_logger()


class ProjectActivity:
    """Recent activity of one project: each person's latest event time, events per second."""

    def __init__(self) -> None:
        # person key -> latest event time (epoch s), humans and bots apart
        self.last_seen: dict[bool, dict[str, float]] = {False: {}, True: {}}
        # epoch second -> events stamped in it
        self.per_second: dict[bool, dict[int, int]] = {False: {}, True: {}}
        self.clients = 0
        self.subscription: Subscription | None = None
        self.seeded = asyncio.Event()

    def record(self, person: str, is_bot: bool, ts: float, count: int = 1) -> None:
        seen = self.last_seen[is_bot]
        if seen.get(person, -math.inf) < ts:
            seen[person] = ts
        if count:
            second = int(ts)
            counts = self.per_second[is_bot]
            counts[second] = counts.get(second, 0) + count

    def record_events(self, events: Iterable[EventV1]) -> None:
        for ev in events:
            self.record(ev.distinct_id, ev.is_bot, ev.ts.timestamp())  # VISITOR_COLUMN

    def snapshot(self, now: float, include_bots: bool) -> tuple[int, int]:
        """(active visitors, events per minute) at `now`, dropping what has aged out."""
        active_since, rate_since = now - ACTIVE_WINDOW_S, now - RATE_WINDOW_S
        for is_bot in (False, True):
            seen = self.last_seen[is_bot]
            for person in [p for p, ts in seen.items() if ts < active_since]:
                del seen[person]
            counts = self.per_second[is_bot]
            # Second s holds events stamped in [s, s + 1): inside the window while s + 1 > since.
            for second in [s for s in counts if s + 1 <= rate_since]:
                del counts[second]
        kinds = (False, True) if include_bots else (False,)
        persons: set[str] = set()
        for is_bot in kinds:
            persons.update(self.last_seen[is_bot])
        events = sum(sum(self.per_second[is_bot].values()) for is_bot in kinds)
        return len(persons), events


_SEED_PERSONS = f"""
SELECT {VISITOR_COLUMN} AS person, is_bot,
       extract(epoch FROM max(ts))::float8 AS last_ts
FROM events WHERE project_id = $1 AND ts >= $2 GROUP BY 1, 2
"""
_SEED_RATE = """
SELECT floor(extract(epoch FROM ts))::bigint AS second, is_bot, count(*) AS events
FROM events WHERE project_id = $1 AND ts >= $2 GROUP BY 1, 2
"""
_ALREADY_STORED = """
SELECT event_id FROM events WHERE project_id = $1 AND ts >= $2 AND event_id = ANY($3::text[])
"""


class LiveActivityHub:
    """Per-project activity shared by every live client; subscribes while anyone watches."""

    def __init__(self, nc: NATS, pool: asyncpg.Pool, subjects: Subjects) -> None:
        self.nc = nc
        self.pool = pool
        self.subjects = subjects
        self.projects: dict[str, ProjectActivity] = {}
        self._lock = asyncio.Lock()
        self.closing = asyncio.Event()

    def subject(self, project_id: str) -> str:
        return f"{self.subjects.prefix}.enriched.v1.{project_id}.>"

    async def acquire(self, project_id: str) -> ProjectActivity:
        """The project's activity, subscribing and seeding it for the first client."""
        async with self._lock:
            activity = self.projects.get(project_id)
            if activity is None:
                activity = self.projects[project_id] = ProjectActivity()
                try:
                    await self._start(project_id, activity)
                except BaseException:
                    del self.projects[project_id]
                    if activity.subscription is not None:
                        await activity.subscription.unsubscribe()
                    raise
            activity.clients += 1
            return activity

    async def release(self, project_id: str) -> None:
        async with self._lock:
            activity = self.projects.get(project_id)
            if activity is None:
                return
            activity.clients -= 1
            if activity.clients <= 0:
                del self.projects[project_id]
                if activity.subscription is not None and not self.nc.is_closed:
                    await activity.subscription.unsubscribe()

    async def _start(self, project_id: str, activity: ProjectActivity) -> None:
        # Subscribe before seeding so nothing published meanwhile is missed; what arrives
        # during seeding is held back and checked against the seed's snapshot instead.
        held: list[EventV1] = []

        async def on_batch(msg: Msg) -> None:
            try:
                batch = enriched_batch_decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                log.warning("live_stream_undecodable_batch", subject=msg.subject, error=str(exc))
                return
            if activity.seeded.is_set():
                activity.record_events(batch.events)
            else:
                held.extend(batch.events)

        activity.subscription = await self.nc.subscribe(self.subject(project_id), cb=on_batch)
        await self.nc.flush()
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            # One snapshot for the seed and the check of held events: an event both stored in
            # that snapshot and delivered live is counted once.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                persons = await conn.fetch(
                    _SEED_PERSONS, project_id, now - timedelta(seconds=ACTIVE_WINDOW_S)
                )
                rates = await conn.fetch(
                    _SEED_RATE, project_id, now - timedelta(seconds=RATE_WINDOW_S + 1)
                )
                for row in persons:
                    activity.record(row["person"], row["is_bot"], row["last_ts"], count=0)
                for row in rates:
                    counts = activity.per_second[row["is_bot"]]
                    counts[row["second"]] = counts.get(row["second"], 0) + row["events"]
                pending = list(held)
                stored = {
                    r["event_id"]
                    for r in await conn.fetch(
                        _ALREADY_STORED,
                        project_id,
                        now - timedelta(seconds=ACTIVE_WINDOW_S),
                        [e.event_id for e in pending],
                    )
                }
        activity.record_events(e for e in held if e.event_id not in stored)
        activity.seeded.set()
        log.info("live_stream_subscribed", project_id=project_id, seeded_persons=len(persons))

    async def close(self) -> None:
        self.closing.set()
        async with self._lock:
            for activity in self.projects.values():
                if activity.subscription is not None and not self.nc.is_closed:
                    await activity.subscription.unsubscribe()
            self.projects.clear()


LIVE_HUB = web.AppKey("live_hub", LiveActivityHub)


async def stream_metrics(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `event: metrics` with LiveMetrics every stream_interval_s."""
    project_id = await authorized_project(request)
    reject_unknown(request.query, {"project", "include_bots"})
    include_bots = parse_bool(request.query, "include_bots")
    interval = request.app[SETTINGS].stream_interval_s
    hub = request.app[LIVE_HUB]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies must not hold events back
        }
    )
    activity = await hub.acquire(project_id)
    try:
        await response.prepare(request)
        await response.write(f"retry: {int(interval * 1000)}\n\n".encode())
        while not hub.closing.is_set():
            now = time.time()
            active, per_minute = activity.snapshot(now, include_bots)
            update = LiveMetrics(
                ts=datetime.fromtimestamp(now, UTC),
                active_visitors=active,
                events_per_minute=per_minute,
                window_s=ACTIVE_WINDOW_S,
            )
            await response.write(b"event: metrics\ndata: " + json_encoder.encode(update) + b"\n\n")
            try:
                await asyncio.wait_for(hub.closing.wait(), timeout=interval)
            except TimeoutError:
                pass
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        await hub.release(project_id)
    return response
