"""The `day_files` catalog in PostgreSQL: every part of every project's days, its state and what
it covers. The cold and archive moves, restores and erasure rewrites keep using these rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Literal

import asyncpg
import msgspec

from libs.common.day_files.parquet_parts import PartContents

PartState = Literal["writing", "verified", "active", "superseded", "deleted"]
# export: a day's first part; late: rows that arrived after it; merge: late parts combined;
# rewrite: a part rewritten without some rows (erasure).
PartKind = Literal["export", "late", "merge", "rewrite"]
LIVE_STATES = ("writing", "verified", "active")


class DayPart(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `day_files`."""

    part_id: str
    project_id: str
    day: date
    object_name: str
    kind: str
    state: str
    xid_from: int
    xid_to: int
    rows: int | None = None
    bytes: int | None = None
    md5: str | None = None
    etag: str | None = None
    ids_checksum: str | None = None
    min_ts: datetime | None = None
    max_ts: datetime | None = None
    storage_tier: str = "Standard"
    archival_state: str | None = None
    restored_until: datetime | None = None
    superseded_by: str | None = None
    created_at: datetime | None = None
    superseded_at: datetime | None = None

    def readable_at(self, now: datetime) -> bool:
        """Whether the object can be read without a restore."""
        if self.storage_tier != "Archive":
            return True
        return self.restored_until is not None and self.restored_until > now


_FIELDS = [f for f in DayPart.__struct_fields__]
_SELECT = "SELECT " + ", ".join(_FIELDS) + " FROM day_files"


def _part(row: asyncpg.Record) -> DayPart:
    return DayPart(**{f: row[f] for f in _FIELDS})


async def live_parts(conn: asyncpg.Connection, project_id: str, day: date) -> list[DayPart]:
    """Parts of one day being written, verified or active, oldest coverage first."""
    rows = await conn.fetch(
        f"{_SELECT} WHERE project_id = $1 AND day = $2 AND state = ANY($3::text[])"
        " ORDER BY xid_from, created_at",
        project_id,
        day,
        list(LIVE_STATES),
    )
    return [_part(r) for r in rows]


async def active_parts(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, first_day: date, last_day: date
) -> list[DayPart]:
    """Active parts of the days first_day..last_day (inclusive), by day then coverage."""
    rows = await conn.fetch(
        f"{_SELECT} WHERE project_id = $1 AND day BETWEEN $2 AND $3 AND state = 'active'"
        " ORDER BY day, xid_from",
        project_id,
        first_day,
        last_day,
    )
    return [_part(r) for r in rows]


async def active_watermarks(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, first_day: date, last_day: date
) -> dict[date, int]:
    """Day -> the xid below which its active parts hold every row (days with parts only)."""
    rows = await conn.fetch(
        "SELECT day, max(xid_to) AS watermark FROM day_files"
        " WHERE project_id = $1 AND day BETWEEN $2 AND $3 AND state = 'active' GROUP BY day",
        project_id,
        first_day,
        last_day,
    )
    return {r["day"]: r["watermark"] for r in rows}


async def insert_writing(conn: asyncpg.Connection, part: DayPart) -> None:
    """Catalogue a part before its object is written, so a crash leaves a row to recover by."""
    await conn.execute(
        "INSERT INTO day_files (part_id, project_id, day, object_name, kind, state, xid_from,"
        " xid_to) VALUES ($1, $2, $3, $4, $5, 'writing', $6, $7)",
        part.part_id,
        part.project_id,
        part.day,
        part.object_name,
        part.kind,
        part.xid_from,
        part.xid_to,
    )


async def mark_verified(
    conn: asyncpg.Connection, part_id: str, contents: PartContents, etag: str
) -> None:
    """Record what a part was verified to hold."""
    status = await conn.execute(
        "UPDATE day_files SET state = 'verified', verified_at = now(), rows = $2, bytes = $3,"
        " md5 = $4, etag = $5, ids_checksum = $6, min_ts = $7, max_ts = $8"
        " WHERE part_id = $1 AND state = 'writing'",
        part_id,
        contents.rows,
        contents.bytes,
        contents.md5,
        etag,
        contents.ids_checksum,
        contents.min_ts,
        contents.max_ts,
    )
    if status != "UPDATE 1":
        raise RuntimeError(f"part {part_id} was not being written")


async def activate(conn: asyncpg.Connection, part_id: str, supersedes: Sequence[str] = ()) -> None:
    """Make a verified part visible to queries and retire the parts it replaces, atomically."""
    async with conn.transaction():
        status = await conn.execute(
            "UPDATE day_files SET state = 'active', activated_at = now()"
            " WHERE part_id = $1 AND state = 'verified'",
            part_id,
        )
        if status != "UPDATE 1":
            raise RuntimeError(f"part {part_id} is not verified")
        if supersedes:
            status = await conn.execute(
                "UPDATE day_files SET state = 'superseded', superseded_by = $1,"
                " superseded_at = now() WHERE part_id = ANY($2::text[]) AND state = 'active'",
                part_id,
                list(supersedes),
            )
            if status != f"UPDATE {len(supersedes)}":
                raise RuntimeError(f"parts {list(supersedes)} are no longer all active")


async def mark_deleted(conn: asyncpg.Connection | asyncpg.Pool, part_id: str, error: str) -> None:
    """Record that a part's object is gone (`error`: why, when it never became active)."""
    await conn.execute(
        "UPDATE day_files SET state = 'deleted', deleted_at = now(),"
        " error = COALESCE(NULLIF($2, ''), error) WHERE part_id = $1",
        part_id,
        error,
    )


async def superseded_before(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, cutoff: datetime
) -> list[DayPart]:
    """Superseded parts retired before `cutoff`: no reader can still be using them."""
    rows = await conn.fetch(
        f"{_SELECT} WHERE project_id = $1 AND state = 'superseded' AND superseded_at < $2"
        " ORDER BY superseded_at",
        project_id,
        cutoff,
    )
    return [_part(r) for r in rows]


async def object_states(conn: asyncpg.Connection | asyncpg.Pool, project_id: str) -> dict[str, str]:
    """Object name -> catalog state of every part of a project."""
    rows = await conn.fetch(
        "SELECT object_name, state FROM day_files WHERE project_id = $1", project_id
    )
    return {r["object_name"]: r["state"] for r in rows}
