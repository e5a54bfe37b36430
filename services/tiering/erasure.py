"""The tiering service's erasure job (docs/privacy.md, "Erasure and access (GDPR)").

The API has already removed the person from PostgreSQL and made event scans hide their ids
(libs/common/erasure.py). Each pass moves every open request on:

- rewriting: every active day-file part of the project is checked and, when it holds the
  person's rows, rewritten without them (libs/common/day_files/erasure_rewrite.py). Archived
  parts are restored first; the request waits for the store's restore delay and later passes
  rewrite them. What each part came to is recorded in `erasure_parts`, so a pass killed at any
  point is resumed by the next one (a part half rewritten is undone by the day's recovery).
- recomputing: the event rollups of every week touched (hot days of the deletion, days of the
  rewritten parts) are rebuilt from the remaining raw events of those weeks, hot and cold, under
  the aggregator's lock, with the aggregator's own rules (libs/common/rollup_rules.py).
  (Sessions and session rollups were rebuilt by the API: sessions live in PostgreSQL only.)
- completed: the ids are no longer filtered (no file holds them any more) and the audit log
  says so.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from libs.common import sketches
from libs.common.day_files import (
    DayExportSettings,
    DayFileVerificationError,
    DayPart,
    active_parts,
    day_bounds,
)
from libs.common.day_files.erasure_rewrite import (
    PartRewrite,
    archive_part,
    delete_superseded,
    rewrite_part_without,
)
from libs.common.erasure import lock_derived_tables, record_audit
from libs.common.object_store import ObjectStore, ObjectStoreError
from libs.common.object_store.base import DEFAULT_RESTORE_HOURS
from libs.common.rollup_keys import WEEK, bucket_start
from libs.common.rollup_rules import EVENT_ROLLUP_INPUT, event_rollup_tallies
from services.tiering.metrics import ErasureMetrics

log = structlog.get_logger("tiering")

ErasureStepHook = Callable[[str, DayPart], Awaitable[None]]

_PART_SELECT = "SELECT " + ", ".join(DayPart.__struct_fields__) + " FROM day_files"


def _part(row: asyncpg.Record) -> DayPart:
    return DayPart(**{name: row[name] for name in DayPart.__struct_fields__})


# What an event contributes to rollups (the rules' input row).
_ROLLUP_COLUMNS = tuple(dict.fromkeys(EVENT_ROLLUP_INPUT))


@dataclass
class ErasureRun:
    """What one pass did."""

    completed: list[int] = field(default_factory=list)
    parts_rewritten: int = 0
    bytes_rewritten: int = 0
    waiting: list[int] = field(default_factory=list)  # requests waiting on restores or locks
    failures: list[tuple[int, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Rewriting


async def _parts_to_check(pool: asyncpg.Pool, request_id: int, project_id: str) -> list[DayPart]:
    """Active parts the request has not found clean, rewritten or written yet."""
    rows = await pool.fetch(
        f"{_PART_SELECT} WHERE project_id = $1 AND state = 'active' AND part_id NOT IN ("
        " SELECT part_id FROM erasure_parts WHERE request_id = $2"
        " AND outcome IN ('clean', 'rewritten'))"
        # Its own replacements were written without the person.
        " AND part_id NOT IN (SELECT new_part_id FROM erasure_parts WHERE request_id = $2"
        " AND new_part_id IS NOT NULL) ORDER BY day, xid_from",
        project_id,
        request_id,
    )
    return [_part(r) for r in rows]


async def _record_part(
    pool: asyncpg.Pool, request_id: int, part: DayPart, result: PartRewrite
) -> None:
    await pool.execute(
        "INSERT INTO erasure_parts (request_id, part_id, outcome, new_part_id, rows_removed,"
        " bytes) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id, part_id) DO UPDATE"
        " SET outcome = excluded.outcome, new_part_id = excluded.new_part_id,"
        " rows_removed = excluded.rows_removed, bytes = excluded.bytes",
        request_id,
        part.part_id,
        result.outcome,
        result.new_part.part_id if result.new_part else None,
        result.rows_removed,
        result.bytes,
    )


async def _adopt_unrecorded_rewrites(pool: asyncpg.Pool, request: asyncpg.Record) -> None:
    """Record rewrites a killed pass activated but did not get to record: their days need
    their rollups recomputed, and their replacements need no check."""
    await pool.execute(
        """INSERT INTO erasure_parts (request_id, part_id, outcome, new_part_id, rows_removed,
                                      bytes)
           SELECT $1, old.part_id, 'rewritten', new.part_id, old.rows - new.rows, new.bytes
           FROM day_files old JOIN day_files new ON new.part_id = old.superseded_by
           WHERE old.project_id = $2 AND new.kind = 'rewrite' AND new.created_at >= $3
             AND old.state IN ('superseded', 'deleted')
             AND NOT EXISTS (SELECT 1 FROM erasure_parts p WHERE p.new_part_id = new.part_id)
             AND NOT EXISTS (SELECT 1 FROM erasure_parts p WHERE p.part_id = old.part_id
                             AND p.outcome IN ('clean', 'rewritten'))
           ON CONFLICT (request_id, part_id) DO UPDATE SET outcome = 'rewritten',
               new_part_id = excluded.new_part_id, rows_removed = excluded.rows_removed,
               bytes = excluded.bytes""",
        request["id"],
        request["project_id"],
        request["created_at"],
    )


async def _update_progress(pool: asyncpg.Pool, request_id: int, remaining: int | None) -> None:
    await pool.execute(
        """UPDATE erasure_requests r SET
               files_checked = p.checked, files_rewritten = p.rewritten,
               bytes_rewritten = p.bytes, cold_events_deleted = p.rows,
               files_restoring = p.restoring,
               files_total = CASE WHEN $2::int IS NULL THEN r.files_total
                                  ELSE p.checked + $2::int END,
               updated_at = now()
           FROM (SELECT count(*) FILTER (WHERE outcome IN ('clean', 'rewritten')) AS checked,
                        count(*) FILTER (WHERE outcome = 'rewritten') AS rewritten,
                        coalesce(sum(bytes), 0) AS bytes, coalesce(sum(rows_removed), 0) AS rows,
                        count(*) FILTER (WHERE outcome = 'restoring') AS restoring
                 FROM erasure_parts WHERE request_id = $1) p
           WHERE r.id = $1""",
        request_id,
        remaining,
    )


async def _rewrite_files(
    pool: asyncpg.Pool,
    store: ObjectStore,
    request: asyncpg.Record,
    settings: DayExportSettings,
    restore_hours: int,
    should_stop: Callable[[], bool],
    run: ErasureRun,
    on_step: ErasureStepHook | None,
) -> bool:
    """Check and rewrite the project's parts; True once every part is clean."""
    ids = set(request["distinct_ids"])
    request_id = request["id"]
    await _adopt_unrecorded_rewrites(pool, request)
    # A merge may replace a part while we work ("gone"): its replacement is listed next round.
    for _ in range(3):
        parts = await _parts_to_check(pool, request_id, request["project_id"])
        await _update_progress(pool, request_id, len(parts))
        if not parts:
            break
        waiting = False
        for part in parts:
            if should_stop():
                return False
            # Rewritten archive parts stay readable until the rollups are recomputed.
            result = await rewrite_part_without(
                pool,
                store,
                part,
                ids,
                settings,
                restore_hours=restore_hours,
                rearchive=False,
                on_step=on_step,
            )
            if result.outcome in ("clean", "rewritten", "restoring"):
                await _record_part(pool, request_id, part, result)
                if on_step:
                    await on_step("recorded", part)
            if result.outcome == "rewritten":
                run.parts_rewritten += 1
                run.bytes_rewritten += result.bytes
            waiting |= result.outcome in ("restoring", "busy")
            await _update_progress(pool, request_id, None)
        if waiting:
            await _update_progress(pool, request_id, None)
            return False
    else:
        return False
    # A rewrite killed between activating its part and deleting the old object leaves the old
    # one superseded: erasure does not wait for the superseded grace period.
    leftovers = await pool.fetch(
        f"{_PART_SELECT} WHERE project_id = $1 AND state = 'superseded' AND superseded_by IN"
        " (SELECT part_id FROM day_files WHERE kind = 'rewrite' AND project_id = $1)",
        request["project_id"],
    )
    for row in leftovers:
        await delete_superseded(pool, store, _part(row))
    return True


