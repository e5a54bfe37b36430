"""Running the day export on demand (`strata tier export`, as an operator does) and on the
tiering service's schedule: closed days with rows become parts, a rerun adds nothing, bad
input gets a one-line error."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from libs.common import keys
from libs.common.day_files import DayExportSettings, project_prefix
from libs.common.object_store import open_object_store
from services.tiering.day_export import DayExportJob
from services.tiering.metrics import DayExportMetrics, TieringMetrics
from services.tiering.service import TieringSchedule
from tests.support.analytics_dataset import generate_events
from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.tier_layouts import write

pytestmark = pytest.mark.infra

STRATA = str(Path(sys.executable).parent / "strata")
FIRST_DAY = datetime(2024, 3, 1, tzinfo=UTC)


class Result(msgspec.Struct):
    code: int
    stdout: str
    stderr: str


async def strata(*args: str, database_url: str, data_dir: Path, store_url: str) -> Result:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STRATA_") and k not in ("DATABASE_URL", "NATS_URL")
    }
    env.update(
        DATABASE_URL=database_url, STRATA_DATA_DIR=str(data_dir), STRATA_OBJECT_STORE=store_url
    )
    proc = await asyncio.create_subprocess_exec(
        STRATA, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def load(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await keys.ensure_project(conn, "acme", "Acme")
        await keys.ensure_project(conn, "globex", "Globex")
    await write(pool, generate_events("acme", FIRST_DAY, 3, devices=40))
    await write(pool, generate_events("globex", FIRST_DAY, 1, devices=10, seed=3))


async def test_cli_exports_on_demand(pool: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    await load(pool)
    store_url = f"file://{tmp_path / 'objects'}"
    run = await strata(
        "tier",
        "export",
        "--project",
        "acme",
        "--day",
        "2024-03-02",
        database_url=database_url,
        data_dir=tmp_path,
        store_url=store_url,
    )
    assert run.code == 0, run
    assert "acme 2024-03-02: export part events/v1/project=acme/dt=2024-03-02/part-" in run.stdout
    rows = await pool.fetchval(
        "SELECT count(*) FROM events WHERE project_id = 'acme'"
        " AND ts >= '2024-03-02' AND ts < '2024-03-03'"
    )
    assert f"exported 1 part(s), {rows} rows" in run.stdout
    parts = await pool.fetch("SELECT project_id, day, rows FROM day_files WHERE state = 'active'")
    assert [tuple(p) for p in parts] == [("acme", date(2024, 3, 2), rows)]

    # Without --day or --project: every closed day of every project not exported yet.
    everything = await strata(
        "tier", "export", database_url=database_url, data_dir=tmp_path, store_url=store_url
    )
    assert everything.code == 0, everything
    assert "exported 3 part(s)" in everything.stdout  # acme's other two days, globex's one
    again = await strata(
        "tier", "export", database_url=database_url, data_dir=tmp_path, store_url=store_url
    )
    assert again.code == 0 and "exported 0 part(s), 0 rows" in again.stdout
    async with open_object_store(store_url) as store:
        assert len(await store.names(project_prefix("acme"))) == 3
        assert len(await store.names(project_prefix("globex"))) == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--day", "02/03/2024"], "--day must be a date as YYYY-MM-DD, not '02/03/2024'"),
        (["--project", "nobody"], "there is no project 'nobody'"),
        (["--project", "Bad Name"], None),
    ],
)
async def test_cli_bad_input_gets_one_line(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path, args: list[str], error: str | None
) -> None:
    result = await strata(
        "tier",
        "export",
        *args,
        database_url=database_url,
        data_dir=tmp_path,
        store_url=f"file://{tmp_path / 'objects'}",
    )
    assert result.code == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("strata: error: "), result.stderr
    if error is not None:
        assert lines[0] == f"strata: error: {error}"


async def test_cli_refuses_an_open_day(database_url: str, tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    result = await strata(
        "tier",
        "export",
        "--day",
        today.isoformat(),
        database_url=database_url,
        data_dir=tmp_path,
        store_url=f"file://{tmp_path / 'objects'}",
    )
    assert result.code == 1
    assert "is not a closed UTC day yet" in result.stderr


async def test_scheduled_pass_exports_closed_days(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await load(pool)
    registry = CollectorRegistry()
    async with open_object_store(f"file://{tmp_path / 'objects'}") as store:
        job = DayExportJob(
            pool,
            store,
            DayExportSettings(work_dir=tmp_path / "work"),
            DayExportMetrics(registry),
            grace=timedelta(minutes=30),
        )
        schedule = TieringSchedule(
            pool,
            TieringMetrics(registry),
            schedule_s=3600,
            partitions_ahead_days=1,
            dedup_horizon_days=30,
            day_export=job,
        )
        assert await schedule.run_once()
        assert await schedule.run_once()  # nothing new the second time
    assert (
        registry.get_sample_value("strata_tiering_day_parts_exported_total", {"kind": "export"})
        == 4.0
    )
    rows = await pool.fetchval("SELECT count(*) FROM events")
    assert registry.get_sample_value("strata_tiering_day_rows_exported_total") == rows
    assert registry.get_sample_value("strata_tiering_day_export_failures_total") == 0.0
    exported = await pool.fetchval("SELECT sum(rows) FROM day_files WHERE state = 'active'")
    assert exported == rows


async def test_tiering_service_exports_on_start_and_stops_on_sigterm(
    pool: asyncpg.Pool, database_url: str, nats_url: str, tmp_path: Path
) -> None:
    await load(pool)
    port = free_port()
    env = service_env(
        database_url,
        nats_url,
        "unused",
        health_port=port,
        schedule_s=600,
        tier_jobs="export",  # the cold move would then empty PostgreSQL of these old days
        data_dir=str(tmp_path),
        object_store=f"file://{tmp_path / 'objects'}",
    )
    service = ServiceProcess("tiering", env, tmp_path).start()
    try:
        await asyncio.to_thread(service.wait_http, port, "/readyz", 30.0)
        exported = 'strata_tiering_day_parts_exported_total{kind="export"} 4.0'
        metrics = ""
        for _ in range(300):
            metrics = await asyncio.to_thread(_metrics, port)
            if exported in metrics:
                break
            await asyncio.sleep(0.1)
        assert exported in metrics, service.log()
    finally:
        code = await asyncio.to_thread(service.stop, 15.0)
    assert code == 0, service.log()
    rows = await pool.fetchval("SELECT count(*) FROM events")
    assert await pool.fetchval("SELECT sum(rows) FROM day_files WHERE state = 'active'") == rows
    async with open_object_store(f"file://{tmp_path / 'objects'}") as store:
        assert len(await store.names("events/v1/")) == 4


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""
