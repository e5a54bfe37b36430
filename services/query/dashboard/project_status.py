"""GET /api/v1/project/status: what the dashboard shows on every page and on the setup page:
whether any event has arrived (first event seen), how fresh the data is (the newest event and
when it was received), and where the tracking snippet should point."""

from __future__ import annotations

from datetime import UTC

from aiohttp import web

from libs.common.users import VIEWER
from services.query.auth import project_access
from services.query.dashboard.accounts import json_response
from services.query.dependencies import DEPS, SETTINGS


async def get_project_status(request: web.Request) -> web.Response:
    access = await project_access(request, VIEWER)
    pool = request.app[DEPS].pool
    project_id = access.project_id
    # Rollups are kept forever and keyed by (project, granularity, bucket): their first and
    # last daily buckets are index probes, whatever tier holds the events themselves.
    days = await pool.fetchrow(
        """SELECT min(bucket) AS first_day, max(bucket) AS last_day FROM rollups
           WHERE project_id = $1 AND granularity = 'd'""",
        project_id,
    )
    # The newest event itself, from the last two days' partitions only (pruned by ts).
    newest = await pool.fetchrow(
        """SELECT ts, received_at FROM events
           WHERE project_id = $1 AND ts >= now() - interval '2 days'
             AND ts <= now() + interval '1 day'
           ORDER BY ts DESC LIMIT 1""",
        project_id,
    )
    now = await pool.fetchval("SELECT now()")
    return json_response(
        {
            "project_id": project_id,
            "now": now,
            "has_events": days["first_day"] is not None or newest is not None,
            # The UTC day of the first event (of its daily rollup bucket).
            "first_event_day": (
                days["first_day"].astimezone(UTC).date().isoformat() if days["first_day"] else None
            ),
            # The newest event of the last two days, else the start of the last day with events.
            "last_event_at": newest["ts"] if newest is not None else days["last_day"],
            "last_received_at": newest["received_at"] if newest is not None else None,
            "ingest_url": request.app[SETTINGS].public_ingest_url,
            "role": access.role,
        }
    )


def add_project_status_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/project/status", get_project_status)
