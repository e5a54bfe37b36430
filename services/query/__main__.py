"""`python -m services.query`: the analytics query API on STRATA_QUERY_PORT."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import structlog
import uvloop
from aiohttp import web

from libs.common.day_files import DayFileCache
from libs.common.db import create_pool
from libs.common.nats_io import connect, ensure_streams
from libs.common.object_store import (
    ObjectStore,
    ObjectStoreOptions,
    default_store_url,
    open_object_store,
)
from libs.common.observability import configure_logging, configure_tracing
from libs.common.settings import QuerySettings, from_env
from libs.common.subjects import Subjects
from services.query.app import build_app
from services.query.dependencies import QueryDeps
from services.query.freed_memory import keep_freed_memory
from services.query.scan_engine import ScanEngine
from services.query.warm_up import warm_caches

log = structlog.get_logger("query")


async def _connect_postgres(dsn: str, size: int, stop: asyncio.Event) -> asyncpg.Pool | None:
    """A pool, retrying while PostgreSQL is not up yet; None when stopped meanwhile."""
    delay = 0.5
    while not stop.is_set():
        try:
            return await create_pool(dsn, min_size=1, max_size=size)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.warning("postgres_unreachable", error=str(exc), retry_in_s=delay)
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            delay = min(delay * 2, 10.0)
    return None


def _object_store(settings: QuerySettings) -> ObjectStore:
    """The store the tiering service writes day files to (same variables, same default)."""
    return open_object_store(
        settings.object_store or default_store_url(settings.data_dir),
        ObjectStoreOptions(
            threads=settings.object_store_threads,
            # Restores the query service starts (archived days) take this long on file://.
            file_restore_delay_s=settings.file_restore_delay_s,
            oci_auth=settings.oci_auth,
            oci_config_file=settings.oci_config_file,
            oci_profile=settings.oci_profile,
            oci_endpoint=settings.oci_endpoint,
        ),
    )


def _scan_engine(settings: QuerySettings, store: ObjectStore) -> ScanEngine:
    cache_dir = settings.day_file_cache_dir or str(Path(settings.data_dir) / "cache" / "day-files")
    return ScanEngine(
        DayFileCache(Path(cache_dir), settings.day_file_cache_bytes, store),
        threads=settings.duckdb_threads,
        memory_limit=settings.duckdb_memory_limit,
        hot_rows_cache_bytes=settings.hot_rows_cache_bytes,
        column_cache_bytes=settings.column_cache_bytes,
        temp_directory=str(Path(settings.data_dir) / "duckdb-tmp"),
    )


async def serve(settings: QuerySettings) -> None:
    """Serve until SIGTERM/SIGINT, then end live streams, drain NATS and close the pool."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    keep_freed_memory(settings.query_keep_freed_bytes)
    pool = await _connect_postgres(settings.database_url, settings.pool_size, stop)
    if pool is None:
        return
    nc = await connect(settings.nats_url, "strata-query")
    subjects = Subjects(settings.nats_prefix)
    await ensure_streams(nc.jetstream(), subjects, settings.stream_replicas)
    store = _object_store(settings)
    scan_engine = _scan_engine(settings, store)
    deps = QueryDeps(
        pool=pool,
        nc=nc,
        subjects=subjects,
        scan_engine=scan_engine,
        analysis_threads=settings.analysis_threads,
    )
    app = build_app(settings, deps)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.query_port).start()
    log.info("started", port=settings.query_port, prefix=settings.nats_prefix)
    warming = asyncio.create_task(warm_caches(deps, settings.query_warm_days), name="warm-up")
    await stop.wait()
    log.info("stopping")
    warming.cancel()
    await asyncio.gather(warming, return_exceptions=True)
    await runner.cleanup()  # closes live streams (on_shutdown), then waits for requests
    await nc.drain()
    scan_engine.close()
    await store.close()
    await pool.close()
    log.info("stopped")


def main() -> None:
    settings = from_env(QuerySettings)
    configure_logging("query", settings.log_format, settings.log_level)
    configure_tracing("query", settings.otel_exporter, settings.otel_endpoint)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