# ---------------------------------------------------------------------------------------------
# Rollups


def _week_starts(days: Iterable[date]) -> list[datetime]:
    return sorted({bucket_start(datetime.combine(d, datetime.min.time(), UTC), WEEK) for d in days})


async def _cold_rows(store: ObjectStore, parts: list[DayPart], work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, part in enumerate(parts):
        path = work / f"week-{number}.parquet"
        await store.get_to_file(part.object_name, path)
        table = await asyncio.to_thread(pq.read_table, str(path), columns=list(_ROLLUP_COLUMNS))
        rows.extend(table.to_pylist())
        path.unlink()
    return rows


async def _unreadable(
    store: ObjectStore, parts: list[DayPart], restore_hours: int
) -> list[DayPart]:
    """Archived parts not restored; a restore is started for each."""
    waiting = []
    for part in parts:
        if part.storage_tier != "Archive":
            continue
        info = await store.head(part.object_name)
        if info.readable:
            continue
        if info.archival_state != "Restoring":
            await store.restore(part.object_name, restore_hours)
        waiting.append(part)
    return waiting


async def recompute_week_rollups(
    pool: asyncpg.Pool,
    store: ObjectStore,
    project_id: str,
    week: datetime,
    work_dir: Path,
    *,
    restore_hours: int = DEFAULT_RESTORE_HOURS,
) -> bool:
    """Rebuild the event rollups (hour and day buckets) of one ISO week from its raw
    events in day files and PostgreSQL. False when some archived part of the week must be
    restored first (the restore is started)."""
    first_day = week.date()
    days = [first_day + timedelta(days=i) for i in range(7)]
    parts = await active_parts(pool, project_id, days[0], days[-1])
    if await _unreadable(store, parts, restore_hours):
        return False
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="rollups-", dir=work_dir))
    try:
        rows = await _cold_rows(store, parts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    watermarks: dict[date, int] = {}
    for part in parts:
        watermarks[part.day] = max(watermarks.get(part.day, 0), part.xid_to)
    end = week + timedelta(days=7)
    async with pool.acquire() as conn, conn.transaction():
        # Under the aggregator's lock (its own statement: later reads see every batch that
        # committed before it), so a batch either is in the rows read here or adds its
        # deltas after this rebuild.
        await lock_derived_tables(conn, project_id)
        columns = ", ".join(_ROLLUP_COLUMNS)
        for day in days:
            lo, hi = day_bounds(day)
            hot = await conn.fetch(
                f"SELECT {columns} FROM events WHERE project_id = $1 AND ts >= $2 AND ts < $3"
                " AND inserted_xid >= $4",
                project_id,
                lo,
                hi,
                watermarks.get(day, 0),
            )
            rows.extend(dict(r) for r in hot)
        tallies = event_rollup_tallies(tuple(r[c] for c in EVENT_ROLLUP_INPUT) for r in rows)
        await conn.execute(
            "DELETE FROM rollups WHERE project_id = $1 AND bucket >= $2 AND bucket < $3",
            project_id,
            week,
            end,
        )
        keys = sorted(tallies)
        await conn.execute(
            "INSERT INTO rollups (project_id, granularity, bucket, name, dim, value, bot,"
            ' events, visitors) SELECT p, g::"char", b, n, d, v, bot, e, s FROM unnest('
            "$1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],"
            " $7::bool[], $8::bigint[], $9::bytea[]) AS u(p, g, b, n, d, v, bot, e, s)",
            *([k[i] for k in keys] for i in range(7)),
            [tallies[k].events for k in keys],
            [sketches.sketch_of(sorted(tallies[k].persons)) for k in keys],
        )
    return True


# ---------------------------------------------------------------------------------------------
# The pass


async def _touched_days(pool: asyncpg.Pool, request: asyncpg.Record) -> set[date]:
    rewritten = await pool.fetch(
        "SELECT DISTINCT f.day FROM erasure_parts p JOIN day_files f ON f.part_id = p.part_id"
        " WHERE p.request_id = $1 AND p.outcome = 'rewritten'",
        request["id"],
    )
    return set(request["hot_days"]) | {r["day"] for r in rewritten}


async def _rearchive(pool: asyncpg.Pool, store: ObjectStore, request_id: int) -> None:
    """Put the replacements of the Archive parts the request rewrote back into Archive."""
    rows = await pool.fetch(
        f"{_PART_SELECT} WHERE state = 'active' AND storage_tier <> 'Archive' AND part_id IN ("
        " SELECT p.new_part_id FROM erasure_parts p JOIN day_files old"
        " ON old.part_id = p.part_id WHERE p.request_id = $1 AND old.storage_tier = 'Archive')",
        request_id,
    )
    for row in rows:
        await archive_part(pool, store, _part(row))


async def _complete(pool: asyncpg.Pool, request: asyncpg.Record) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM erased_ids WHERE request_id = $1", request["id"])
        await conn.execute(
            "UPDATE erasure_requests SET state = 'completed', completed_at = now(),"
            " updated_at = now(), error = NULL WHERE id = $1",
            request["id"],
        )
        row = await conn.fetchrow(
            "SELECT files_rewritten, bytes_rewritten, cold_events_deleted, hot_events_deleted"
            " FROM erasure_requests WHERE id = $1",
            request["id"],
        )
        await record_audit(
            conn,
            key_id=request["requested_by"],
            project_id=request["project_id"],
            action="erasure",
            subject=f"request {request['id']}",
            outcome="completed",
            request_id=request["id"],
            detail=dict(row),
        )


async def process_erasures(
    pool: asyncpg.Pool,
    store: ObjectStore,
    settings: DayExportSettings,
    *,
    restore_hours: int = DEFAULT_RESTORE_HOURS,
    should_stop: Callable[[], bool] | None = None,
    on_step: ErasureStepHook | None = None,
) -> ErasureRun:
    """Move every open erasure request on as far as it can go now (oldest first).
    `on_step(step, part)` is awaited after each durable step: a rewritten part's uploaded,
    verified and activated, then recorded for each part checked (crash tests)."""
    stop = should_stop or (lambda: False)
    run = ErasureRun()
    requests = await pool.fetch(
        "SELECT * FROM erasure_requests WHERE state <> 'completed' ORDER BY id"
    )
    for request in requests:
        if stop():
            break
        try:
            if request["state"] == "rewriting":
                done = await _rewrite_files(
                    pool, store, request, settings, restore_hours, stop, run, on_step
                )
                if not done:
                    run.waiting.append(request["id"])
                    continue
                await pool.execute(
                    "UPDATE erasure_requests SET state = 'recomputing', updated_at = now()"
                    " WHERE id = $1",
                    request["id"],
                )
            waiting = False
            for week in _week_starts(await _touched_days(pool, request)):
                if not await recompute_week_rollups(
                    pool,
                    store,
                    request["project_id"],
                    week,
                    settings.work_dir,
                    restore_hours=restore_hours,
                ):
                    waiting = True
            if waiting:
                run.waiting.append(request["id"])
                continue
            await _rearchive(pool, store, request["id"])
            await _complete(pool, request)
            run.completed.append(request["id"])
            log.info("erasure_completed", request=request["id"], project=request["project_id"])
        except (
            DayFileVerificationError,
            ObjectStoreError,
            OSError,
            asyncpg.PostgresError,
            pa.ArrowException,
        ) as exc:
            message = str(exc) or type(exc).__name__
            run.failures.append((request["id"], message))
            log.error("erasure_failed", request=request["id"], error=message)
            await pool.execute(
                "UPDATE erasure_requests SET error = $2, updated_at = now() WHERE id = $1",
                request["id"],
                message,
            )
    return run


class ErasureJob:
    """Moves the open erasure requests on once per tiering pass (`run_once`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ObjectStore,
        settings: DayExportSettings,
        metrics: ErasureMetrics | None = None,
        *,
        restore_hours: int = DEFAULT_RESTORE_HOURS,
    ) -> None:
        self.pool = pool
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.restore_hours = restore_hours

    async def run_once(self, *, should_stop: Callable[[], bool] | None = None) -> ErasureRun:
        """One pass over the open requests, counted in the metrics."""
        run = await process_erasures(
            self.pool,
            self.store,
            self.settings,
            restore_hours=self.restore_hours,
            should_stop=should_stop,
        )
        if self.metrics is not None:
            self.metrics.completed.inc(len(run.completed))
            self.metrics.parts_rewritten.inc(run.parts_rewritten)
            self.metrics.bytes_rewritten.inc(run.bytes_rewritten)
            self.metrics.failures.inc(len(run.failures))
            self.metrics.open.set(
                await self.pool.fetchval(
                    "SELECT count(*) FROM erasure_requests WHERE state <> 'completed'"
                )
            )
        if run.completed or run.waiting or run.failures:
            log.info(
                "erasure_pass_done",
                completed=run.completed,
                waiting=run.waiting,
                parts_rewritten=run.parts_rewritten,
                bytes_rewritten=run.bytes_rewritten,
                failures=len(run.failures),
            )
        return run
