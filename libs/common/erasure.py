"""GDPR erasure requests (docs/privacy.md, "Erasure and access (GDPR)").

`request_erasure` runs in the API's transaction: it resolves a person's ids through
person_aliases, deletes their events, sessions, aliases and traits from PostgreSQL, recomputes
the session rollups of the days those sessions started in, and records the request and the ids
event scans must hide until the tiering service has rewritten the day files that hold them
(services/tiering/erasure.py). Every erasure and export is written to `privacy_audit_log`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import msgspec

from libs.common import db
from libs.common.dictionary_deletion import delete_unused
from libs.common.event_dictionary import PAGES, SOURCES
from libs.common.rollup_keys import DAY
from libs.common.rollup_keys import bucket_start as rollup_bucket_start
from libs.common.rollup_rules import (
    SESSION_KEY_COLUMNS,
    SESSION_ROLLUP_COUNTERS,
    session_counters_sql,
    session_rollup_rows_sql,
)

MAX_IDS = 1000  # ids one request may name (a person has a handful of devices)


class ErasureStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What `GET /api/v1/privacy/erasure/{id}` answers."""

    id: int
    project_id: str
    state: str
    user_id: str | None
    distinct_ids: list[str]
    hot_events_deleted: int
    sessions_deleted: int
    files_checked: int
    files_total: int | None
    files_rewritten: int
    bytes_rewritten: int
    cold_events_deleted: int
    files_restoring: int
    progress: float  # 0..1: files checked of files to check, 1 once completed
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


async def lock_derived_tables(conn: asyncpg.Connection, project_id: str) -> None:
    """Take the aggregator's transaction-scoped lock on the project's derived tables."""
    await db.lock_derived_tables(conn, (project_id,))


async def resolve_person_ids(
    conn: asyncpg.Connection, project_id: str, user_id: str | None, distinct_ids: Sequence[str]
) -> list[str]:
    """Every id of the person: the user id, the devices aliased to it, the user ids the given
    devices are aliased to and their other devices, and the devices of hot events carrying the
    user id (an alias row may be missing for a device seen only with a user id)."""
    ids = set(distinct_ids)
    if user_id:
        ids.add(user_id)
    persons = set(
        await conn.fetchval(
            "SELECT coalesce(array_agg(DISTINCT person_id), '{}') FROM person_aliases"
            " WHERE project_id = $1 AND distinct_id = ANY($2::text[])",
            project_id,
            list(ids),
        )
    )
    ids |= persons
    if user_id:
        persons.add(user_id)
    if persons:
        ids |= set(
            await conn.fetchval(
                "SELECT coalesce(array_agg(distinct_id), '{}') FROM person_aliases"
                " WHERE project_id = $1 AND person_id = ANY($2::text[])",
                project_id,
                list(persons),
            )
        )
        ids |= set(
            await conn.fetchval(
                "SELECT coalesce(array_agg(DISTINCT distinct_id), '{}') FROM events"
                " WHERE project_id = $1 AND user_id = ANY($2::text[])",
                project_id,
                list(persons),
            )
        )
    return sorted(ids)


def _session_days(starts: Iterable[datetime]) -> list[datetime]:
    """The UTC days the starts fall in (a day's rows hold every hour of it)."""
    return sorted({rollup_bucket_start(ts, DAY) for ts in starts})


_DAYS = "unnest($2::timestamptz[]) AS b(day)"
_DELETE_SESSION_ROLLUPS = f"""
DELETE FROM session_rollups r USING {_DAYS}
WHERE r.project_id = $1 AND r.bucket >= b.day AND r.bucket < b.day + interval '1 day'
"""
# The sessions of the days, counted by the aggregator's own rules.
_INSERT_SESSION_ROLLUPS = f"""
INSERT INTO session_rollups (project_id, granularity, bucket, dim, value, bot,
                             {", ".join(SESSION_ROLLUP_COUNTERS)})
WITH contributions AS (
    SELECT s.project_id, date_trunc('hour', s.start_ts, 'UTC') AS hour,
        {", ".join(f"s.{c}" for c in SESSION_KEY_COLUMNS)},
        {session_counters_sql("s")}
    FROM {_DAYS}
    JOIN sessions s ON s.project_id = $1
        AND s.start_ts >= b.day AND s.start_ts < b.day + interval '1 day'
)
{session_rollup_rows_sql("contributions")}
"""


async def recompute_session_rollups(
    conn: asyncpg.Connection, project_id: str, starts: Iterable[datetime]
) -> None:
    """Rebuild the session rollups (hour and day rows) of every UTC day holding one of
    `starts` from the sessions table (call under `lock_derived_tables`, in a transaction)."""
    days = _session_days(starts)
    if not days:
        return
    await conn.execute(_DELETE_SESSION_ROLLUPS, project_id, days)
    await conn.execute(_INSERT_SESSION_ROLLUPS, project_id, days)


