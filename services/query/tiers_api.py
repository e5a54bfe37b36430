"""The storage tiers seen through the query API (docs/tiering.md):

- GET /api/v1/tiers: what each tier holds for the key's project, with a projected monthly cost;
- GET /api/v1/tiers/restores/{id}: a restore job's state (advanced on every look);
- any request whose range needs Archive-tier day files that are not restored answers 202 with
  the restore job started for them; the same request returns full results once it is done.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from aiohttp import web

from libs.common.day_files.restores import RestoreJob, advance_restore, request_restore
from libs.common.day_files.tier_summary import TierPrices, tier_summary
from libs.common.object_store import ObjectStore
from services.query.auth import authorized_project
from services.query.dependencies import DEPS, SETTINGS, ApiError
from services.query.event_scan import ArchivedDaysError
from services.query.params import reject_unknown
from services.query.responses import json_encoder

RESTORES_PATH = "/api/v1/tiers/restores"


class RestoreAccepted(msgspec.Struct, kw_only=True):
    """The 202 body of a request that needs archived days: retry it once `restore` is
    `restored` (poll `status_url`)."""

    error: str
    archived_days: list[str]
    restore: RestoreJob
    status_url: str


def _store(request: web.Request) -> ObjectStore:
    cache = request.app[DEPS].scan_engine.cache
    if cache is None:
        raise ApiError(503, "this query service has no object store configured")
    return cache.store


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json_encoder.encode(body), status=status, content_type="application/json"
    )


async def get_tiers(request: web.Request) -> web.Response:
    """Objects, rows, bytes, bytes per event, date range and projected monthly cost per tier
    for the key's project, and the tier jobs' pending work."""
    project_id = await authorized_project(request)
    reject_unknown(request.query, {"project"})
    settings = request.app[SETTINGS]
    prices = TierPrices(
        hot=settings.price_hot_gb_month,
        cold=settings.price_cold_gb_month,
        archive=settings.price_archive_gb_month,
    )
    return _json(await tier_summary(request.app[DEPS].pool, project_id, prices))


async def get_restore(request: web.Request) -> web.Response:
    """A restore job of the key's project; 404 for another project's or an unknown id."""
    project_id = await authorized_project(request)
    reject_unknown(request.query, {"project"})
    restore_id = request.match_info["restore_id"]
    pool = request.app[DEPS].pool
    owner = await pool.fetchval("SELECT project_id FROM restores WHERE restore_id = $1", restore_id)
    if owner != project_id:
        raise ApiError(404, f"no restore {restore_id!r} in this project")
    job = await advance_restore(pool, _store(request), restore_id, now=datetime.now(UTC))
    if job is None:
        raise ApiError(404, f"no restore {restore_id!r} in this project")
    return _json(job)


async def restore_required(request: web.Request, exc: ArchivedDaysError) -> web.Response:
    """202 with the restore job making `exc`'s archived parts readable (started now, or the
    one already running for them)."""
    if not exc.parts:
        raise ApiError(409, f"{exc}; the range needs archived data")
    project_id = exc.parts[0].project_id
    job = await request_restore(
        request.app[DEPS].pool,
        _store(request),
        project_id,
        exc.parts,
        hours=request.app[SETTINGS].restore_hours,
    )
    body = RestoreAccepted(
        error=f"{exc}; a restore was started, retry when it is restored",
        archived_days=[d.isoformat() for d in exc.days],
        restore=job,
        status_url=f"{RESTORES_PATH}/{job.restore_id}",
    )
    response = _json(body, status=202)
    response.headers["Location"] = body.status_url
    return response


def add_tier_routes(app: web.Application) -> None:
    """Serve the tiers summary and restore jobs."""
    app.router.add_get("/api/v1/tiers", get_tiers)
    app.router.add_get(RESTORES_PATH + "/{restore_id}", get_restore)
