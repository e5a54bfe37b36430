"""The cohorts API (docs/analytics.md, "Cohorts"): versioned CRUD of saved cohorts, and the
persons a cohort holds now. A static cohort `from_funnel` runs its funnel once, when saved."""

from __future__ import annotations

import asyncpg
import msgspec
from aiohttp import web

from libs.common.users import ANALYST
from services.query.analyses import saved_definitions as saved
from services.query.analyses.cohorts import (
    CohortBody,
    StaticCohort,
    cohort_members,
    validate_definition,
)
from services.query.analyses.funnel_runner import funnel_person_ids
from services.query.analyses.funnels import decode_cursor, encode_cursor
from services.query.analyses.requests import decode_body
from services.query.analyses.responses import CohortDetail, CohortList, CohortPersons, CohortRecord
from services.query.analyses.runner import json_response, now_utc
from services.query.analyses.scans import RequestScans, scan_opener
from services.query.auth import authorized_project, project_access
from services.query.dependencies import DEPS
from services.query.params import ParamError, parse_int, single


async def _cohort_record(
    pool: asyncpg.Pool, project_id: str, version: saved.SavedVersion
) -> CohortRecord:
    definition = msgspec.json.decode(version.definition)
    static = None
    if definition.get("type") == "static":
        static = await pool.fetchval(
            """SELECT count(*) FROM analysis_cohort_persons
               WHERE project_id = $1 AND cohort_id = $2 AND version = $3""",
            project_id,
            version.id,
            version.version,
        )
    return CohortRecord(
        id=version.id,
        version=version.version,
        name=version.name,
        description=version.description,
        definition=definition,
        created_at=version.created_at,
        static_persons=static,
    )


def check_name(name: str) -> None:
    if not name.strip():
        raise ParamError("name", "must not be empty")
    if len(name) > 200:
        raise ParamError("name", "at most 200 characters")


async def _save_cohort(request: web.Request, cohort_id: str | None) -> web.Response:
    access = await project_access(request, ANALYST)
    project_id = access.project_id
    body = decode_body(await request.read(), CohortBody)
    check_name(body.name)
    if cohort_id is not None and body.id is not None and body.id != cohort_id:
        raise ParamError("id", "an update keeps the cohort's id")
    definition = body.definition
    now = now_utc()
    validate_definition(definition, now)
    persons: list[str] = []
    if isinstance(definition, StaticCohort):
        if definition.from_funnel is not None:
            persons = await funnel_person_ids(
                request, project_id, definition.from_funnel, "definition.from_funnel"
            )
        else:
            persons = sorted(set(definition.person_ids))
            if any(not p for p in persons):
                raise ParamError("definition.person_ids", "person ids must not be empty")
        # The persons are stored as rows; the definition keeps where they came from.
        definition = msgspec.structs.replace(definition, person_ids=[])
    encoded = msgspec.json.encode(definition).decode()
    pool = request.app[DEPS].pool
    async with pool.acquire() as conn, conn.transaction():
        version = await saved.save(
            conn,
            saved.COHORTS,
            project_id,
            cohort_id,
            body.id,
            body.name,
            body.description,
            encoded,
            access.user_id,
        )
        if persons:
            await conn.copy_records_to_table(
                "analysis_cohort_persons",
                records=[(project_id, version.id, version.version, p) for p in persons],
                columns=["project_id", "cohort_id", "version", "person_id"],
            )
    record = await _cohort_record(pool, project_id, version)
    return json_response(record, status=201 if cohort_id is None else 200)


async def post_cohort(request: web.Request) -> web.Response:
    """Create a cohort (version 1)."""
    return await _save_cohort(request, None)


async def put_cohort(request: web.Request) -> web.Response:
    """Update a cohort: a new version."""
    return await _save_cohort(request, request.match_info["cohort_id"])


async def get_cohorts(request: web.Request) -> web.Response:
    """The latest version of every cohort of the project."""
    project_id = await authorized_project(request)
    pool = request.app[DEPS].pool
    versions = await saved.list_latest(pool, saved.COHORTS, project_id)
    return json_response(
        CohortList(cohorts=[await _cohort_record(pool, project_id, v) for v in versions])
    )


async def get_cohort(request: web.Request) -> web.Response:
    """A cohort's latest version and its history."""
    project_id = await authorized_project(request)
    pool = request.app[DEPS].pool
    versions = await saved.history(pool, saved.COHORTS, project_id, request.match_info["cohort_id"])
    records = [await _cohort_record(pool, project_id, v) for v in versions]
    return json_response(CohortDetail(cohort=records[0], history=records))


async def delete_cohort(request: web.Request) -> web.Response:
    """Delete a cohort (every version; analyses naming it then answer 400)."""
    project_id = (await project_access(request, ANALYST)).project_id
    await saved.delete(
        request.app[DEPS].pool, saved.COHORTS, project_id, request.match_info["cohort_id"]
    )
    return web.Response(status=204)


async def get_cohort_persons(request: web.Request) -> web.Response:
    """The persons in a cohort now (its latest version), by id, one page at a time."""
    project_id = await authorized_project(request)
    limit = parse_int(request.query, "limit", 100, 1, 10_000)
    cursor = single(request.query, "cursor")
    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ParamError:
            raise ParamError("cursor", "not a cursor this API returned") from None
    deps = request.app[DEPS]
    version = await saved.latest(
        deps.pool, saved.COHORTS, project_id, request.match_info["cohort_id"]
    )
    async with RequestScans(scan_opener(request.app), deps, project_id, False) as scans:
        members = await cohort_members(scans, deps.pool, version, now_utc())
        ids = sorted(members.column("person_id").to_pylist())
        tiers = scans.tiers()
    if after is not None:
        ids = [p for p in ids if p > after]
    page, more = ids[:limit], len(ids) > limit
    return json_response(
        CohortPersons(
            id=version.id,
            version=version.version,
            tiers=tiers,
            person_ids=page,
            next_cursor=encode_cursor(page[-1]) if more else None,
        )
    )
