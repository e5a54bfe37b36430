"""Cold, archive and retention moves: every event stays readable exactly once through the event
scan, whichever tier holds it, across late events, crashes and reruns."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from libs.common.day_files import DayExportSettings, DayFileCache, export_pending_days
from libs.common.day_files.restores import advance_restores, request_restore
from libs.common.day_files.tier_summary import TierPrices, tier_summary
from libs.common.event_partitions import partition_name
from libs.common.object_store.file_store import FileObjectStore
from services.query.event_scan import ArchivedDaysError, open_scan
from services.query.scan_engine import ScanEngine
from services.tiering.tier_moves import (
    apply_retention,
    archive_cold_parts,
    move_cold_days,
)
from tests.integration.test_day_files_export import DAY, day_events
from tests.support.project import TestProject
from tests.support.tier_layouts import ScanDeps, write

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 9, 1, 12, tzinfo=UTC)  # DAY is ~183 days old: past hot_days (90)


async def export(pool: asyncpg.Pool, store: FileObjectStore, tmp_path: Path) -> None:
    run = await export_pending_days(
        pool,
        store,
        DayExportSettings(work_dir=tmp_path / "work"),
        grace=timedelta(0),
        projects=["acme"],
        now=NOW,
    )
    assert not run.failures, run.failures


async def scanned_ids(
    pool: asyncpg.Pool, store: FileObjectStore, tmp_path: Path, *, now: datetime = NOW
) -> Counter[str]:
    """Every event id the query side reads for DAY, with how often it is read."""
    engine = ScanEngine(DayFileCache(tmp_path / "cache", 64 * 1024 * 1024, store))
    try:
        start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
        async with await open_scan(
            ScanDeps(pool, engine),
            "acme",
            start,
            start + timedelta(days=1),
            include_bots=True,
            with_persons=False,
            now=now,
        ) as scan:
            return Counter(r[0] for r in await scan.query("SELECT event_id FROM events_scan"))
    finally:
        engine.close()


async def hot_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM events WHERE project_id = 'acme'"))


async def page_count(pool: asyncpg.Pool, project_id: str = "acme") -> int:
    return int(
        await pool.fetchval("SELECT count(*) FROM event_pages WHERE project_id = $1", project_id)
    )


async def partition_exists(pool: asyncpg.Pool, day: date) -> bool:
    return await pool.fetchval("SELECT to_regclass($1)", partition_name(day)) is not None


async def test_cold_move_removes_covered_rows_and_late_rows_follow(
    pool: asyncpg.Pool, project: TestProject, tmp_path: Path
) -> None:
    store = FileObjectStore(tmp_path / "objects")
    await write(pool, day_events(300))
    await export(pool, store, tmp_path)
    pages = await page_count(pool)
    sources = int(await pool.fetchval("SELECT count(*) FROM event_sources"))
    assert pages > 0
    run = await move_cold_days(pool, store, now=NOW)
    assert not run.failures and run.rows_moved == 300
    assert await hot_count(pool) == 0
    assert not await partition_exists(pool, DAY), "an empty day partition is dropped"
    # The pages and sources only those rows showed leave with them (the day files keep the
    # strings).
    assert run.dictionary_rows_deleted == pages + sources and await page_count(pool) == 0
    tier = await pool.fetchrow("SELECT * FROM day_tiers WHERE project_id = 'acme'")
    assert (tier["tier"], tier["rows_moved"]) == ("cold", 300)
    ids = await scanned_ids(pool, store, tmp_path)
    assert len(ids) == 300 and set(ids.values()) == {1}

    # Late events for the moved day land in PostgreSQL (the partition comes back) and are read.
    await write(pool, day_events(20, prefix="late"))
    assert await hot_count(pool) == 20
    ids = await scanned_ids(pool, store, tmp_path)
    assert len(ids) == 320 and set(ids.values()) == {1}
    # Nothing new is exported yet: the cold move leaves the late rows where they are.
    assert (await move_cold_days(pool, store, now=NOW)).rows_moved == 0
    assert await hot_count(pool) == 20
    # The next export adds a late part, and the next cold move moves those rows too.
    await export(pool, store, tmp_path)
    run = await move_cold_days(pool, store, now=NOW)
    assert run.rows_moved == 20 and await hot_count(pool) == 0
    ids = await scanned_ids(pool, store, tmp_path)
    assert len(ids) == 320 and set(ids.values()) == {1}
    assert (await pool.fetchval("SELECT rows_moved FROM day_tiers")) == 320


async def test_days_within_hot_days_and_shared_partitions_stay(
    pool: asyncpg.Pool, project: TestProject, tmp_path: Path
) -> None:
    store = FileObjectStore(tmp_path / "objects")
    await write(pool, day_events(50))
    await export(pool, store, tmp_path)
    # 30 days after DAY it is still hot.
    assert (await move_cold_days(pool, store, now=NOW.replace(month=4))).rows_moved == 0
    assert await hot_count(pool) == 50
    # Another project's rows in the same partition keep it; acme's rows still leave.
    await pool.execute("INSERT INTO projects (id, name, hot_days) VALUES ('beta', 'Beta', 3650)")
    await write(
        pool,
        [
            e.__class__(
                **{
                    **{f: getattr(e, f) for f in e.__struct_fields__},
                    "project_id": "beta",
                    "event_id": "b" + e.event_id,
                }
            )
            for e in day_events(5)
        ],
    )
    await export(pool, store, tmp_path)
    beta_pages = await page_count(pool, "beta")
    run = await move_cold_days(pool, store, now=NOW)
    assert run.rows_moved == 50 and await hot_count(pool) == 0
    assert await partition_exists(pool, DAY)
    assert await pool.fetchval("SELECT count(*) FROM events WHERE project_id = 'beta'") == 5
    assert await page_count(pool) == 0 and await page_count(pool, "beta") == beta_pages > 0


STEPS = ["checked", "deleted", "committed", "dropped"]


@pytest.mark.parametrize("step", STEPS)
async def test_kill_9_at_any_step_of_a_cold_move_then_rerun_reads_every_event_once(
    pool: asyncpg.Pool, project: TestProject, database_url: str, tmp_path: Path, step: str
) -> None:
    store = FileObjectStore(tmp_path / "objects")
    await write(pool, day_events(200))
    await export(pool, store, tmp_path)
    await write(pool, day_events(10, prefix="late"))  # not exported yet: must stay hot
    marker = tmp_path / "marker"
    mover = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.cold_move_crash",
        database_url,
        f"file://{tmp_path / 'objects'}",
        "acme",
        DAY.isoformat(),
        step,
        str(marker),
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")},
    )
    try:
        for _ in range(600):
            if marker.exists() or mover.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert marker.read_text() == step
        # Killed mid-way: the query side still reads every event once.
    finally:
        if mover.returncode is None:
            mover.send_signal(signal.SIGKILL)
        await mover.wait()
    for _ in range(100):
        if not await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"):
            break
        await asyncio.sleep(0.1)
    ids = await scanned_ids(pool, store, tmp_path)
    assert len(ids) == 210 and set(ids.values()) == {1}
    run = await move_cold_days(pool, store, now=NOW)
    assert not run.failures
    assert await hot_count(pool) == 10, "only the late rows no part holds stay hot"
    ids = await scanned_ids(pool, store, tmp_path)
    assert len(ids) == 210 and set(ids.values()) == {1}
    await export(pool, store, tmp_path)
    await move_cold_days(pool, store, now=NOW)
    assert await hot_count(pool) == 0
    ids = await scanned_ids(pool, store, tmp_path)
    assert len(ids) == 210 and set(ids.values()) == {1}
    assert await pool.fetchval("SELECT rows_moved FROM day_tiers") == 210


async def test_archive_restore_and_retention(
    pool: asyncpg.Pool, project: TestProject, tmp_path: Path
) -> None:
    clock = {"now": NOW}
    store = FileObjectStore(tmp_path / "objects", restore_delay_s=60, clock=lambda: clock["now"])
    await write(pool, day_events(100))
    await export(pool, store, tmp_path)
    await move_cold_days(pool, store, now=NOW)
    # Not yet past cold_days (365).
    assert (await archive_cold_parts(pool, store, now=NOW)).parts_archived == 0
    later = NOW + timedelta(days=400)
    clock["now"] = later
    run = await archive_cold_parts(pool, store, now=later)
    assert run.parts_archived == 1 and not run.failures
    part = await pool.fetchrow("SELECT * FROM day_files WHERE state = 'active'")
    assert (part["storage_tier"], part["archival_state"]) == ("Archive", "Archived")
    assert (await store.head(part["object_name"])).storage_tier == "Archive"
    assert await pool.fetchval("SELECT tier FROM day_tiers") == "archive"
    summary = await tier_summary(pool, "acme", TierPrices(), now=later)
    archive = next(t for t in summary.tiers if t.tier == "archive")
    assert (archive.objects, archive.rows, archive.first_day) == (1, 100, DAY)

    with pytest.raises(ArchivedDaysError) as archived:
        await scanned_ids(pool, store, tmp_path, now=later)
    job = await request_restore(pool, store, "acme", archived.value.parts, hours=24, now=later)
    assert (job.state, job.objects, job.objects_restored) == ("restoring", 1, 0)
    # Asking again while it runs gives the same job.
    again = await request_restore(pool, store, "acme", archived.value.parts, hours=24, now=later)
    assert again.restore_id == job.restore_id
    clock["now"] = later + timedelta(minutes=2)
    assert await advance_restores(pool, store, now=clock["now"]) == 1
    ids = await scanned_ids(pool, store, tmp_path, now=clock["now"])
    assert len(ids) == 100
    # The restored copy expires: reading needs a restore again.
    clock["now"] = later + timedelta(hours=30)
    await advance_restores(pool, store, now=clock["now"])
    with pytest.raises(ArchivedDaysError):
        await scanned_ids(pool, store, tmp_path, now=clock["now"])

    await pool.execute("UPDATE projects SET retention_days = 500 WHERE id = 'acme'")
    gone = NOW + timedelta(days=520)
    run = await apply_retention(pool, store, now=gone)
    assert run.parts_deleted == 1 and not run.failures
    row = await pool.fetchrow("SELECT state, deleted_at, error FROM day_files")
    assert row["state"] == "deleted" and row["deleted_at"] is not None
    assert row["error"].startswith("retention")
    assert await store.names("events/") == []
    assert await pool.fetchval("SELECT tier FROM day_tiers") == "deleted"
    ids = await scanned_ids(pool, store, tmp_path, now=gone)
    assert not ids
