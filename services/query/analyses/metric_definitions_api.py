"""The custom metric definitions API (docs/analytics.md): versioned CRUD of saved metrics."""

from __future__ import annotations

import msgspec
from aiohttp import web

from libs.common.users import ANALYST
from services.query.analyses import saved_definitions as saved
from services.query.analyses.cohorts_api import check_name
from services.query.analyses.metric_definitions import MetricBody, resolve_metric, validate_metric
from services.query.analyses.requests import decode_body
from services.query.analyses.responses import (
    MetricDefinitionDetail,
    MetricDefinitionList,
    SavedDefinition,
)
from services.query.analyses.runner import json_response
from services.query.auth import authorized_project, project_access
from services.query.dependencies import DEPS
from services.query.params import ParamError


def _metric_record(version: saved.SavedVersion) -> SavedDefinition:
    return SavedDefinition(
        id=version.id,
        version=version.version,
        name=version.name,
        description=version.description,
        definition=msgspec.json.decode(version.definition),
        created_at=version.created_at,
    )


async def _save_metric(request: web.Request, metric_id: str | None) -> web.Response:
    access = await project_access(request, ANALYST)
    project_id = access.project_id
    body = decode_body(await request.read(), MetricBody)
    check_name(body.name)
    if metric_id is not None and body.id is not None and body.id != metric_id:
        raise ParamError("id", "an update keeps the metric's id")
    validate_metric(body.definition)
    pool = request.app[DEPS].pool
    await resolve_metric(pool, project_id, body.definition)  # 400 for an unknown operand id
    encoded = msgspec.json.encode(body.definition).decode()
    async with pool.acquire() as conn:
        version = await saved.save(
            conn,
            saved.METRICS,
            project_id,
            metric_id,
            body.id,
            body.name,
            body.description,
            encoded,
            access.user_id,
        )
    return json_response(_metric_record(version), status=201 if metric_id is None else 200)


async def post_metric_definition(request: web.Request) -> web.Response:
    """Create a custom metric (version 1)."""
    return await _save_metric(request, None)


async def put_metric_definition(request: web.Request) -> web.Response:
    """Update a custom metric: a new version."""
    return await _save_metric(request, request.match_info["metric_id"])


async def get_metric_definitions(request: web.Request) -> web.Response:
    """The latest version of every custom metric of the project."""
    project_id = await authorized_project(request)
    versions = await saved.list_latest(request.app[DEPS].pool, saved.METRICS, project_id)
    return json_response(
        MetricDefinitionList(metric_definitions=[_metric_record(v) for v in versions])
    )


async def get_metric_definition(request: web.Request) -> web.Response:
    """A custom metric's latest version and its history."""
    project_id = await authorized_project(request)
    versions = await saved.history(
        request.app[DEPS].pool, saved.METRICS, project_id, request.match_info["metric_id"]
    )
    records = [_metric_record(v) for v in versions]
    return json_response(MetricDefinitionDetail(metric_definition=records[0], history=records))


async def delete_metric_definition(request: web.Request) -> web.Response:
    """Delete a custom metric (every version)."""
    project_id = (await project_access(request, ANALYST)).project_id
    await saved.delete(
        request.app[DEPS].pool, saved.METRICS, project_id, request.match_info["metric_id"]
    )
    return web.Response(status=204)
