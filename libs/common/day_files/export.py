"""Exporting closed UTC days of `events` as Parquet parts: a crash-safe state machine.

For one (project, day), under a PostgreSQL advisory lock so one exporter works on it at a time:

1. recover: parts a crashed exporter left `writing` are deleted (object, then catalog state);
   a `verified` part that still continues the day's coverage is activated;
2. snapshot: in one REPEATABLE READ transaction, take the snapshot's xmin as the new watermark
   and copy the day's rows with watermark_before <= inserted_xid < watermark_new;
3. catalogue the part as `writing` (before any object exists, so no object is ever unknown);
4. write the Parquet file locally and put it with its Content-MD5;
5. verify: read the object back whole (page CRCs), compare row count, event-id checksum and
   MD5 with what was written; then `verified`;
6. activate: the part becomes visible to queries.

A rerun after `kill -9` at any step converges: steps 1-2 redo or finish what was left, and
`sweep_objects` deletes any object the catalog does not account for.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import structlog
from ulid import ULID

from libs.common.day_files import catalog
from libs.common.day_files.catalog import DayPart
from libs.common.day_files.layout import (
    EVENT_FILE_SCHEMA,
    FORMAT_VERSION,
    SORT_KEYS,
    TIE_ORDER,
    TIE_ORDER_KEY,
    day_bounds,
    part_object_name,
    project_prefix,
    with_day_file_schema,
)
from libs.common.day_files.parquet_parts import (
    PartContents,
    PartVerificationError,
    ids_checksum,
    read_part_contents,
    write_part,
)
from libs.common.day_files.postgres_rows import (
    ProjectId,
    copy_rows_to_file,
    event_query,
    iter_csv_rows,
    literal,
)
from libs.common.errors import StrataError
from libs.common.object_store import ObjectStore, ObjectStoreError

log = structlog.get_logger("day_files")

# Advisory-lock class of day exports (the second key is the hash of project/day).
_DAY_LOCK_CLASS = 0x44415946  # "DAYF"
_STALE_WORK_S = 24 * 3600.0
_ALL_COLUMNS = tuple(EVENT_FILE_SCHEMA.names)
# Ids compared by code point (COLLATE "C"), not in the database's collation: the order the
# footer claims (TIE_ORDER), the one merges (Arrow) and the analyses sort ties in.
_ORDER_BY = ", ".join(
    f'e.{name} COLLATE "C"' if name == "event_id" else f"e.{name}" for name, _ in SORT_KEYS
)

ExportStepHook = Callable[[str, DayPart], Awaitable[None]]


class DayExportSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How parts are written and kept (TieringSettings' day_file_* fields)."""

    work_dir: Path
    row_group_rows: int = 131072
    zstd_level: int = 3
    # A day with more active late parts than this has its late parts merged into one.
    max_late_parts: int = 8
    # Superseded objects are deleted this long after being replaced: readers that planned
    # with the old part finish first.
    superseded_grace_s: float = 3600.0


class DayFileVerificationError(StrataError):
    """A part read back from the object store differs from what was written; it was deleted
    and nothing was activated."""

    code = "day_file_verification_failed"


class XidCounterBehindError(StrataError, RuntimeError):
    """The database's transaction counter is below a part's watermark: the database was
    restored from a logical dump into a new cluster, and new rows would look exported."""

    code = "xid_counter_behind"


class DayNotClosedError(StrataError, ValueError):
    """Only whole UTC days in the past can be exported."""

    code = "day_not_closed"


class DayExport(msgspec.Struct, frozen=True, kw_only=True):
    """What one export of one (project, day) did."""

    project_id: str
    day: date
    part: DayPart | None  # the part activated; None when there were no new rows
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    recovered: int = 0  # parts a crashed exporter had left, now deleted or activated
    skipped: bool = False  # another exporter held the day


@dataclass
class ExportRun:
    """What one pass over many days did."""

    exports: list[DayExport] = field(default_factory=list)
    merges: list[DayExport] = field(default_factory=list)
    failures: list[tuple[str, date, str]] = field(default_factory=list)
    objects_deleted: int = 0

    @property
    def rows(self) -> int:
        return sum(e.rows for e in self.exports)

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.exports)

    @property
    def parts(self) -> int:
        return sum(1 for e in self.exports if e.part is not None)


