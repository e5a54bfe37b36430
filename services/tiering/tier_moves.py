"""Tier moves after a day is exported (docs/tiering.md):

- cold: a project's days older than its `hot_days` whose rows are held by active, verified day
  files lose those rows in PostgreSQL (the day's partition is dropped once no project has rows
  in it); recorded in `day_tiers`;
- archive: active parts of days older than `cold_days` move to the Archive storage tier in place;
- retention: parts of days older than `retention_days` are deleted (catalog state `deleted`),
  with any rows PostgreSQL still holds for those days. Rollups stay.

Every step can be killed and rerun. The cold move deletes exactly the rows below the day's
watermark (the rows its active parts hold) and records that in the same transaction; the event
scan reads a day with parts from its files plus the rows at or past the watermark, so every
event is read once whether the delete committed or not.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog

from libs.common.day_files import catalog
from libs.common.day_files.export import _day_lock
from libs.common.day_files.layout import day_bounds
from libs.common.dictionary_deletion import sweep
from libs.common.errors import StrataError
from libs.common.event_partitions import drop_partition_if_empty
from libs.common.object_store import ObjectNotFound, ObjectStore, ObjectStoreError

log = structlog.get_logger("tier_moves")


MoveStepHook = Callable[[str], Awaitable[None]]
TIER_JOBS = ("export", "cold", "archive", "retention", "restores")


class ColdMoveError(StrataError, RuntimeError):
    """A day's files do not match their catalog rows; its PostgreSQL rows were kept."""

    code = "cold_move_failed"


@dataclass
class ColdMove:
    """What one cold move of one (project, day) did."""

    project_id: str
    day: date
    rows_moved: int = 0
    partition_dropped: bool = False
    skipped: str = ""  # why nothing was moved ("" when something was)