async def record_audit(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    key_id: str,
    project_id: str,
    action: str,
    subject: str,
    outcome: str,
    request_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one row of the privacy audit log."""
    await conn.execute(
        "INSERT INTO privacy_audit_log (key_id, project_id, action, subject, outcome,"
        " request_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        key_id,
        project_id,
        action,
        subject,
        outcome,
        request_id,
        msgspec.json.encode(detail or {}).decode(),
    )


def erasure_subject(user_id: str | None, distinct_ids: Sequence[str]) -> str:
    """How the audit log names who an erasure or export was about."""
    parts = []
    if user_id:
        parts.append(f"user_id={user_id}")
    if distinct_ids:
        parts.append("distinct_ids=" + ",".join(distinct_ids))
    return " ".join(parts)


async def request_erasure(
    conn: asyncpg.Connection,
    *,
    project_id: str,
    user_id: str | None,
    distinct_ids: Sequence[str],
    key_id: str,
) -> ErasureStatus:
    """Erase a person from PostgreSQL and record the request, in one transaction: their events,
    sessions (and the session rollups of the days those started in), aliases and traits go at
    once, and event scans hide their rows in day files until the tiering service rewrites them.
    """
    async with conn.transaction():
        await lock_derived_tables(conn, project_id)
        ids = await resolve_person_ids(conn, project_id, user_id, distinct_ids)
        deleted = await conn.fetchrow(
            """WITH gone AS (
                   DELETE FROM event_rows WHERE project_id = $1
                   AND (distinct_id = ANY($2::text[]) OR user_id = ANY($2::text[]))
                   RETURNING ts, page_key, source_key)
               SELECT count(*) AS events,
                   coalesce(array_agg(DISTINCT (ts AT TIME ZONE 'UTC')::date), '{}') AS days,
                   coalesce(array_agg(DISTINCT page_key) FILTER (WHERE page_key IS NOT NULL),
                       '{}') AS pages,
                   coalesce(array_agg(DISTINCT source_key) FILTER (WHERE source_key IS NOT NULL),
                       '{}') AS sources
               FROM gone""",
            project_id,
            ids,
        )
        # Their pages and sources that no other event shows: a URL, a title or a referrer may
        # carry personal data.
        await delete_unused(
            conn, project_id, {PAGES: deleted["pages"], SOURCES: deleted["sources"]}
        )
        starts = [
            r["start_ts"]
            for r in await conn.fetch(
                "DELETE FROM sessions WHERE project_id = $1"
                " AND (distinct_id = ANY($2::text[]) OR user_id = ANY($2::text[]))"
                " RETURNING start_ts",
                project_id,
                ids,
            )
        ]
        await recompute_session_rollups(conn, project_id, starts)
        await conn.execute(
            "DELETE FROM person_aliases WHERE project_id = $1"
            " AND (distinct_id = ANY($2::text[]) OR person_id = ANY($2::text[]))",
            project_id,
            ids,
        )
        await conn.execute(
            "DELETE FROM persons WHERE project_id = $1 AND person_id = ANY($2::text[])",
            project_id,
            ids,
        )
        # The ids' integer keys (migration 0024): an id is personal data wherever it is kept.
        await conn.execute(
            "DELETE FROM person_keys WHERE project_id = $1 AND id = ANY($2::text[])",
            project_id,
            ids,
        )
        days: list[date] = sorted(deleted["days"])
        request_id: int = await conn.fetchval(
            "INSERT INTO erasure_requests (project_id, user_id, distinct_ids, requested_by,"
            " hot_events_deleted, sessions_deleted, hot_days)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            project_id,
            user_id,
            ids,
            key_id,
            deleted["events"],
            len(starts),
            days,
        )
        await conn.execute(
            "INSERT INTO erased_ids (project_id, distinct_id, request_id)"
            " SELECT $1, unnest($2::text[]), $3",
            project_id,
            ids,
            request_id,
        )
        await record_audit(
            conn,
            key_id=key_id,
            project_id=project_id,
            action="erasure",
            subject=erasure_subject(user_id, distinct_ids),
            outcome="accepted",
            request_id=request_id,
            detail={"ids": ids, "hot_events_deleted": deleted["events"]},
        )
        status = await erasure_status(conn, project_id, request_id)
    assert status is not None
    return status


async def erasure_status(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, request_id: int
) -> ErasureStatus | None:
    """One request of the project, or None."""
    row = await conn.fetchrow(
        "SELECT * FROM erasure_requests WHERE id = $1 AND project_id = $2", request_id, project_id
    )
    if row is None:
        return None
    if row["state"] == "completed":
        progress = 1.0
    elif row["files_total"]:
        progress = round(row["files_checked"] / row["files_total"], 4)
    else:
        progress = 0.0
    return ErasureStatus(
        id=row["id"],
        project_id=row["project_id"],
        state=row["state"],
        user_id=row["user_id"],
        distinct_ids=list(row["distinct_ids"]),
        hot_events_deleted=row["hot_events_deleted"],
        sessions_deleted=row["sessions_deleted"],
        files_checked=row["files_checked"],
        files_total=row["files_total"],
        files_rewritten=row["files_rewritten"],
        bytes_rewritten=row["bytes_rewritten"],
        cold_events_deleted=row["cold_events_deleted"],
        files_restoring=row["files_restoring"],
        progress=progress,
        error=row["error"],
        created_at=row["created_at"].astimezone(UTC),
        updated_at=row["updated_at"].astimezone(UTC),
        completed_at=row["completed_at"].astimezone(UTC) if row["completed_at"] else None,
    )
