"""`python -m services.aggregator`: consume enriched events into PostgreSQL until SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog
import uvloop
from prometheus_client import CollectorRegistry

from libs.common.db import create_pool, timestamps_as_microseconds
from libs.common.nats_io import connect, ensure_streams
from libs.common.observability import (
    Liveness,
    ReadyCheck,
    configure_logging,
    configure_tracing,
    start_health_server,
)
from libs.common.settings import AggregatorSettings, from_env
from libs.common.subjects import Subjects
from services.aggregator.consumer import Aggregator
from services.aggregator.metrics import AggregatorMetrics


def settle_startup_heap() -> None:
    """Collect startup garbage, then move every surviving object out of the collector's view."""
    # The startup heap (modules, settings, pools) lives until exit: frozen, it is no longer
    # rescanned by every collection the per-event allocations trigger.
    gc.collect()
    gc.freeze()


async def serve(settings: AggregatorSettings) -> None:
    log = structlog.get_logger()
    subjects = Subjects(settings.nats_prefix)
    nc = await connect(settings.nats_url, "strata-aggregator")
    # The aggregator COPYs two timestamps per event and reads none back: integer codecs.
    pool = await create_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.pool_size,
        init=timestamps_as_microseconds,
    )
    try:
        await ensure_streams(nc.jetstream(), subjects, settings.stream_replicas)
        registry = CollectorRegistry()
        # A write may legitimately take up to ack_wait; only a loop stuck longer is dead.
        liveness = Liveness(stall_s=max(60.0, 2 * settings.ack_wait_s))
        aggregator = Aggregator(nc, pool, subjects, settings, AggregatorMetrics(registry), liveness)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, aggregator.stop)
        checks: dict[str, ReadyCheck] = {"aggregator": aggregator.check_ready}
        health = await start_health_server(
            "0.0.0.0", settings.health_port, registry, liveness, checks
        )
        settle_startup_heap()
        log.info("aggregator_started", prefix=settings.nats_prefix, port=settings.health_port)
        try:
            await aggregator.run()
        finally:
            await health.cleanup()
        log.info("aggregator_stopped")
    finally:
        # In-flight batches have committed and acked by now; drain flushes the acks.
        await nc.drain()
        await pool.close()


def main() -> None:
    settings = from_env(AggregatorSettings)
    configure_logging("aggregator", settings.log_format, settings.log_level)
    configure_tracing("aggregator", settings.otel_exporter, settings.otel_endpoint)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
