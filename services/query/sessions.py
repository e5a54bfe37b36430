"""GET /api/v1/analytics/sessions/{id}: one session of the authorized project and its events."""

from __future__ import annotations

import time

from aiohttp import web

from services.query.auth import authorized_project
from services.query.cold_rows import ColdFilter, merge_events, moved_days, read_cold_events
from services.query.dependencies import DEPS, SETTINGS, ApiError
from services.query.params import reject_unknown
from services.query.records import EVENT_SELECT, SESSION_SELECT, event_record, session_record
from services.query.responses import SessionDetail, TierScan, json_encoder


async def get_session(request: web.Request) -> web.Response:
    """The session and its events in time order; 404 when this project has no such session."""
    project_id = await authorized_project(request)
    reject_unknown(request.query, {"project"})
    session_id = request.match_info["session_id"]
    max_events = request.app[SETTINGS].max_page_size
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        session = await conn.fetchrow(
            f"SELECT {SESSION_SELECT} FROM sessions s"
            " WHERE s.project_id = $1 AND s.session_id = $2",
            project_id,
            session_id,
        )
        if session is None:
            raise ApiError(404, f"no session {session_id!r} in this project")
        # Bounded by the session's own span so only its day partitions are searched, and found
        # through its person's index: every event of a session carries the session's
        # distinct_id (sessions are assigned per distinct_id), and `events` keeps no index on
        # session_id.
        started = time.perf_counter()
        rows = await conn.fetch(
            f"SELECT {EVENT_SELECT} FROM events e"
            " WHERE e.project_id = $1 AND e.distinct_id = $2 AND e.session_id = $3"
            " AND e.ts >= $4 AND e.ts <= $5 ORDER BY e.ts, e.event_id LIMIT $6",
            project_id,
            session["distinct_id"],
            session_id,
            session["start_ts"],
            session["end_ts"],
            max_events + 1,
        )
    tiers = [
        TierScan(tier="hot", rows=len(rows), ms=round((time.perf_counter() - started) * 1000, 3))
    ]
    events = [event_record(r) for r in rows]
    # Days of the session whose rows left PostgreSQL are read from their day files.
    first, last = session["start_ts"], session["end_ts"]
    days = await moved_days(deps, project_id, first, last)
    if days:
        cold = ColdFilter()
        cold.add("session_id = ? AND ts >= ? AND ts <= ?", session_id, first, last)
        cold_events, read = await read_cold_events(
            deps, project_id, days, cold, limit=max_events + 1
        )
        events = merge_events(events, cold_events, descending=False, limit=max_events + 1)
        tiers.extend([read] if read else [])
    body = SessionDetail(
        session=session_record(session),
        events=events[:max_events],
        truncated=len(events) > max_events,
        tiers=tiers,
    )
    return web.Response(body=json_encoder.encode(body), content_type="application/json")
