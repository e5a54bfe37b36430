"""GET /api/v1/project/status: what the dashboard shows on every page and on the setup page:
whether any event has arrived (first event seen), how fresh the data is (the newest event and
when it was received), and where the tracking snippet should point."""

from __future__ import annotations

from aiohttp import web

from libs.common.users import VIEWER
from services.query.auth import project_access
from services.query.dashboard.accounts import json_response
from services.query.dependencies import DEPS, SETTINGS


async def get_project_status(request: web.Request) -> web.Response:
    access = await project_access(request, VIEWER)
    pool = request.app[DEPS].pool
    project_id = access.project_id
    # Index probes on (project_id, ts) per day partition: cheap enough to run on every page.
    newest = await pool.fetchrow(
        """SELECT ts, received_at FROM events
           WHERE project_id = $1 AND ts <= now() + interval '1 day'
           ORDER BY ts DESC LIMIT 1""",
        project_id,
    )
    oldest_hot = await pool.fetchval(
        "SELECT ts FROM events WHERE project_id = $1 ORDER BY ts LIMIT 1", project_id
    )
    oldest_file_day = await pool.fetchval(
        "SELECT min(day) FROM day_files WHERE project_id = $1 AND state = 'active'", project_id
    )
    now = await pool.fetchval("SELECT now()")
    days = [d for d in (oldest_file_day, oldest_hot and oldest_hot.date()) if d is not None]
    return json_response(
        {
            "project_id": project_id,
            "now": now,
            "has_events": newest is not None or oldest_file_day is not None,
            # The first event's day (UTC): the oldest day file's or the oldest hot row's.
            "first_event_day": min(days).isoformat() if days else None,
            "last_event_at": newest["ts"] if newest is not None else None,
            "last_received_at": newest["received_at"] if newest is not None else None,
            "ingest_url": request.app[SETTINGS].public_ingest_url,
            "role": access.role,
        }
    )


def add_project_status_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/project/status", get_project_status)
