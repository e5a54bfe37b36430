"""Restore jobs for Archive-tier day files (table `restores`, docs/tiering.md): a query whose
range needs archived parts starts one, the tiering service and every status request advance it,
and once every part is readable the same query reads them. Restored copies expire after the
job's `hours` (the object store returns them to Archived); the catalog's `restored_until` says
until when a part is readable."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

import asyncpg
import msgspec
import structlog
from ulid import ULID

from libs.common.day_files.catalog import DayPart
from libs.common.object_store import ObjectNotFound, ObjectStore, ObjectStoreError

log = structlog.get_logger("restores")


class RestoreJob(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `restores`: what GET /api/v1/tiers/restores/{id} answers."""

    restore_id: str
    project_id: str
    state: str  # restoring | restored | failed
    first_day: date
    last_day: date
    objects: int
    objects_restored: int
    hours: int
    requested_at: datetime
    restored_at: datetime | None = None
    expires_at: datetime | None = None
    error: str | None = None


_SELECT = (
    "SELECT restore_id, project_id, state, first_day, last_day, object_names, hours,"
    " requested_at, restored_at, expires_at, error FROM restores"
)


async def _job(conn: asyncpg.Connection | asyncpg.Pool, row: asyncpg.Record) -> RestoreJob:
    restored = await conn.fetchval(
        "SELECT count(*) FROM day_files WHERE object_name = ANY($1::text[])"
        " AND (storage_tier <> 'Archive' OR archival_state = 'Restored')",
        row["object_names"],
    )
    return RestoreJob(
        restore_id=row["restore_id"],
        project_id=row["project_id"],
        state=row["state"],
        first_day=row["first_day"],
        last_day=row["last_day"],
        objects=len(row["object_names"]),
        objects_restored=restored,
        hours=row["hours"],
        requested_at=row["requested_at"],
        restored_at=row["restored_at"],
        expires_at=row["expires_at"],
        error=row["error"],
    )


async def request_restore(
    pool: asyncpg.Pool,
    store: ObjectStore,
    project_id: str,
    parts: Sequence[DayPart],
    *,
    hours: int,
    now: datetime | None = None,
) -> RestoreJob:
    """The restore job making `parts` readable: an unfinished job already covering them, or a
    new one whose object-store restores are started now."""
    now = now or datetime.now(UTC)
    names = sorted({p.object_name for p in parts})
    days = sorted({p.day for p in parts})
    pending = await pool.fetch(
        _SELECT + " WHERE project_id = $1 AND state = 'restoring'"
        " AND object_names @> $2::text[] ORDER BY requested_at",
        project_id,
        names,
    )
    for row in pending:
        job = await advance_restore(pool, store, row["restore_id"], now=now)
        if job is not None:
            return job
    for name in names:
        try:
            await store.restore(name, hours)
        except ObjectNotFound:
            continue  # deleted since planning (retention); the rerun of the query sees it
    restore_id = str(ULID())
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO restores (restore_id, project_id, first_day, last_day, object_names,"
            " hours) VALUES ($1, $2, $3, $4, $5, $6)",
            restore_id,
            project_id,
            days[0],
            days[-1],
            names,
            hours,
        )
        await conn.execute(
            "UPDATE day_files SET archival_state = 'Restoring' WHERE object_name = ANY($1::text[])"
            " AND storage_tier = 'Archive' AND archival_state IS DISTINCT FROM 'Restored'",
            names,
        )
    log.info("restore_requested", restore=restore_id, project=project_id, objects=len(names))
    job = await advance_restore(pool, store, restore_id, now=now)
    assert job is not None
    return job


async def advance_restore(
    pool: asyncpg.Pool, store: ObjectStore, restore_id: str, *, now: datetime | None = None
) -> RestoreJob | None:
    """Look at a restoring job's objects and record those that became readable; the job is
    `restored` once all are. None when there is no such job."""
    now = now or datetime.now(UTC)
    row = await pool.fetchrow(_SELECT + " WHERE restore_id = $1", restore_id)
    if row is None:
        return None
    if row["state"] != "restoring":
        return await _job(pool, row)
    until: list[datetime] = []
    waiting = 0
    for name in row["object_names"]:
        try:
            info = await store.head(name)
        except ObjectNotFound:
            continue
        except ObjectStoreError as exc:
            log.warning("restore_check_failed", object=name, error=str(exc))
            waiting += 1
            continue
        if info.storage_tier != "Archive":
            continue
        if info.archival_state == "Restored" and info.restored_until is not None:
            until.append(info.restored_until)
            await pool.execute(
                "UPDATE day_files SET archival_state = 'Restored', restored_until = $2"
                " WHERE object_name = $1",
                name,
                info.restored_until,
            )
        else:
            waiting += 1
    if waiting == 0:
        await pool.execute(
            "UPDATE restores SET state = 'restored', restored_at = $2, expires_at = $3"
            " WHERE restore_id = $1 AND state = 'restoring'",
            restore_id,
            now,
            min(until) if until else None,
        )
        log.info("restore_completed", restore=restore_id)
    row = await pool.fetchrow(_SELECT + " WHERE restore_id = $1", restore_id)
    return await _job(pool, row)


async def restore_job(pool: asyncpg.Pool, restore_id: str) -> RestoreJob | None:
    """The job as recorded, without looking at the object store."""
    row = await pool.fetchrow(_SELECT + " WHERE restore_id = $1", restore_id)
    return None if row is None else await _job(pool, row)


async def advance_restores(
    pool: asyncpg.Pool, store: ObjectStore, *, now: datetime | None = None
) -> int:
    """Advance every restoring job and record expired restored copies (their parts are
    Archived again); returns the jobs that completed."""
    now = now or datetime.now(UTC)
    completed = 0
    for row in await pool.fetch("SELECT restore_id FROM restores WHERE state = 'restoring'"):
        job = await advance_restore(pool, store, row["restore_id"], now=now)
        completed += int(job is not None and job.state == "restored")
    await pool.execute(
        "UPDATE day_files SET archival_state = 'Archived', restored_until = NULL"
        " WHERE storage_tier = 'Archive' AND archival_state = 'Restored' AND restored_until <= $1",
        now,
    )
    return completed
