"""GET /api/v1/analytics/sessions/{id}: one session of the authorized project and its events."""

from __future__ import annotations

from aiohttp import web

from services.query.auth import authorized_project
from services.query.dependencies import DEPS, SETTINGS, ApiError
from services.query.params import reject_unknown
from services.query.records import EVENT_SELECT, SESSION_SELECT, event_record, session_record
from services.query.responses import SessionDetail, json_encoder


async def get_session(request: web.Request) -> web.Response:
    """The session and its events in time order; 404 when this project has no such session."""
    project_id = await authorized_project(request)
    reject_unknown(request.query, {"project"})
    session_id = request.match_info["session_id"]
    max_events = request.app[SETTINGS].max_page_size
    async with request.app[DEPS].pool.acquire() as conn:
        session = await conn.fetchrow(
            f"SELECT {SESSION_SELECT} FROM sessions s"
            " WHERE s.project_id = $1 AND s.session_id = $2",
            project_id,
            session_id,
        )
        if session is None:
            raise ApiError(404, f"no session {session_id!r} in this project")
        # Bounded by the session's own span so only its day partitions are searched.
        rows = await conn.fetch(
            f"SELECT {EVENT_SELECT} FROM events e"
            " WHERE e.project_id = $1 AND e.session_id = $2 AND e.ts >= $3 AND e.ts <= $4"
            " ORDER BY e.ts, e.event_id LIMIT $5",
            project_id,
            session_id,
            session["start_ts"],
            session["end_ts"],
            max_events + 1,
        )
    body = SessionDetail(
        session=session_record(session),
        events=[event_record(r) for r in rows[:max_events]],
        truncated=len(rows) > max_events,
    )
    return web.Response(body=json_encoder.encode(body), content_type="application/json")