# ---------------------------------------------------------------------------------------------
# Locking and recovery


@contextlib.asynccontextmanager
async def _day_lock(
    pool: asyncpg.Pool, project_id: str, day: date
) -> AsyncIterator[asyncpg.Connection | None]:
    """A connection holding the day's advisory lock, or None when another exporter has it.
    The lock dies with the connection, so a killed exporter never blocks the day."""
    async with pool.acquire() as conn:
        key = f"{project_id}/{day.isoformat()}"
        got = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", _DAY_LOCK_CLASS, key
        )
        if not got:
            yield None
            return
        try:
            yield conn
        finally:
            # A broken connection has already released the lock with its session.
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", _DAY_LOCK_CLASS, key
                )


async def _recover(conn: asyncpg.Connection, store: ObjectStore, project_id: str, day: date) -> int:
    """Finish or undo what a crashed exporter left for this day (we hold the day's lock, so
    nobody else is writing it). Returns the parts handled."""
    parts = await catalog.live_parts(conn, project_id, day)
    watermark = max((p.xid_to for p in parts if p.state == "active"), default=0)
    handled = 0
    for part in parts:
        if part.state == "active":
            continue
        handled += 1
        if part.state == "verified" and part.kind in ("export", "late"):
            if part.xid_from == watermark:
                await catalog.activate(conn, part.part_id)
                watermark = part.xid_to
                log.info("part_recovered", action="activated", part=part.object_name)
                continue
        await store.delete(part.object_name, missing_ok=True)
        await catalog.mark_deleted(conn, part.part_id, f"exporter stopped while {part.state}")
        log.info("part_recovered", action="deleted", part=part.object_name, state=part.state)
    return handled


# ---------------------------------------------------------------------------------------------
# One day


def _new_part(project_id: str, day: date, kind: str, xid_from: int, xid_to: int) -> DayPart:
    part_id = str(ULID())
    return DayPart(
        part_id=part_id,
        project_id=project_id,
        day=day,
        object_name=part_object_name(project_id, day, part_id),
        kind=kind,
        state="writing",
        xid_from=xid_from,
        xid_to=xid_to,
    )


def _file_metadata(part: DayPart) -> dict[str, str]:
    return {
        "strata.format": FORMAT_VERSION,
        "strata.project": part.project_id,
        "strata.day": part.day.isoformat(),
        "strata.part": part.part_id,
        "strata.xid_from": str(part.xid_from),
        "strata.xid_to": str(part.xid_to),
        # Every writer of parts sorts ties by code point: the export (COLLATE "C"), merges
        # and erasure rewrites (Arrow's sort).
        TIE_ORDER_KEY: TIE_ORDER,
    }


def _object_metadata(part: DayPart, contents: PartContents) -> dict[str, str]:
    # Enough to rebuild the catalog from the bucket alone.
    return {
        "project": part.project_id,
        "day": part.day.isoformat(),
        "part": part.part_id,
        "kind": part.kind,
        "rows": str(contents.rows),
        "ids-md5": contents.ids_checksum,
        "xid-from": str(part.xid_from),
        "xid-to": str(part.xid_to),
    }


async def _snapshot_rows(
    conn: asyncpg.Connection, project_id: str, day: date, xid_from: int, csv_path: Path
) -> int:
    """Copy the day's rows not yet in a part into `csv_path`; returns the snapshot's xmin, the
    new watermark. Both come from one snapshot: a row below the watermark is committed and
    visible to this copy, or never will be."""
    start, end = day_bounds(day)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # The first statement fixes the transaction's snapshot; the COPY below reads it.
        watermark: int = await conn.fetchval(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )
        where = (
            f"e.project_id = {literal(ProjectId(project_id))}"
            f" AND e.ts >= {literal(start)} AND e.ts < {literal(end)}"
            f" AND e.inserted_xid >= {literal(xid_from)} AND e.inserted_xid < {literal(watermark)}"
        )
        await copy_rows_to_file(conn, event_query(_ALL_COLUMNS, where, _ORDER_BY), csv_path)
    return watermark


