"""Tier jobs on demand (`strata tier run|status|restore`) and on the tiering schedule: old
days leave PostgreSQL for day files, then the Archive tier; a restore makes them readable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from libs.common.day_files import DayExportSettings
from libs.common.object_store import open_object_store
from services.tiering.day_export import DayExportJob
from services.tiering.metrics import DayExportMetrics, TieringMetrics, TierJobMetrics
from services.tiering.service import TieringSchedule
from services.tiering.tier_jobs import TierJobs, parse_tier_jobs
from tests.integration.test_tier_export import load, strata

pytestmark = pytest.mark.infra


async def test_tier_run_status_and_restore(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    await load(pool)  # acme and globex, days of March 2024: past hot_days and cold_days
    total = await pool.fetchval("SELECT count(*) FROM events")
    store_url = f"file://{tmp_path / 'objects'}"
    run = await strata(
        "tier",
        "run",
        "--job",
        "all",
        database_url=database_url,
        data_dir=tmp_path,
        store_url=store_url,
    )
    assert run.code == 0, run.stderr
    assert "cold:" in run.stdout and "archive:" in run.stdout
    assert await pool.fetchval("SELECT count(*) FROM events") == 0
    status = await strata(
        "tier",
        "status",
        "--json",
        database_url=database_url,
        data_dir=tmp_path,
        store_url=store_url,
    )
    assert status.code == 0, status.stderr
    summary = json.loads(status.stdout)
    tiers = {t["tier"]: t for t in summary["tiers"]}
    assert tiers["hot"]["rows"] == 0
    assert tiers["archive"]["rows"] == total and tiers["archive"]["bytes"] > 0
    assert summary["pending"] == {
        "cold_days": 0,
        "archive_parts": 0,
        "retention_parts": 0,
        "restores": 0,
    }
    text = await strata(
        "tier",
        "status",
        "--project",
        "acme",
        database_url=database_url,
        data_dir=tmp_path,
        store_url=store_url,
    )
    assert text.code == 0 and "archive" in text.stdout and "/month" in text.stdout

    restore = await strata(
        "tier",
        "restore",
        "--project",
        "acme",
        "--from",
        "2024-03-01",
        "--to",
        "2024-03-31",
        database_url=database_url,
        data_dir=tmp_path,
        store_url=store_url,
    )
    assert restore.code == 0, restore.stderr
    assert restore.stdout.startswith("restore ") and "restoring" in restore.stdout
    job = await pool.fetchrow("SELECT * FROM restores")
    assert job["project_id"] == "acme" and job["state"] == "restoring"

    bad = await strata(
        "tier",
        "run",
        "--job",
        "colder",
        database_url=database_url,
        data_dir=tmp_path,
        store_url=store_url,
    )
    assert bad.code == 1 and bad.stderr.strip().count("\n") == 0
    assert "unknown tier job(s) colder" in bad.stderr


def test_tier_job_names() -> None:
    assert parse_tier_jobs("retention, cold") == ["cold", "retention"]
    assert parse_tier_jobs("all")[0] == "export"
    with pytest.raises(ValueError, match="unknown tier job"):
        parse_tier_jobs("cold,warm")


async def test_scheduled_pass_exports_then_moves_cold(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await load(pool)
    total = await pool.fetchval("SELECT count(*) FROM events")
    store = open_object_store(f"file://{tmp_path / 'objects'}")
    registry = CollectorRegistry()
    schedule = TieringSchedule(
        pool,
        TieringMetrics(registry),
        schedule_s=3600,
        partitions_ahead_days=1,
        dedup_horizon_days=30,
        day_export=DayExportJob(
            pool,
            store,
            DayExportSettings(work_dir=tmp_path / "work"),
            DayExportMetrics(registry),
            grace=timedelta(0),
        ),
        tier_jobs=TierJobs(pool, store, TierJobMetrics(registry), jobs=["cold"]),
    )
    try:
        assert await schedule.run_once()
    finally:
        await store.close()
    assert await pool.fetchval("SELECT count(*) FROM events") == 0
    moved = await pool.fetchval("SELECT sum(rows_moved) FROM day_tiers")
    assert moved == total
    assert registry.get_sample_value("strata_tiering_rows_moved_cold_total") == total
    assert datetime.now(UTC).date() > (await pool.fetchval("SELECT max(day) FROM day_tiers"))
