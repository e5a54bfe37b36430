"""`python -m services.tiering`: hot-store maintenance on a schedule (partitions ahead, dedup
pruning) and the export of closed days as Parquet day files, with /healthz, /readyz and /metrics
on STRATA_HEALTH_PORT."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta

import asyncpg
import structlog
import uvloop
from prometheus_client import CollectorRegistry

from libs.common.db import create_pool
from libs.common.object_store import object_store_from_settings
from libs.common.observability import configure_logging, configure_tracing, start_health_server
from libs.common.settings import TieringSettings, from_env
from services.tiering.day_export import DayExportJob, day_export_settings
from services.tiering.erasure import ErasureJob
from services.tiering.metrics import (
    DayExportMetrics,
    ErasureMetrics,
    TieringMetrics,
    TierJobMetrics,
)
from services.tiering.service import TieringSchedule
from services.tiering.tier_jobs import TierJobs, parse_tier_jobs

log = structlog.get_logger("tiering")


async def serve(settings: TieringSettings) -> None:
    """Run until SIGTERM/SIGINT, then finish the current pass and close everything."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)

    pool = await _connect(settings.database_url, stop_requested)
    if pool is None:
        return
    registry = CollectorRegistry()
    store = object_store_from_settings(settings)
    jobs = parse_tier_jobs(settings.tier_jobs)
    day_export = DayExportJob(
        pool,
        store,
        day_export_settings(settings),
        DayExportMetrics(registry),
        grace=timedelta(seconds=settings.day_export_grace_s),
    )
    schedule = TieringSchedule(
        pool,
        TieringMetrics(registry),
        schedule_s=settings.schedule_s,
        partitions_ahead_days=settings.partitions_ahead_days,
        dedup_horizon_days=settings.dedup_horizon_days,
        day_export=day_export if "export" in jobs else None,
        tier_jobs=TierJobs(pool, store, TierJobMetrics(registry), jobs=jobs),
        erasure=ErasureJob(
            pool,
            store,
            day_export_settings(settings),
            ErasureMetrics(registry),
            restore_hours=settings.restore_hours,
        ),
    )

    async def postgres_reachable() -> None:
        await pool.fetchval("SELECT 1")

    async def object_store_reachable() -> None:
        await store.exists("strata-readiness-probe")

    health = await start_health_server(
        "0.0.0.0",
        settings.health_port,
        registry,
        schedule.liveness,
        {"postgres": postgres_reachable, "object_store": object_store_reachable},
    )
    log.info("started", health_port=settings.health_port, schedule_s=settings.schedule_s)
    runner = asyncio.create_task(schedule.run())
    await stop_requested.wait()
    log.info("stopping")
    schedule.stop()
    await runner
    await health.cleanup()
    await store.close()
    await pool.close()
    log.info("stopped")


async def _connect(dsn: str, stop_requested: asyncio.Event) -> asyncpg.Pool | None:
    """A pool, retrying while PostgreSQL is not up yet; None when stopped meanwhile."""
    delay = 0.5
    while not stop_requested.is_set():
        try:
            return await create_pool(dsn, min_size=1, max_size=2)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.warning("postgres_unreachable", error=str(exc), retry_in_s=delay)
        try:
            await asyncio.wait_for(stop_requested.wait(), timeout=delay)
        except TimeoutError:
            delay = min(delay * 2, 10.0)
    return None


def main() -> None:
    settings = from_env(TieringSettings)
    parse_tier_jobs(settings.tier_jobs)  # a typo in STRATA_TIER_JOBS stops start-up, named
    configure_logging("tiering", settings.log_format, settings.log_level)
    configure_tracing("tiering", settings.otel_exporter, settings.otel_endpoint)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