async def _summarize_day_index(conn: asyncpg.Connection, project_id: str, day: date) -> None:
    """Summarize every block range of the day partition's BRIN index on inserted_xid, the last
    partial one included (VACUUM leaves that one out). Unsummarized ranges match any watermark,
    so without this every scan's check for late rows would read up to 1 MB of each exported
    day; with it, a day without late rows costs two index pages."""
    start, end = day_bounds(day)
    index = await conn.fetchval(
        """SELECT i.indexrelid::regclass::text
           FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indexrelid
           WHERE h.inhparent = 'events_inserted_xid'::regclass
             AND i.indrelid = (SELECT tableoid FROM event_rows
                               WHERE project_id = $1 AND ts >= $2 AND ts < $3 LIMIT 1)""",
        project_id,
        start,
        end,
    )
    if index is None:
        return
    try:
        await conn.fetchval("SELECT brin_summarize_new_values($1::regclass)", index)
    except asyncpg.PostgresError as exc:  # an optimisation: the export itself is done
        log.warning("brin_summarize_failed", index=index, error=str(exc))


def _csv_has_rows(csv_path: Path) -> bool:
    with csv_path.open("rb") as f:
        f.readline()  # header
        return bool(f.read(1))


async def _write_verify_activate(
    conn: asyncpg.Connection,
    store: ObjectStore,
    part: DayPart,
    local_path: Path,
    contents: PartContents,
    settings: DayExportSettings,
    on_step: ExportStepHook | None,
    supersedes: Sequence[str] = (),
) -> DayPart:
    """Steps 4-6 for a part already catalogued as `writing` and written to `local_path`."""
    await store.put(
        part.object_name,
        local_path,
        content_md5=contents.md5,
        metadata=_object_metadata(part, contents),
    )
    if on_step:
        await on_step("uploaded", part)
    check_path = local_path.with_suffix(".verify")
    try:
        try:
            info = await store.get_to_file(part.object_name, check_path)
            stored = await asyncio.to_thread(
                read_part_contents, check_path, project_id=part.project_id, day=part.day
            )
        except (ObjectStoreError, PartVerificationError) as exc:
            raise DayFileVerificationError(f"{part.object_name}: {exc}") from exc
        problem = _difference(contents, stored)
        if info.md5 is not None and info.md5 != contents.md5 and not problem:
            problem = f"object MD5 {info.md5} != written {contents.md5}"
        if problem:
            raise DayFileVerificationError(f"{part.object_name}: {problem}")
    except DayFileVerificationError as exc:
        await store.delete(part.object_name, missing_ok=True)
        await catalog.mark_deleted(conn, part.part_id, str(exc))
        log.error("part_verification_failed", part=part.object_name, error=str(exc))
        raise
    finally:
        check_path.unlink(missing_ok=True)
    await catalog.mark_verified(conn, part.part_id, contents, info.etag)
    if on_step:
        await on_step("verified", part)
    await catalog.activate(conn, part.part_id, supersedes)
    activated = msgspec.structs.replace(
        part,
        state="active",
        rows=contents.rows,
        bytes=contents.bytes,
        md5=contents.md5,
        etag=info.etag,
        ids_checksum=contents.ids_checksum,
        min_ts=contents.min_ts,
        max_ts=contents.max_ts,
    )
    if on_step:
        await on_step("activated", activated)
    return activated


def _difference(written: PartContents, stored: PartContents) -> str:
    if stored.rows != written.rows:
        return f"{stored.rows} rows read back, {written.rows} written"
    if stored.ids_checksum != written.ids_checksum:
        return "event-id checksum differs from the rows written"
    if stored.md5 != written.md5:
        return f"MD5 {stored.md5} read back, {written.md5} written"
    return ""


