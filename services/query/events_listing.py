"""GET /api/v1/analytics/events: raw events, filtered, in (ts, event_id) order, paged with an
opaque keyset cursor, so pages stay exact while new events keep arriving."""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import Any

from aiohttp import web

from libs.common.day_files import day_bounds
from libs.common.model.event_encoding import restored_sql
from services.query.auth import authorized_project
from services.query.cold_rows import ColdFilter, merge_events, moved_days, read_cold_events
from services.query.dependencies import DEPS, SETTINGS
from services.query.params import (
    ParamError,
    parse_bool,
    parse_instant,
    parse_int,
    parse_timezone,
    reject_unknown,
    single,
)
from services.query.records import EVENT_SELECT, decode_cursor, encode_cursor, event_record
from services.query.responses import EventsPage, TierScan, json_encoder

EVENTS_PARAMS = {
    "project",
    "name",
    "distinct_id",
    "user_id",
    "session_id",
    "from",
    "to",
    "timezone",
    "property",
    "order",
    "limit",
    "cursor",
    "include_bots",
}
DEFAULT_PAGE_SIZE = 100


def optional_range(query: Any) -> tuple[datetime | None, datetime | None]:
    """`from`/`to` when given (dates or datetimes, in `timezone`); unbounded otherwise."""
    tz = parse_timezone(query)
    raw_from, raw_to = single(query, "from"), single(query, "to")
    start = parse_instant("from", raw_from, tz, end_of_day=False) if raw_from else None
    end = parse_instant("to", raw_to, tz, end_of_day=True) if raw_to else None
    if start is not None and end is not None and start >= end:
        raise ParamError("from", "must be before to")
    return start, end


def reachable_days(days: list[date], last: datetime, *, descending: bool) -> list[date]:
    """The moved days that could still place an event on a page whose hot rows already fill it
    and one more, `last` being the ts of the last of them. A day entirely on the far side of
    `last` holds only events that rank after all of those rows: reading its day files (most of
    a newest-first page's time once older days are cold) cannot change the page."""
    if descending:
        return [d for d in days if day_bounds(d)[1] > last]
    return [d for d in days if day_bounds(d)[0] <= last]


async def get_events(request: web.Request) -> web.Response:
    """A page of the authorized project's raw events matching the filters."""
    project_id = await authorized_project(request)
    query = request.query
    reject_unknown(query, EVENTS_PARAMS)
    max_page = request.app[SETTINGS].max_page_size
    limit = parse_int(query, "limit", min(DEFAULT_PAGE_SIZE, max_page), 1, max_page)
    order = single(query, "order") or "desc"
    if order not in ("asc", "desc"):
        raise ParamError("order", f"must be asc or desc, not {order!r}")
    start, end = optional_range(query)
    args: list[Any] = [project_id]
    where = ["e.project_id = $1"]
    # The same filters over the day files of days whose rows left PostgreSQL.
    cold = ColdFilter()

    def add(clause: str, value: Any) -> None:
        args.append(value)
        where.append(clause.replace("?", f"${len(args)}"))

    names = query.getall("name", [])
    if names:
        add("e.name = ANY(?::text[])", list(names))
        cold.add("list_contains(?, name)", list(names))
    for column in ("distinct_id", "user_id", "session_id"):
        value = single(query, column)
        if value is not None:
            add(f"e.{column} = ?", value)
            cold.add(f"{column} = ?", value)
    session_id = single(query, "session_id")
    if session_id is not None:
        # `events` has no index on session_id: a session's events are its person's events
        # (sessions are assigned per distinct_id), found through that person's index.
        add(
            "e.distinct_id = (SELECT s.distinct_id FROM sessions s"
            " WHERE s.project_id = $1 AND s.session_id = ?)",
            session_id,
        )
    if start is not None:
        add("e.ts >= ?", start)
        cold.add("ts >= ?", start)
    if end is not None:
        add("e.ts < ?", end)
        cold.add("ts < ?", end)
    if not parse_bool(query, "include_bots"):
        where.append("NOT e.is_bot")
        cold.add("NOT is_bot")
    for raw in query.getall("property", []):
        key, sep, value = raw.partition(":")
        if not sep or not key:
            raise ParamError("property", f"{raw!r} is not key:value (e.g. plan:pro)")
        args.extend([key, value])
        where.append(f"{restored_sql('properties')} ->> ${len(args) - 1} = ${len(args)}")
        cold.property_equals(key, value)
    cursor = single(query, "cursor")
    if cursor:
        cursor_ts, cursor_id = decode_cursor(cursor)
        comparison = "<" if order == "desc" else ">"
        args.extend([cursor_ts, cursor_id])
        where.append(f"(e.ts, e.event_id) {comparison} (${len(args) - 1}, ${len(args)})")
        cold.add(f"(ts, event_id) {comparison} (?, ?)", cursor_ts, cursor_id)
    direction = "DESC" if order == "desc" else "ASC"
    args.append(limit + 1)
    sql = f"""
        SELECT {EVENT_SELECT} FROM events e WHERE {" AND ".join(where)}
        ORDER BY e.ts {direction}, e.event_id {direction} LIMIT ${len(args)}
    """
    deps = request.app[DEPS]
    started = time.perf_counter()
    rows = await deps.pool.fetch(sql, *args)
    tiers = [
        TierScan(tier="hot", rows=len(rows), ms=round((time.perf_counter() - started) * 1000, 3))
    ]
    found = [event_record(r) for r in rows]
    days = await moved_days(deps, project_id, start, end)
    if len(found) > limit:
        days = reachable_days(days, found[-1].ts, descending=order == "desc")
    if days:
        cold_events, read = await read_cold_events(
            deps, project_id, days, cold, descending=order == "desc", limit=limit + 1
        )
        found = merge_events(found, cold_events, descending=order == "desc", limit=limit + 1)
        tiers.extend([read] if read else [])
    events = found[:limit]
    next_cursor = encode_cursor(events[-1].ts, events[-1].event_id) if len(found) > limit else None
    body = EventsPage(events=events, next_cursor=next_cursor, tiers=tiers)
    return web.Response(body=json_encoder.encode(body), content_type="application/json")
