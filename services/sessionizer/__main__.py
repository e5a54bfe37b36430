"""`python -m services.sessionizer`: sessionize the raw stream's partitions this instance owns."""

from __future__ import annotations

import asyncio
import signal

import uvloop

from libs.common import db
from libs.common.nats_io import connect
from libs.common.observability import configure_logging, configure_tracing
from libs.common.settings import SessionizerSettings, from_env
from services.sessionizer.service import SessionizerService


async def main(settings: SessionizerSettings) -> None:
    nc = await connect(settings.nats_url, "strata-sessionizer")
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        service = SessionizerService(settings, nc, pool)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()
    finally:
        # Partitions have checkpointed and acked by now; drain flushes those acks.
        await nc.drain()
        await pool.close()


if __name__ == "__main__":
    config = from_env(SessionizerSettings)
    configure_logging("sessionizer", config.log_format, config.log_level)
    configure_tracing("sessionizer", config.otel_exporter, config.otel_endpoint)
    uvloop.run(main(config))
