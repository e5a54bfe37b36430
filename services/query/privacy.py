"""GDPR erasure and access over HTTP, admin keys and admin users only (docs/privacy.md,
"Erasure and access (GDPR)"):

- POST /api/v1/privacy/erasure             erase a person (202 with the request's status)
- GET  /api/v1/privacy/erasure/{id}        the request's state and progress
- GET  /api/v1/privacy/users/{id}/export   every event of the person, all tiers, as NDJSON

Every erasure and export is written to `privacy_audit_log` with the key (or user) that asked.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import msgspec
import pyarrow as pa
import pyarrow.dataset as pads
import structlog
from aiohttp import web

from libs.common.day_files import DayPart
from libs.common.day_files.layout import EVENT_FILE_COLUMNS
from libs.common.erasure import (
    MAX_IDS,
    erasure_status,
    erasure_subject,
    record_audit,
    request_erasure,
    resolve_person_ids,
)
from libs.common.model.event_encoding import restored_sql
from libs.common.object_store import ObjectArchived, ObjectNotFound
from libs.common.users import ADMIN
from services.query.auth import project_access
from services.query.dependencies import DEPS, ApiError
from services.query.params import parse_bool
from services.query.responses import json_encoder

log = structlog.get_logger()

_MAX_ID_CHARS = 200
_EXPORT_BATCH_ROWS = 2000
_COLUMNS = tuple(EVENT_FILE_COLUMNS)
# As the day files hold them: properties (as JSON text) and anonymous_id as they were sent.
_HOT_SELECT = ", ".join(
    f"{restored_sql(c)}::text AS {c}" if c == "properties" else f"{restored_sql(c)} AS {c}"
    for c in _COLUMNS
)


class ErasureBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """POST /api/v1/privacy/erasure: the person, by user id and/or device (distinct) ids."""

    user_id: str | None = None
    distinct_ids: list[str] = msgspec.field(default_factory=list)


async def admin_project(request: web.Request) -> tuple[str, str]:
    """Who asks (the admin key's or admin user's id, for the audit log) and the project it
    acts on, or a 401/403/404 ApiError."""
    access = await project_access(request, ADMIN)
    return access.actor, access.project_id


def _check_id(value: str, what: str) -> str:
    if not value or len(value) > _MAX_ID_CHARS:
        raise ApiError(400, f"{what} must be 1 to {_MAX_ID_CHARS} characters")
    return value


def _parse_erasure(raw: bytes) -> ErasureBody:
    try:
        body = msgspec.json.decode(raw, type=ErasureBody)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"invalid body: {exc}") from exc
    if body.user_id is not None:
        _check_id(body.user_id, "user_id")
    for distinct_id in body.distinct_ids:
        _check_id(distinct_id, "each of distinct_ids")
    if not body.user_id and not body.distinct_ids:
        raise ApiError(400, "name the person: user_id and/or distinct_ids")
    if len(body.distinct_ids) > MAX_IDS:
        raise ApiError(400, f"at most {MAX_IDS} distinct_ids per request")
    return body


def _json(body: Any, status: int) -> web.Response:
    return web.Response(
        status=status, body=json_encoder.encode(body), content_type="application/json"
    )


async def post_erasure(request: web.Request) -> web.Response:
    """Erase a person now from PostgreSQL and from every read; files are rewritten later."""
    actor, project_id = await admin_project(request)
    deps = request.app[DEPS]
    body = _parse_erasure(await request.read())
    async with deps.pool.acquire() as conn:
        status = await request_erasure(
            conn,
            project_id=project_id,
            user_id=body.user_id,
            distinct_ids=sorted(set(body.distinct_ids)),
            key_id=actor,
        )
    # This process's caches drop what the transaction deleted at once (other query processes:
    # aliases within their refresh, scans through the erased-id filter immediately).
    deps.scan_engine.aliases.forget(project_id)
    deps.scan_engine.hot_rows.forget(project_id)
    log.info("erasure_requested", project=project_id, request=status.id, key=actor)
    return _json(status, 202)


async def get_erasure(request: web.Request) -> web.Response:
    """The state and progress of one erasure request of the key's project."""
    _, project_id = await admin_project(request)
    raw = request.match_info["request_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, f"no erasure request {raw!r}")
    status = await erasure_status(request.app[DEPS].pool, project_id, int(raw))
    if status is None:
        raise ApiError(404, f"no erasure request {raw!r}")
    return _json(status, 200)


async def _active_parts(
    pool: asyncpg.Pool, project_id: str, day: date | None = None
) -> list[DayPart]:
    fields = DayPart.__struct_fields__
    rows = await pool.fetch(
        "SELECT " + ", ".join(fields) + " FROM day_files WHERE project_id = $1"
        " AND state = 'active' AND ($2::date IS NULL OR day = $2) ORDER BY day, xid_from",
        project_id,
        day,
    )
    return [DayPart(**{f: r[f] for f in fields}) for r in rows]


def _event_line(row: dict[str, Any]) -> dict[str, Any]:
    properties = row.get("properties")
    out = dict(row)
    out["properties"] = msgspec.Raw(properties.encode()) if properties else None
    return out


def _part_batches(path: str, ids: list[str], erased: frozenset[str]) -> Iterator[pa.RecordBatch]:
    value_set = pa.array(ids, pa.string())
    wanted = pads.field("distinct_id").isin(value_set) | pads.field("user_id").isin(value_set)
    if erased:
        gone = pa.array(sorted(erased), pa.string())
        wanted = wanted & ~pads.field("distinct_id").isin(gone)
        wanted = wanted & (pads.field("user_id").is_null() | ~pads.field("user_id").isin(gone))
    dataset = pads.dataset(path, format="parquet")
    yield from dataset.to_batches(
        columns=list(_COLUMNS), filter=wanted, batch_size=_EXPORT_BATCH_ROWS
    )


async def get_user_export(request: web.Request) -> web.StreamResponse:
    """Every event of the person (the id as user id or distinct id, aliases resolved) from day
    files and PostgreSQL as NDJSON, streamed in chunks: day files first (day order), then the
    hot rows (time order). Archived days not restored answer 409 unless allow_partial=true."""
    actor, project_id = await admin_project(request)
    person = _check_id(request.match_info["user_id"], "the user id")
    allow_partial = parse_bool(request.query, "allow_partial")
    deps = request.app[DEPS]
    engine = deps.scan_engine
    async with deps.pool.acquire() as conn:
        ids = await resolve_person_ids(conn, project_id, person, [person])
    erased = await engine.erased.ids(deps.pool, project_id)
    parts = await _active_parts(deps.pool, project_id) if engine.cache is not None else []
    now = datetime.now(UTC)
    archived = sorted({p.day for p in parts if not p.readable_at(now)})
    if archived and not allow_partial:
        days = ", ".join(d.isoformat() for d in archived[:10])
        raise ApiError(
            409,
            f"days {days} are archived; restore them (strata tier restore) or pass "
            "allow_partial=true",
        )
    readable = deque(p for p in parts if p.readable_at(now))
    planned = {p.part_id for p in parts}
    watermarks: dict[date, int] = {}
    for part in parts:
        watermarks[part.day] = max(watermarks.get(part.day, 0), part.xid_to)

    headers = {"Content-Type": "application/x-ndjson; charset=utf-8"}
    if archived:
        headers["X-Strata-Missing-Days"] = ",".join(d.isoformat() for d in archived)
    response = web.StreamResponse(status=200, headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    counts = {"cold": 0, "hot": 0}
    skipped: list[str] = [d.isoformat() for d in archived]

    async def audit(outcome: str) -> None:
        await record_audit(
            deps.pool,
            key_id=actor,
            project_id=project_id,
            action="export",
            subject=erasure_subject(person, []),
            outcome=outcome,
            detail={"ids": ids, "rows": counts, "skipped_days": skipped},
        )

    try:
        while readable:
            part = readable.popleft()
            assert engine.cache is not None
            try:
                (path,) = await engine.cache.acquire([part])
            except ObjectNotFound:
                # Replaced (a rewrite or merge) after planning: read its replacement instead.
                for newer in await _active_parts(deps.pool, project_id, part.day):
                    if newer.part_id not in planned:
                        planned.add(newer.part_id)
                        readable.append(newer)
                continue
            except ObjectArchived as exc:
                skipped.append(f"{part.day.isoformat()}: {exc}")
                continue
            try:
                # One part's rows of one person: small, read off the event loop.
                batches = await asyncio.to_thread(list, _part_batches(str(path), ids, erased))
                for batch in batches:
                    lines = [
                        json_encoder.encode(_event_line(row)) + b"\n" for row in batch.to_pylist()
                    ]
                    counts["cold"] += len(lines)
                    await response.write(b"".join(lines))
            finally:
                engine.cache.release([part])
        async with deps.pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = conn.cursor(
                f"SELECT {_HOT_SELECT} FROM events e"
                " LEFT JOIN unnest($3::date[], $4::bigint[]) AS w(day, xid)"
                " ON w.day = (e.ts AT TIME ZONE 'UTC')::date"
                " WHERE e.project_id = $1"
                " AND (e.distinct_id = ANY($2::text[]) OR e.user_id = ANY($2::text[]))"
                " AND (w.xid IS NULL OR e.inserted_xid >= w.xid) ORDER BY e.ts, e.event_id",
                project_id,
                ids,
                list(watermarks),
                list(watermarks.values()),
                prefetch=_EXPORT_BATCH_ROWS,
            )
            lines = []
            async for record in cursor:
                lines.append(json_encoder.encode(_event_line(dict(record))) + b"\n")
                if len(lines) >= _EXPORT_BATCH_ROWS:
                    counts["hot"] += len(lines)
                    await response.write(b"".join(lines))
                    lines = []
            counts["hot"] += len(lines)
            if lines:
                await response.write(b"".join(lines))
    except Exception as exc:
        await audit(f"failed: {exc or type(exc).__name__}")
        raise
    # Recorded before the stream ends, so a client that has the whole export finds it logged.
    await audit("completed")
    await response.write_eof()
    return response


def add_privacy_routes(app: web.Application) -> None:
    """Register the erasure and export endpoints."""
    app.router.add_post("/api/v1/privacy/erasure", post_erasure)
    app.router.add_get("/api/v1/privacy/erasure/{request_id}", get_erasure)
    app.router.add_get("/api/v1/privacy/users/{user_id}/export", get_user_export)
