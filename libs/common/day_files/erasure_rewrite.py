"""Rewriting one day-file part without an erased person's rows (GDPR erasure).

The new `rewrite` part covers the same inserted_xid range as the part it replaces, so the day's
watermark, and with it which PostgreSQL rows count as late, does not move; it is written,
read back and verified like any export, activated in the transaction that supersedes the old
part, and the old object is deleted at once (erasure does not wait for the superseded grace
period). A part even left without rows is replaced by an empty part, for the same coverage.
An Archive part is restored first (`restoring`: call again once the store has restored it),
then rewritten and its replacement put back into the Archive tier.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import asyncpg
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from libs.common.day_files import catalog
from libs.common.day_files.catalog import DayPart
from libs.common.day_files.export import (
    DayExportSettings,
    DayFileVerificationError,
    ExportStepHook,
    _day_lock,
    _file_metadata,
    _new_part,
    _recover,
    _write_verify_activate,
)
from libs.common.day_files.layout import SORT_KEYS, with_day_file_schema
from libs.common.day_files.parquet_parts import ids_checksum, write_part
from libs.common.object_store import ObjectStore
from libs.common.object_store.base import DEFAULT_RESTORE_HOURS

log = structlog.get_logger("day_files")

RewriteOutcome = Literal["clean", "rewritten", "restoring", "busy", "gone"]


class PartRewrite(msgspec.Struct, frozen=True, kw_only=True):
    """What checking one part did.

    clean: it holds none of the ids; rewritten: replaced by `new_part`; restoring: archived,
    a restore is under way; busy: an exporter holds the day, try later; gone: the part is no
    longer active (a merge replaced it; check its replacement instead)."""

    outcome: RewriteOutcome
    new_part: DayPart | None = None
    rows_removed: int = 0
    bytes: int = 0


def _without_ids(table: pa.Table, ids: Collection[str]) -> tuple[pa.Table, int]:
    value_set = pa.array(sorted(ids), pa.string())
    erased = pc.or_kleene(
        pc.is_in(table.column("distinct_id"), value_set=value_set),
        pc.fill_null(pc.is_in(table.column("user_id"), value_set=value_set), False),
    )
    erased = pc.fill_null(erased, False)
    kept = table.filter(pc.invert(erased))
    return kept, table.num_rows - kept.num_rows


async def rewrite_part_without(
    pool: asyncpg.Pool,
    store: ObjectStore,
    part: DayPart,
    ids: Collection[str],
    settings: DayExportSettings,
    *,
    restore_hours: int = DEFAULT_RESTORE_HOURS,
    rearchive: bool = True,
    on_step: ExportStepHook | None = None,
) -> PartRewrite:
    """Replace `part` by a part without the rows of `ids` (as distinct_id or user_id). The
    replacement of an Archive part goes back to Archive, unless `rearchive` is False (the
    caller still has to read it: see `archive_part`). `on_step` is awaited after each durable
    step of the new part (uploaded, verified, activated), as for exports."""
    async with _day_lock(pool, part.project_id, part.day) as conn:
        if conn is None:
            return PartRewrite(outcome="busy")
        # Undo what a rewrite (or export) killed mid-way left for this day.
        await _recover(conn, store, part.project_id, part.day)
        live = {p.part_id: p for p in await catalog.live_parts(conn, part.project_id, part.day)}
        current = live.get(part.part_id)
        if current is None or current.state != "active":
            return PartRewrite(outcome="gone")
        info = await store.head(current.object_name)
        archived = info.storage_tier == "Archive"
        if archived and not info.readable:
            if info.archival_state != "Restoring":
                await store.restore(current.object_name, restore_hours)
            await conn.execute(
                "UPDATE day_files SET archival_state = 'Restoring' WHERE part_id = $1",
                current.part_id,
            )
            return PartRewrite(outcome="restoring")
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="erase-", dir=settings.work_dir))
        try:
            source = work / "in.parquet"
            await store.get_to_file(current.object_name, source)
            table = await asyncio.to_thread(pq.read_table, str(source))
            if table.num_rows != current.rows or (
                ids_checksum(table.column("event_id")) != current.ids_checksum
            ):
                raise DayFileVerificationError(
                    f"{current.object_name}: holds {table.num_rows} rows, not the "
                    f"{current.rows} rows it was verified with"
                )
            kept, removed = _without_ids(with_day_file_schema(table), ids)
            if removed == 0:
                return PartRewrite(outcome="clean")
            new = _new_part(
                current.project_id, current.day, "rewrite", current.xid_from, current.xid_to
            )
            await catalog.insert_writing(conn, new)
            local = work / "part.parquet"
            contents = await asyncio.to_thread(
                write_part,
                local,
                # Sorted again (Arrow: ids by code point), so the part may claim that order
                # (TIE_ORDER) even when the part it replaces was written before the claim.
                [kept.sort_by([(name, order) for name, order in SORT_KEYS])],
                row_group_rows=settings.row_group_rows,
                zstd_level=settings.zstd_level,
                metadata=_file_metadata(new),
            )
            activated = await _write_verify_activate(
                conn, store, new, local, contents, settings, on_step, supersedes=[current.part_id]
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if archived and rearchive:
            await archive_part(conn, store, activated)
        await delete_superseded(conn, store, current)
    log.info(
        "part_rewritten_for_erasure",
        project=part.project_id,
        day=part.day.isoformat(),
        old=current.object_name,
        new=activated.object_name,
        rows_removed=removed,
        archived=archived,
    )
    return PartRewrite(
        outcome="rewritten", new_part=activated, rows_removed=removed, bytes=contents.bytes
    )


async def archive_part(
    conn: asyncpg.Connection | asyncpg.Pool, store: ObjectStore, part: DayPart
) -> None:
    """Move an active part to the Archive tier: the object first, then the catalog (a crash in
    between leaves an Archive object catalogued Standard, which reads report as archived)."""
    await store.set_storage_tier(part.object_name, "Archive")
    await conn.execute(
        "UPDATE day_files SET storage_tier = 'Archive', archival_state = 'Archived',"
        " restored_until = NULL, archived_at = now() WHERE part_id = $1",
        part.part_id,
    )


async def delete_superseded(
    conn: asyncpg.Connection | asyncpg.Pool, store: ObjectStore, part: DayPart
) -> None:
    """Delete a superseded part's object now and record it (idempotent)."""
    await store.delete(part.object_name, missing_ok=True)
    await catalog.mark_deleted(conn, part.part_id, "")