async def export_day(
    pool: asyncpg.Pool,
    store: ObjectStore,
    project_id: str,
    day: date,
    settings: DayExportSettings,
    *,
    now: datetime | None = None,
    on_step: ExportStepHook | None = None,
) -> DayExport:
    """Export the rows of one closed UTC day that no active part holds yet, as one new part.

    The first part of a day is an `export`; later ones (rows that arrived after it) are
    `late` parts. Raises `DayFileVerificationError` when the object read back differs (it is
    deleted and nothing becomes visible) and `DayNotClosedError` for today or a future day.
    `on_step(step, part)` is awaited after each durable step (catalogued, written, uploaded,
    verified, activated): progress reporting, and crash tests.
    """
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    if day >= today:
        raise DayNotClosedError(f"{day} is not a closed UTC day yet (today is {today})")
    started = time.perf_counter()
    async with _day_lock(pool, project_id, day) as conn:
        if conn is None:
            return DayExport(project_id=project_id, day=day, part=None, skipped=True)
        recovered = await _recover(conn, store, project_id, day)
        active = [p for p in await catalog.live_parts(conn, project_id, day) if p.state == "active"]
        xid_from = max((p.xid_to for p in active), default=0)
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="export-", dir=settings.work_dir))
        try:
            csv_path = work / "rows.csv"
            xid_to = await _snapshot_rows(conn, project_id, day, xid_from, csv_path)
            if xid_to < xid_from:
                raise XidCounterBehindError(
                    f"the database's transaction counter ({xid_to}) is below the watermark of "
                    f"{project_id}/{day}'s parts ({xid_from}): advance it past the largest "
                    "day_files.xid_to with pg_resetwal (docs/storage.md, Columnar day files)"
                )
            if not _csv_has_rows(csv_path):
                return DayExport(
                    project_id=project_id,
                    day=day,
                    part=None,
                    recovered=recovered,
                    seconds=time.perf_counter() - started,
                )
            part = _new_part(project_id, day, "late" if active else "export", xid_from, xid_to)
            await catalog.insert_writing(conn, part)
            if on_step:
                await on_step("catalogued", part)
            local_path = work / "part.parquet"
            contents = await asyncio.to_thread(
                write_part,
                local_path,
                iter_csv_rows(csv_path, _ALL_COLUMNS),
                row_group_rows=settings.row_group_rows,
                zstd_level=settings.zstd_level,
                metadata=_file_metadata(part),
            )
            csv_path.unlink()
            if on_step:
                await on_step("written", part)
            activated = await _write_verify_activate(
                conn, store, part, local_path, contents, settings, on_step
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        await _summarize_day_index(conn, project_id, day)
    seconds = time.perf_counter() - started
    log.info(
        "day_exported",
        project=project_id,
        day=day.isoformat(),
        part=activated.object_name,
        kind=activated.kind,
        rows=contents.rows,
        bytes=contents.bytes,
        seconds=round(seconds, 3),
    )
    return DayExport(
        project_id=project_id,
        day=day,
        part=activated,
        rows=contents.rows,
        bytes=contents.bytes,
        seconds=seconds,
        recovered=recovered,
    )


async def merge_late_parts(
    pool: asyncpg.Pool,
    store: ObjectStore,
    project_id: str,
    day: date,
    settings: DayExportSettings,
    *,
    on_step: ExportStepHook | None = None,
) -> DayExport | None:
    """Combine a day's late parts into one `merge` part once there are more than
    `max_late_parts`; the day's first part stays as it is. None when there was nothing to do.
    The replaced parts become `superseded` in the same transaction that activates the merge."""
    started = time.perf_counter()
    async with _day_lock(pool, project_id, day) as conn:
        if conn is None:
            return None
        await _recover(conn, store, project_id, day)
        active = [p for p in await catalog.live_parts(conn, project_id, day) if p.state == "active"]
        late = active[1:]  # coverage order: the first part is the day's export
        if len(late) <= settings.max_late_parts:
            return None
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="merge-", dir=settings.work_dir))
        try:
            tables = []
            for number, old in enumerate(late):
                path = work / f"in-{number}.parquet"
                await store.get_to_file(old.object_name, path)
                table = await asyncio.to_thread(pq.read_table, str(path))
                # A merge must not carry a damaged part forward: each one still holds exactly
                # what it was verified to hold.
                if table.num_rows != old.rows or (
                    ids_checksum(table.column("event_id")) != old.ids_checksum
                ):
                    raise DayFileVerificationError(
                        f"{old.object_name}: holds {table.num_rows} rows, not the "
                        f"{old.rows} rows it was verified with"
                    )
                tables.append(with_day_file_schema(table))
            combined = pa.concat_tables(tables).sort_by(
                [(name, order) for name, order in SORT_KEYS]
            )
            part = _new_part(project_id, day, "merge", late[0].xid_from, late[-1].xid_to)
            await catalog.insert_writing(conn, part)
            local_path = work / "part.parquet"
            contents = await asyncio.to_thread(
                write_part,
                local_path,
                [combined],
                row_group_rows=settings.row_group_rows,
                zstd_level=settings.zstd_level,
                metadata=_file_metadata(part),
            )
            activated = await _write_verify_activate(
                conn,
                store,
                part,
                local_path,
                contents,
                settings,
                on_step,
                supersedes=[p.part_id for p in late],
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info(
        "late_parts_merged",
        project=project_id,
        day=day.isoformat(),
        part=activated.object_name,
        merged=len(late),
        rows=contents.rows,
    )
    return DayExport(
        project_id=project_id,
        day=day,
        part=activated,
        rows=contents.rows,
        bytes=contents.bytes,
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------
# Orphans


async def sweep_objects(
    pool: asyncpg.Pool,
    store: ObjectStore,
    project_id: str,
    *,
    now: datetime | None = None,
    superseded_grace_s: float = 3600.0,
) -> int:
    """Delete the project's objects the catalog does not account for (no row, or a `deleted`
    row) and superseded objects past their grace period; returns how many were deleted.
    Objects of parts being written are left to their exporter (or its recovery)."""
    now = now or datetime.now(UTC)
    # List first, then read the catalog: a part is catalogued before its object is put, so an
    # object listed here either has its row already or is an orphan.
    names = await store.names(project_prefix(project_id))
    states = await catalog.object_states(pool, project_id)
    deleted = 0
    for name in names:
        state = states.get(name)
        if state is None or state == "deleted":
            await store.delete(name, missing_ok=True)
            deleted += 1
            log.info("orphan_object_deleted", object=name, catalog_state=state or "none")
    cutoff = now - timedelta(seconds=superseded_grace_s)
    for part in await catalog.superseded_before(pool, project_id, cutoff):
        await store.delete(part.object_name, missing_ok=True)
        await catalog.mark_deleted(pool, part.part_id, "")
        deleted += 1
    return deleted


def remove_stale_work(work_dir: Path) -> None:
    """Delete scratch directories a killed exporter left behind."""
    if not work_dir.exists():
        return
    cutoff = time.time() - _STALE_WORK_S
    for entry in work_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Which days need work


def last_closed_day(now: datetime, grace: timedelta) -> date:
    """The latest UTC day that ended at least `grace` ago."""
    return (now.astimezone(UTC) - grace).date() - timedelta(days=1)


async def days_needing_export(
    conn: asyncpg.Connection | asyncpg.Pool,
    project_id: str,
    last_day: date,
    *,
    max_late_parts: int,
) -> list[date]:
    """Days up to `last_day` with rows no active part holds, parts left mid-way by a crash,
    or more late parts than `max_late_parts`."""
    # `event_rows`: min() read off the (project_id, ts) indexes, which the `events` view's
    # joins would prevent.
    first_ts: datetime | None = await conn.fetchval(
        "SELECT min(ts) FROM event_rows WHERE project_id = $1", project_id
    )
    catalog_days = await conn.fetch(
        "SELECT day, count(*) FILTER (WHERE state = 'active') AS active,"
        " count(*) FILTER (WHERE state <> 'active') AS unfinished"
        " FROM day_files WHERE project_id = $1 AND day <= $2"
        " AND state = ANY($3::text[]) GROUP BY day",
        project_id,
        last_day,
        list(catalog.LIVE_STATES),
    )
    wanted = {r["day"] for r in catalog_days if r["unfinished"] or r["active"] - 1 > max_late_parts}
    if first_ts is None:
        return sorted(wanted)
    first_day = first_ts.astimezone(UTC).date()
    if first_day > last_day:
        return sorted(wanted)
    watermarks = await catalog.active_watermarks(conn, project_id, first_day, last_day)
    every_day = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    never_exported = [d for d in every_day if d not in watermarks]
    if never_exported:
        rows = await conn.fetch(
            """
            SELECT d.day FROM unnest($2::date[]) AS d(day)
            WHERE EXISTS (
                SELECT 1 FROM events e
                WHERE e.project_id = $1
                  AND e.ts >= (d.day::timestamp AT TIME ZONE 'UTC')
                  AND e.ts < ((d.day + 1)::timestamp AT TIME ZONE 'UTC'))
            """,
            project_id,
            never_exported,
        )
        wanted.update(r["day"] for r in rows)
    if watermarks:
        wanted.update(await _days_with_late_rows(conn, project_id, watermarks))
    return sorted(wanted)


async def _days_with_late_rows(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, watermarks: dict[date, int]
) -> list[date]:
    """Exported days holding rows at or past their watermark. One branch per day with literal
    bounds, so each is planned against its own partition's BRIN index on inserted_xid."""
    project = literal(ProjectId(project_id))
    found: list[date] = []
    items = sorted(watermarks.items())
    for chunk_start in range(0, len(items), 200):
        branches = []
        for day, watermark in items[chunk_start : chunk_start + 200]:
            start, end = day_bounds(day)
            branches.append(
                f"SELECT {literal(day)} AS day WHERE EXISTS (SELECT 1 FROM events e"
                f" WHERE e.project_id = {project} AND e.ts >= {literal(start)}"
                f" AND e.ts < {literal(end)} AND e.inserted_xid >= {literal(watermark)})"
            )
        rows = await conn.fetch(" UNION ALL ".join(branches))
        found.extend(r["day"] for r in rows)
    return found


async def export_pending_days(
    pool: asyncpg.Pool,
    store: ObjectStore,
    settings: DayExportSettings,
    *,
    grace: timedelta,
    projects: Sequence[str] | None = None,
    days: Sequence[date] | None = None,
    now: datetime | None = None,
    on_day: Callable[[DayExport], Awaitable[None]] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExportRun:
    """Export every closed day (ended `grace` ago) with rows not yet in a part, finish or undo
    interrupted exports, merge days with too many late parts and delete orphan objects.
    `days` restricts the run to those days (any day before today, grace or not). A failure of
    one day is recorded in the result and the run goes on with the others; once
    `should_stop()` is true the run ends after the day in progress."""
    now = now or datetime.now(UTC)
    run = ExportRun()
    remove_stale_work(settings.work_dir)
    if projects is None:
        projects = [r["id"] for r in await pool.fetch("SELECT id FROM projects ORDER BY id")]
    today = now.astimezone(UTC).date()
    for project_id in projects:
        if days is None:
            todo = await days_needing_export(
                pool,
                project_id,
                last_closed_day(now, grace),
                max_late_parts=settings.max_late_parts,
            )
        else:
            todo = sorted(d for d in set(days) if d < today)
        for day in todo:
            if should_stop is not None and should_stop():
                return run
            try:
                result = await export_day(pool, store, project_id, day, settings, now=now)
                run.exports.append(result)
                if on_day:
                    await on_day(result)
                merged = await merge_late_parts(pool, store, project_id, day, settings)
                if merged is not None:
                    run.merges.append(merged)
            except (
                DayFileVerificationError,
                XidCounterBehindError,
                ObjectStoreError,
                OSError,
                asyncpg.PostgresError,
                pa.ArrowException,
            ) as exc:
                run.failures.append((project_id, day, str(exc) or type(exc).__name__))
                log.error(
                    "day_export_failed", project=project_id, day=day.isoformat(), error=str(exc)
                )
        try:
            run.objects_deleted += await sweep_objects(
                pool,
                store,
                project_id,
                now=now,
                superseded_grace_s=settings.superseded_grace_s,
            )
        except (ObjectStoreError, OSError, asyncpg.PostgresError) as exc:
            run.failures.append((project_id, today, f"orphan sweep: {exc}"))
            log.error("orphan_sweep_failed", project=project_id, error=str(exc))
    return run
