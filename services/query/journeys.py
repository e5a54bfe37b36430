"""GET /api/v1/analytics/users/{id}/journey: everything one person did, across every device
id linked to them by identify/alias, in time order."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from aiohttp import web

from services.query.auth import authorized_project
from services.query.cold_rows import ColdFilter, merge_events, moved_days, read_cold_events
from services.query.dependencies import DEPS, SETTINGS, ApiError
from services.query.events_listing import DEFAULT_PAGE_SIZE, optional_range
from services.query.params import parse_int, reject_unknown, single
from services.query.records import (
    EVENT_SELECT,
    SESSION_SELECT,
    decode_cursor,
    encode_cursor,
    event_record,
    session_record,
)
from services.query.responses import Journey, TierScan, json_encoder

JOURNEY_PARAMS = {"project", "from", "to", "timezone", "limit", "cursor"}
# Alias chains are short (device -> user, old user -> new user); the bound keeps a corrupt
# alias graph from running away.
_MAX_LINKED_IDS = 10_000
_MAX_CHAIN = 32

# Every id connected to the given one through person_aliases, in either direction.
_LINKED_IDS = """
WITH RECURSIVE linked(id) AS (
    SELECT $2::text
    UNION
    SELECT CASE WHEN a.distinct_id = l.id THEN a.person_id ELSE a.distinct_id END
    FROM person_aliases a JOIN linked l
      ON a.project_id = $1 AND (a.distinct_id = l.id OR a.person_id = l.id)
)
SELECT id FROM linked LIMIT $3
"""


async def resolve_person(
    conn: asyncpg.Connection, project_id: str, some_id: str
) -> tuple[str, list[str]]:
    """(person id, every linked id): the person is where the id's alias chain ends."""
    person = some_id
    for _ in range(_MAX_CHAIN):
        target = await conn.fetchval(
            "SELECT person_id FROM person_aliases WHERE project_id = $1 AND distinct_id = $2",
            project_id,
            person,
        )
        if target is None or target == some_id:
            break
        person = target
    rows = await conn.fetch(_LINKED_IDS, project_id, some_id, _MAX_LINKED_IDS)
    ids = sorted({r["id"] for r in rows} | {person})
    return person, ids


async def get_journey(request: web.Request) -> web.Response:
    """A page of the person's events (oldest first) and the sessions they belong to."""
    project_id = await authorized_project(request)
    query = request.query
    reject_unknown(query, JOURNEY_PARAMS)
    max_page = request.app[SETTINGS].max_page_size
    limit = parse_int(query, "limit", min(DEFAULT_PAGE_SIZE * 10, max_page), 1, max_page)
    start, end = optional_range(query)
    cursor = single(query, "cursor")
    deps = request.app[DEPS]
    async with deps.pool.acquire() as conn:
        person, ids = await resolve_person(conn, project_id, request.match_info["user_id"])
        args: list[Any] = [project_id, ids]
        where = ["e.project_id = $1", "e.distinct_id = ANY($2::text[])"]
        # The same question for the day files of days whose rows left PostgreSQL.
        cold = ColdFilter()
        cold.add("list_contains(?, distinct_id)", ids)
        if start is not None:
            args.append(start)
            where.append(f"e.ts >= ${len(args)}")
            cold.add("ts >= ?", start)
        if end is not None:
            args.append(end)
            where.append(f"e.ts < ${len(args)}")
            cold.add("ts < ?", end)
        if cursor:
            cursor_ts, cursor_id = decode_cursor(cursor)
            args.extend([cursor_ts, cursor_id])
            where.append(f"(e.ts, e.event_id) > (${len(args) - 1}, ${len(args)})")
            cold.add("(ts, event_id) > (?, ?)", cursor_ts, cursor_id)
        args.append(limit + 1)
        started = time.perf_counter()
        rows = await conn.fetch(
            f"SELECT {EVENT_SELECT} FROM events e WHERE {' AND '.join(where)}"
            f" ORDER BY e.ts, e.event_id LIMIT ${len(args)}",
            *args,
        )
        ms = round((time.perf_counter() - started) * 1000, 3)
        tiers = [TierScan(tier="hot", rows=len(rows), ms=ms)]
        found = [event_record(r) for r in rows]
        days = await moved_days(deps, project_id, start, end)
        if days:
            cold_events, read = await read_cold_events(
                deps, project_id, days, cold, limit=limit + 1
            )
            found = merge_events(found, cold_events, descending=False, limit=limit + 1)
            tiers.extend([read] if read else [])
        if not found and not cursor and start is None and end is None:
            raise ApiError(404, f"no events of person {request.match_info['user_id']!r}")
        events = found[:limit]
        session_ids = sorted({e.session_id for e in events if e.session_id})
        sessions = await conn.fetch(
            f"SELECT {SESSION_SELECT} FROM sessions s"
            " WHERE s.project_id = $1 AND s.session_id = ANY($2::text[])"
            " ORDER BY s.start_ts, s.session_id",
            project_id,
            session_ids,
        )
    body = Journey(
        person_id=person,
        distinct_ids=ids,
        sessions=[session_record(s) for s in sessions],
        events=events,
        next_cursor=(
            encode_cursor(events[-1].ts, events[-1].event_id) if len(found) > limit else None
        ),
        tiers=tiers,
    )
    return web.Response(body=json_encoder.encode(body), content_type="application/json")
