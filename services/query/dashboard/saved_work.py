"""Saved insights, dashboards, annotations and share links (docs/dashboard.md, "Saving and
sharing"). Insights and dashboards are versioned like cohorts (saved_definitions); viewers read
them, analysts and admins change them.

- /api/v1/insights, /api/v1/insights/{id}            GET list / POST; GET / PUT / DELETE
- /api/v1/dashboards, /api/v1/dashboards/{id}        the same (listing creates the ready-made)
- /api/v1/annotations, /api/v1/annotations/{id}      GET (optionally from/to) / POST; DELETE
- /api/v1/dashboards/{id}/shares                     GET the live links / POST a new one
- /api/v1/shares/{token}                             DELETE: revoke a link
- /api/v1/shared/{token}                             GET, no sign-in: the shared dashboard
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web
from ulid import ULID

from libs.common.users import ANALYST, VIEWER
from services.query.analyses import saved_definitions as saved
from services.query.auth import project_access, share_scope
from services.query.dashboard.accounts import json_response, read_json
from services.query.dashboard.insight_kinds import InsightDefinition, check_definition
from services.query.dashboard.ready_made import ensure_ready_made
from services.query.dependencies import DEPS, ApiError
from services.query.params import ParamError, parse_instant, parse_timezone, single

MAX_TILES = 40


class InsightBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str | None = None
    name: str
    description: str = ""
    definition: InsightDefinition


class Tile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    insight_id: str
    width: int = 1  # 1: half the page, 2: the whole width


class DashboardDefinition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tiles: list[Tile] = []


class DashboardBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str | None = None
    name: str
    description: str = ""
    definition: DashboardDefinition


class AnnotationBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    at: str  # an ISO datetime or date
    text: str


def _check_name(name: str) -> None:
    if not name.strip():
        raise ParamError("name", "must not be empty")
    if len(name) > 200:
        raise ParamError("name", "at most 200 characters")


def _record(version: saved.SavedVersion) -> dict[str, Any]:
    return {
        "id": version.id,
        "version": version.version,
        "name": version.name,
        "description": version.description,
        "definition": msgspec.json.decode(version.definition),
        "created_at": version.created_at,
        "created_by": version.created_by,
    }


async def _save(
    request: web.Request, kind: saved.DefinitionTable, item_id: str | None
) -> web.Response:
    access = await project_access(request, ANALYST)
    pool = request.app[DEPS].pool
    if kind is saved.INSIGHTS:
        body: Any = await read_json(request, InsightBody)
        check_definition(body.definition)
    else:
        body = await read_json(request, DashboardBody)
        await _check_dashboard_tiles(pool, access.project_id, body.definition)
    _check_name(body.name)
    if item_id is not None and body.id is not None and body.id != item_id:
        raise ParamError("id", f"an update keeps the {kind.noun}'s id")
    encoded = msgspec.json.encode(body.definition).decode()
    async with pool.acquire() as conn:
        version = await saved.save(
            conn,
            kind,
            access.project_id,
            item_id,
            body.id,
            body.name.strip(),
            body.description,
            encoded,
            access.user_id,
        )
    return json_response(_record(version), status=201 if item_id is None else 200)


async def _check_dashboard_tiles(pool: Any, project_id: str, definition: Any) -> None:
    if len(definition.tiles) > MAX_TILES:
        raise ParamError("definition.tiles", f"at most {MAX_TILES} tiles")
    for i, tile in enumerate(definition.tiles):
        if tile.width not in (1, 2):
            raise ParamError(f"definition.tiles[{i}].width", "must be 1 or 2")
        try:
            await saved.latest(pool, saved.INSIGHTS, project_id, tile.insight_id)
        except ApiError:
            raise ParamError(
                f"definition.tiles[{i}].insight_id", f"no insight {tile.insight_id!r}"
            ) from None


def _crud(kind: saved.DefinitionTable, plural: str, id_param: str) -> dict[str, Any]:
    async def list_items(request: web.Request) -> web.Response:
        access = await project_access(request, VIEWER)
        pool = request.app[DEPS].pool
        if kind is saved.DASHBOARDS:
            async with pool.acquire() as conn:
                await ensure_ready_made(conn, access.project_id)
        versions = await saved.list_latest(pool, kind, access.project_id)
        return json_response({plural: [_record(v) for v in versions]})

    async def get_item(request: web.Request) -> web.Response:
        access = await project_access(request, VIEWER)
        versions = await saved.history(
            request.app[DEPS].pool, kind, access.project_id, request.match_info[id_param]
        )
        records = [_record(v) for v in versions]
        return json_response({kind.noun: records[0], "history": records})

    async def post_item(request: web.Request) -> web.Response:
        return await _save(request, kind, None)

    async def put_item(request: web.Request) -> web.Response:
        return await _save(request, kind, request.match_info[id_param])

    async def delete_item(request: web.Request) -> web.Response:
        access = await project_access(request, ANALYST)
        item_id = request.match_info[id_param]
        pool = request.app[DEPS].pool
        await saved.delete(pool, kind, access.project_id, item_id)
        if kind is saved.DASHBOARDS:
            # Its share links show nothing any more; revoke them so the list says so too.
            await pool.execute(
                """UPDATE dashboard_shares SET revoked_at = now()
                   WHERE project_id = $1 AND dashboard_id = $2 AND revoked_at IS NULL""",
                access.project_id,
                item_id,
            )
        return web.Response(status=204)

    return {
        "list": list_items,
        "get": get_item,
        "post": post_item,
        "put": put_item,
        "delete": delete_item,
    }


# ---------------------------------------------------------------------------------------------
# Annotations


def _annotation(row: Any) -> dict[str, Any]:
    return {
        "id": row["annotation_id"],
        "at": row["at"],
        "text": row["text"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
    }


async def get_annotations(request: web.Request) -> web.Response:
    access = await project_access(request, VIEWER)
    tz = parse_timezone(request.query)
    start = end = None
    if raw := single(request.query, "from"):
        start = parse_instant("from", raw, tz, end_of_day=False)
    if raw := single(request.query, "to"):
        end = parse_instant("to", raw, tz, end_of_day=True)
    rows = await request.app[DEPS].pool.fetch(
        """SELECT annotation_id, at, text, created_by, created_at FROM annotations
           WHERE project_id = $1 AND deleted_at IS NULL
             AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at < $3)
           ORDER BY at""",
        access.project_id,
        start,
        end,
    )
    return json_response({"annotations": [_annotation(r) for r in rows]})


async def post_annotation(request: web.Request) -> web.Response:
    access = await project_access(request, ANALYST)
    body: AnnotationBody = await read_json(request, AnnotationBody)
    text = body.text.strip()
    if not text or len(text) > 500:
        raise ParamError("text", "1 to 500 characters")
    at: datetime = parse_instant("at", body.at, parse_timezone(request.query), end_of_day=False)
    row = await request.app[DEPS].pool.fetchrow(
        """INSERT INTO annotations (project_id, annotation_id, at, text, created_by)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING annotation_id, at, text, created_by, created_at""",
        access.project_id,
        f"a_{str(ULID()).lower()}",
        at,
        text,
        access.user_id,
    )
    return json_response(_annotation(row), 201)


async def delete_annotation(request: web.Request) -> web.Response:
    access = await project_access(request, ANALYST)
    status = await request.app[DEPS].pool.execute(
        """UPDATE annotations SET deleted_at = now()
           WHERE project_id = $1 AND annotation_id = $2 AND deleted_at IS NULL""",
        access.project_id,
        request.match_info["annotation_id"],
    )
    if status.endswith(" 0"):
        raise ApiError(404, f"no annotation {request.match_info['annotation_id']!r}")
    return web.Response(status=204)


# ---------------------------------------------------------------------------------------------
# Share links


def _share(row: Any) -> dict[str, Any]:
    return {
        "token": row["token"],
        "path": f"/share/{row['token']}",
        "dashboard_id": row["dashboard_id"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
    }


async def get_shares(request: web.Request) -> web.Response:
    access = await project_access(request, ANALYST)
    dashboard_id = request.match_info["dashboard_id"]
    pool = request.app[DEPS].pool
    await saved.latest(pool, saved.DASHBOARDS, access.project_id, dashboard_id)
    rows = await pool.fetch(
        """SELECT token, dashboard_id, created_by, created_at FROM dashboard_shares
           WHERE project_id = $1 AND dashboard_id = $2 AND revoked_at IS NULL
           ORDER BY created_at""",
        access.project_id,
        dashboard_id,
    )
    return json_response({"shares": [_share(r) for r in rows]})


async def post_share(request: web.Request) -> web.Response:
    access = await project_access(request, ANALYST)
    dashboard_id = request.match_info["dashboard_id"]
    pool = request.app[DEPS].pool
    await saved.latest(pool, saved.DASHBOARDS, access.project_id, dashboard_id)
    row = await pool.fetchrow(
        """INSERT INTO dashboard_shares (token, project_id, dashboard_id, created_by)
           VALUES ($1, $2, $3, $4) RETURNING token, dashboard_id, created_by, created_at""",
        secrets.token_urlsafe(24),
        access.project_id,
        dashboard_id,
        access.user_id,
    )
    return json_response(_share(row), 201)


async def delete_share(request: web.Request) -> web.Response:
    access = await project_access(request, ANALYST)
    status = await request.app[DEPS].pool.execute(
        """UPDATE dashboard_shares SET revoked_at = now()
           WHERE project_id = $1 AND token = $2 AND revoked_at IS NULL""",
        access.project_id,
        request.match_info["token"],
    )
    if status.endswith(" 0"):
        raise ApiError(404, "no such live share link in this project")
    return web.Response(status=204)


async def get_shared(request: web.Request) -> web.Response:
    """The dashboard a share link shows, with its insights: no sign-in, nothing else."""
    pool = request.app[DEPS].pool
    scope = await share_scope(pool, request.match_info["token"])
    if scope is None:
        raise ApiError(404, "this share link was revoked or does not exist")
    project_id, dashboard_id, insights = scope
    dashboard = await saved.latest(pool, saved.DASHBOARDS, project_id, dashboard_id)
    project = await pool.fetchrow(
        "SELECT id, name, timezone FROM projects WHERE id = $1", project_id
    )
    response = json_response(
        {
            "project": dict(project) if project is not None else {"id": project_id},
            "dashboard": _record(dashboard),
            "insights": [_record(v) for _, v in insights],
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def add_saved_work_routes(app: web.Application) -> None:
    r = app.router
    for kind, plural, id_param in (
        (saved.INSIGHTS, "insights", "insight_id"),
        (saved.DASHBOARDS, "dashboards", "dashboard_id"),
    ):
        handlers = _crud(kind, plural, id_param)
        base = f"/api/v1/{plural}"
        r.add_get(base, handlers["list"])
        r.add_post(base, handlers["post"])
        r.add_get(f"{base}/{{{id_param}}}", handlers["get"])
        r.add_put(f"{base}/{{{id_param}}}", handlers["put"])
        r.add_delete(f"{base}/{{{id_param}}}", handlers["delete"])
    r.add_get("/api/v1/annotations", get_annotations)
    r.add_post("/api/v1/annotations", post_annotation)
    r.add_delete("/api/v1/annotations/{annotation_id}", delete_annotation)
    r.add_get("/api/v1/dashboards/{dashboard_id}/shares", get_shares)
    r.add_post("/api/v1/dashboards/{dashboard_id}/shares", post_share)
    r.add_delete("/api/v1/shares/{token}", delete_share)
    r.add_get("/api/v1/shared/{token}", get_shared)