@dataclass
class TierRun:
    """What one pass of the cold, archive or retention job did."""

    job: str
    moves: list[ColdMove] = field(default_factory=list)
    parts_archived: int = 0
    parts_deleted: int = 0
    rows_deleted: int = 0
    partitions_dropped: int = 0
    dictionary_rows_deleted: int = 0  # pages and sources no hot row shows any more
    failures: list[tuple[str, date, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_moved(self) -> int:
        return sum(m.rows_moved for m in self.moves)


class ProjectTiers:
    """A project's tier ages in days (`projects.hot_days`, `cold_days`, `retention_days`)."""

    def __init__(self, row: asyncpg.Record) -> None:
        self.project_id: str = row["id"]
        self.hot_days: int = row["hot_days"]
        self.cold_days: int = row["cold_days"]
        self.retention_days: int = row["retention_days"]


async def project_tiers(pool: asyncpg.Pool, projects: Sequence[str] | None) -> list[ProjectTiers]:
    """The tier ages of `projects` (every project when None)."""
    rows = await pool.fetch(
        "SELECT id, hot_days, cold_days, retention_days FROM projects"
        " WHERE $1::text[] IS NULL OR id = ANY($1::text[]) ORDER BY id",
        None if projects is None else list(projects),
    )
    return [ProjectTiers(r) for r in rows]


def age_cutoff(now: datetime, days: int) -> date:
    """Days before this one are older than `days` (today counts as age 0)."""
    return now.astimezone(UTC).date() - timedelta(days=days)


# ---------------------------------------------------------------------------------------------
# Cold


async def _check_objects(store: ObjectStore, parts: Sequence[catalog.DayPart]) -> None:
    """Every active part's object is there with the size and MD5 it was verified with."""
    for part in parts:
        try:
            info = await store.head(part.object_name)
        except ObjectNotFound as exc:
            raise ColdMoveError(f"{part.object_name} is missing from the object store") from exc
        if part.bytes is not None and info.size != part.bytes:
            raise ColdMoveError(f"{part.object_name} holds {info.size} bytes, not {part.bytes}")
        if part.md5 and info.md5 and info.md5 != part.md5:
            raise ColdMoveError(f"{part.object_name} MD5 {info.md5} != catalogued {part.md5}")


async def move_day_cold(
    pool: asyncpg.Pool,
    store: ObjectStore,
    project_id: str,
    day: date,
    *,
    on_step: MoveStepHook | None = None,
) -> ColdMove:
    """Remove from PostgreSQL the rows of (project, day) that its active day files hold, then
    drop the day's partition if it is empty. Runs under the day's export lock, so no export or
    merge of the day changes its parts meanwhile. `on_step(step)` is awaited after each step
    (checked, deleted: inside the transaction before COMMIT, committed, dropped)."""
    result = ColdMove(project_id=project_id, day=day)
    async with _day_lock(pool, project_id, day) as conn:
        if conn is None:
            result.skipped = "the day is being exported"
            return result
        parts = await catalog.live_parts(conn, project_id, day)
        if any(p.state != "active" for p in parts):
            # An export was interrupted: its next run recovers the day first.
            result.skipped = "an interrupted export of the day awaits recovery"
            return result
        if not parts:
            result.skipped = "the day has no day files"
            return result
        await _check_objects(store, parts)
        if on_step:
            await on_step("checked")
        watermark = max(p.xid_to for p in parts)
        start, end = day_bounds(day)
        async with conn.transaction():
            status = await conn.execute(
                "DELETE FROM event_rows WHERE project_id = $1 AND ts >= $2 AND ts < $3"
                " AND inserted_xid < $4",
                project_id,
                start,
                end,
                watermark,
            )
            moved = int(status.rsplit(" ", 1)[-1])
            held = sum(p.rows or 0 for p in parts)
            if moved > held:
                # More rows below the watermark than the files hold: never delete them.
                raise ColdMoveError(
                    f"{project_id}/{day}: {moved} rows below the watermark, files hold {held}"
                )
            await conn.execute(
                "INSERT INTO day_tiers (project_id, day, tier, watermark, rows_moved)"
                " VALUES ($1, $2, 'cold', $3, $4) ON CONFLICT (project_id, day) DO UPDATE"
                " SET watermark = GREATEST(day_tiers.watermark, EXCLUDED.watermark),"
                " rows_moved = day_tiers.rows_moved + EXCLUDED.rows_moved, moved_at = now()",
                project_id,
                day,
                watermark,
                moved,
            )
            if on_step:
                await on_step("deleted")
        result.rows_moved = moved
        if on_step:
            await on_step("committed")
        result.partition_dropped = await drop_partition_if_empty(conn, day)
        if on_step:
            await on_step("dropped")
    log.info(
        "day_moved_cold",
        project=project_id,
        day=day.isoformat(),
        rows=result.rows_moved,
        partition_dropped=result.partition_dropped,
    )
    return result


async def days_to_move_cold(
    pool: asyncpg.Pool | asyncpg.Connection, project_id: str, before: date
) -> list[date]:
    """Days before `before` with active parts newer than what was last moved (or never
    moved): their rows below the parts' watermark may still be in PostgreSQL."""
    rows = await pool.fetch(
        """
        SELECT f.day FROM day_files f
        LEFT JOIN day_tiers t ON t.project_id = f.project_id AND t.day = f.day
        WHERE f.project_id = $1 AND f.day < $2 AND f.state = 'active'
        GROUP BY f.day, t.watermark
        HAVING max(f.xid_to) > COALESCE(t.watermark, 0)
        ORDER BY f.day
        """,
        project_id,
        before,
    )
    return [r["day"] for r in rows]


async def move_cold_days(
    pool: asyncpg.Pool,
    store: ObjectStore,
    *,
    now: datetime | None = None,
    projects: Sequence[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TierRun:
    """The cold job: every project's exported days older than its `hot_days` leave
    PostgreSQL, and old partitions no project has rows in are dropped."""
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    run = TierRun(job="cold")
    tiers = await project_tiers(pool, projects)
    for project in tiers:
        moved = 0
        for day in await days_to_move_cold(
            pool, project.project_id, age_cutoff(now, project.hot_days)
        ):
            if should_stop is not None and should_stop():
                break
            try:
                move = await move_day_cold(pool, store, project.project_id, day)
            except (ColdMoveError, ObjectStoreError, OSError, asyncpg.PostgresError) as exc:
                run.failures.append((project.project_id, day, str(exc)))
                log.error(
                    "cold_move_failed", project=project.project_id, day=str(day), error=str(exc)
                )
                continue
            run.moves.append(move)
            run.partitions_dropped += int(move.partition_dropped)
            moved += move.rows_moved
        if moved:
            await _sweep(pool, project.project_id, run)
        if should_stop is not None and should_stop():
            run.seconds = time.perf_counter() - started
            return run
    if projects is None and tiers:
        # Partitions of days every project has moved (or never wrote) may be empty by now.
        oldest_hot = age_cutoff(now, min(p.hot_days for p in tiers))
        run.partitions_dropped += await _drop_empty_partitions(pool, oldest_hot)
    run.seconds = time.perf_counter() - started
    return run


async def _sweep(pool: asyncpg.Pool, project_id: str, run: TierRun) -> None:
    """Delete the project's pages and sources no hot row shows any more
    (libs/common/dictionary_deletion.py); a failure is logged, and the next run that deletes
    rows sweeps again."""
    try:
        async with pool.acquire() as conn:
            run.dictionary_rows_deleted += await sweep(conn, project_id)
    except asyncpg.PostgresError as exc:
        log.warning("dictionary_sweep_failed", project=project_id, error=str(exc))


async def _drop_empty_partitions(pool: asyncpg.Pool, before: date) -> int:
    names = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'event_rows'::regclass AND c.relname ~ '^events_[0-9]{8}$'"
    )
    dropped = 0
    async with pool.acquire() as conn:
        for row in names:
            day = datetime.strptime(row["relname"][len("events_") :], "%Y%m%d").date()
            if day < before:
                dropped += int(await drop_partition_if_empty(conn, day))
    return dropped


# ---------------------------------------------------------------------------------------------
# Archive and retention


async def archive_cold_parts(
    pool: asyncpg.Pool,
    store: ObjectStore,
    *,
    now: datetime | None = None,
    projects: Sequence[str] | None = None,
) -> TierRun:
    """The archive job: active parts of moved days older than the project's `cold_days` go to
    the Archive storage tier in place. The object moves first, then the catalog: a crash in
    between leaves an Archive object catalogued as Standard, which a read reports as archived
    and the next run records."""
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    run = TierRun(job="archive")
    for project in await project_tiers(pool, projects):
        rows = await pool.fetch(
            "SELECT f.part_id, f.object_name, f.day FROM day_files f"
            " JOIN day_tiers t ON t.project_id = f.project_id AND t.day = f.day"
            " WHERE f.project_id = $1 AND f.day < $2 AND f.state = 'active'"
            " AND f.storage_tier <> 'Archive' ORDER BY f.day, f.xid_from",
            project.project_id,
            age_cutoff(now, project.cold_days),
        )
        for row in rows:
            try:
                await store.set_storage_tier(row["object_name"], "Archive")
            except (ObjectStoreError, OSError) as exc:
                run.failures.append((project.project_id, row["day"], str(exc)))
                log.error("archive_failed", part=row["object_name"], error=str(exc))
                continue
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE day_files SET storage_tier = 'Archive', archival_state = 'Archived',"
                    " restored_until = NULL, archived_at = now() WHERE part_id = $1",
                    row["part_id"],
                )
                await conn.execute(
                    "UPDATE day_tiers SET tier = 'archive', archived_at = now()"
                    " WHERE project_id = $1 AND day = $2 AND tier = 'cold'",
                    project.project_id,
                    row["day"],
                )
            run.parts_archived += 1
    run.seconds = time.perf_counter() - started
    log.info("archive_done", parts=run.parts_archived, failures=len(run.failures))
    return run


async def apply_retention(
    pool: asyncpg.Pool,
    store: ObjectStore,
    *,
    now: datetime | None = None,
    projects: Sequence[str] | None = None,
) -> TierRun:
    """The retention job: every part of days older than the project's `retention_days` is
    deleted (object, then catalog state `deleted` with when and why), and so are the rows
    PostgreSQL still holds for those days. Rollups are kept."""
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    run = TierRun(job="retention")
    for project in await project_tiers(pool, projects):
        cutoff = age_cutoff(now, project.retention_days)
        reason = f"retention: older than {project.retention_days} days"
        parts = await pool.fetch(
            "SELECT part_id, object_name, day FROM day_files WHERE project_id = $1 AND day < $2"
            " AND state IN ('active', 'superseded', 'verified') ORDER BY day",
            project.project_id,
            cutoff,
        )
        for row in parts:
            try:
                await store.delete(row["object_name"], missing_ok=True)
            except (ObjectStoreError, OSError) as exc:
                run.failures.append((project.project_id, row["day"], str(exc)))
                continue
            await catalog.mark_deleted(pool, row["part_id"], reason)
            run.parts_deleted += 1
        async with pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchrow(
                "WITH gone AS ("
                " DELETE FROM event_rows WHERE project_id = $1 AND ts < $2 RETURNING ts)"
                " SELECT count(*) AS n, coalesce(array_agg(DISTINCT (ts AT TIME ZONE 'UTC')::date),"
                " '{}') AS days FROM gone",
                project.project_id,
                day_bounds(cutoff)[0],
            )
            run.rows_deleted += int(deleted["n"])
            swept = int(deleted["n"]) > 0
            # Every day that lost rows is recorded, with files or not: the query service's
            # cache of hot rows reads deletions from here (services/query/hot_rows.py).
            await conn.execute(
                "INSERT INTO day_tiers (project_id, day, tier, watermark, deleted_at)"
                " SELECT $1, day, 'deleted', 0, now() FROM ("
                "   SELECT day FROM day_files WHERE project_id = $1 AND day < $2"
                "   UNION SELECT unnest($3::date[])) AS d"
                " ON CONFLICT (project_id, day) DO UPDATE SET tier = 'deleted',"
                " deleted_at = COALESCE(day_tiers.deleted_at, now())",
                project.project_id,
                cutoff,
                deleted["days"],
            )
        if swept:
            await _sweep(pool, project.project_id, run)
    run.seconds = time.perf_counter() - started
    log.info("retention_done", parts=run.parts_deleted, rows=run.rows_deleted)
    return run
