"""Raw event rows of days whose rows left PostgreSQL (`day_tiers`, the cold move), read from
their day files, for the endpoints that list events (events listing, session detail, journeys).

Such an endpoint asks PostgreSQL as before and asks the moved days' files the same question
(same filters, order and limit), then merges the two by (ts, event_id) keeping each event once:
a moved day's late rows may be in PostgreSQL and, after the next export, also in a part. The
top `limit` of the union is within the top `limit` of each side, so a page stays exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from libs.common.day_files import DayPart, active_parts
from libs.common.object_store import ObjectArchived
from services.query.dependencies import QueryDeps
from services.query.event_scan import ArchivedDaysError
from services.query.records import EVENT_FIELDS
from services.query.responses import EventRecord, TierScan

_properties = msgspec.json.Decoder(dict[str, Any])
_SELECT = ", ".join(EVENT_FIELDS) + ", properties"


class ColdFilter:
    """A DuckDB WHERE clause over day-file columns, built with positional parameters."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[Any] = []

    def add(self, clause: str, *values: Any) -> None:
        """`clause` with one `?` per value."""
        self.clauses.append(clause)
        self.params.extend(values)

    def property_equals(self, key: str, value: str) -> None:
        """The top-level property `key` as text equals `value` (PostgreSQL's `->>`)."""
        pointer = "/" + key.replace("~", "~0").replace("/", "~1")
        self.add("json_extract_string(properties, ?) = ?", pointer, value)

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "true"


async def moved_days(
    deps: QueryDeps, project_id: str, start: datetime | None, end: datetime | None
) -> list[date]:
    """Days of [start, end) (unbounded when None) whose rows left PostgreSQL."""
    rows = await deps.pool.fetch(
        "SELECT day FROM day_tiers WHERE project_id = $1 AND tier IN ('cold', 'archive')"
        " AND ($2::date IS NULL OR day >= $2) AND ($3::date IS NULL OR day <= $3) ORDER BY day",
        project_id,
        start.astimezone(UTC).date() if start else None,
        # end is exclusive: a range ending at midnight does not touch the next day.
        (end - timedelta(microseconds=1)).astimezone(UTC).date() if end else None,
    )
    return [r["day"] for r in rows]


def _record(row: tuple[Any, ...]) -> EventRecord:
    values = dict(zip(EVENT_FIELDS, row[:-1], strict=True))
    for field in ("ts", "received_at"):
        values[field] = values[field].astimezone(UTC)
    raw = row[-1]
    return EventRecord(**values, properties=_properties.decode(raw) if raw else {})


async def _query_day_files(
    deps: QueryDeps,
    project_id: str,
    days: Sequence[date],
    where: ColdFilter,
    select: str,
    tail: str,
    now: datetime | None,
    allow_partial: bool = False,
) -> tuple[list[tuple[Any, ...]], float, list[date]] | None:
    """`SELECT {select} FROM <the moved days' files> WHERE {where} {tail}` with the persons of
    open erasure requests left out, the milliseconds it took and the days left out; None when
    no part holds the days. ArchivedDaysError when some are in unrestored Archive files, unless
    `allow_partial` (those days are then left out)."""
    engine = deps.scan_engine
    if not days or engine.cache is None:
        return None
    started = time.perf_counter()
    wanted = set(days)
    parts = [
        p
        for p in await active_parts(deps.pool, project_id, min(days), max(days))
        if p.day in wanted
    ]
    if not parts:
        return None
    now = now or datetime.now(UTC)
    unreadable = [p for p in parts if not p.readable_at(now)]
    missing = sorted({p.day for p in unreadable})
    if unreadable and not allow_partial:
        raise ArchivedDaysError(missing, unreadable)
    # A day is read whole or not at all.
    parts = [p for p in parts if p.day not in missing]
    if not parts:
        return [], round((time.perf_counter() - started) * 1000, 3), missing
    try:
        paths = await engine.cache.acquire(parts)
    except ObjectArchived as exc:
        archived: list[DayPart] = [p for p in parts if p.object_name == exc.name]
        raise ArchivedDaysError(sorted({p.day for p in archived}), archived) from exc
    try:
        files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"
        condition, params = where.sql(), list(where.params)
        erased = await engine.erased.ids(deps.pool, project_id)
        if erased:
            # Persons of open erasure requests, still in files not yet rewritten.
            condition += (
                " AND NOT list_contains(?::VARCHAR[], distinct_id)"
                " AND (user_id IS NULL OR NOT list_contains(?::VARCHAR[], user_id))"
            )
            params += [sorted(erased), sorted(erased)]
        sql = (
            # Not Hive partitions, though the cache's folders look like them (event_scan.py).
            f"SELECT {select} FROM read_parquet({files}, union_by_name = true,"
            " hive_partitioning = false)"
            f" WHERE {condition} {tail}"
        )

        def run() -> list[tuple[Any, ...]]:
            con = engine.connection()
            try:
                return con.execute(sql, params).fetchall()
            finally:
                con.close()

        rows = await asyncio.to_thread(run)
    finally:
        engine.cache.release(parts)
    return rows, round((time.perf_counter() - started) * 1000, 3), missing


async def read_cold_events(
    deps: QueryDeps,
    project_id: str,
    days: Sequence[date],
    where: ColdFilter,
    *,
    descending: bool = False,
    limit: int,
    now: datetime | None = None,
) -> tuple[list[EventRecord], TierScan | None]:
    """Up to `limit` events of the moved `days` matching `where`, in (ts, event_id) order, and
    what reading them cost. ArchivedDaysError when some are in unrestored Archive files."""
    direction = "DESC" if descending else "ASC"
    tail = f"ORDER BY ts {direction}, event_id {direction} LIMIT {limit}"
    read = await _query_day_files(deps, project_id, days, where, _SELECT, tail, now)
    if read is None:
        return [], None
    rows, ms, _ = read
    return [_record(r) for r in rows], TierScan(tier="cold", rows=len(rows), ms=ms)


async def read_cold_rows(
    deps: QueryDeps,
    project_id: str,
    days: Sequence[date],
    columns: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    allow_partial: bool = False,
    now: datetime | None = None,
) -> tuple[list[tuple[Any, ...]], TierScan | None, list[date]]:
    """Every row of the moved `days` with start <= ts < end, as tuples of `columns` (stored
    day-file columns; `properties` as JSON text), what reading them cost, and the days left
    out. ArchivedDaysError when some are in unrestored Archive files, unless `allow_partial`
    (those days are then left out)."""
    where = ColdFilter()
    where.add("ts >= ? AND ts < ?", start, end)
    select = ", ".join(columns)
    read = await _query_day_files(deps, project_id, days, where, select, "", now, allow_partial)
    if read is None:
        return [], None, []
    rows, ms, missing = read
    return rows, TierScan(tier="cold", rows=len(rows), ms=ms), missing


def merge_events(
    hot: Sequence[EventRecord], cold: Sequence[EventRecord], *, descending: bool, limit: int
) -> list[EventRecord]:
    """The first `limit` events of both lists in (ts, event_id) order, each event once."""
    merged: dict[str, EventRecord] = {}
    for event in sorted([*hot, *cold], key=lambda e: (e.ts, e.event_id), reverse=descending):
        merged.setdefault(event.event_id, event)
        if len(merged) == limit:
            break
    return list(merged.values())
