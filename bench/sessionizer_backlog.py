"""Benchmark: drain a raw-stream backlog through the sessionizer alone and print the
sessionizer's and NATS's CPU per event.

An embedded nats-server and PostgreSQL (migrated; the checkpoints live there) hold a backlog of
raw messages (50 events each, spread over the partitions); the sessionizer service then runs
in this process until every event is enriched and checkpointed. CPU is this process's CPU time
and the nats-server process's, from the start of the drain to its end. The WAL is what
PostgreSQL wrote meanwhile (pg_current_wal_lsn before and after; only the checkpoints write),
per checkpoint and per event.

    python -m bench.sessionizer_backlog [--messages 2000] [--partitions 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import nats
import psutil

from bench.raw_stream import EVENTS_PER_MESSAGE, raw_message
from libs.common.db import migrate
from libs.common.nats_io import ensure_streams
from libs.common.observability import configure_logging
from libs.common.settings import SessionizerSettings
from libs.common.subjects import Subjects
from services.sessionizer.service import SessionizerService
from strata_dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port


async def _drain(
    nats_server: EmbeddedNats, pg_url: str, messages: int, partitions: int
) -> dict[str, Any]:
    assert nats_server.proc is not None
    nats_proc = psutil.Process(nats_server.proc.pid)
    subjects = Subjects("bench")
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await ensure_streams(js, subjects)
    payloads = [raw_message(i) for i in range(200)]
    pending = []
    for i in range(messages):
        pending.append(await js.publish_async(subjects.raw(i % partitions), payloads[i % 200]))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)

    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    settings = SessionizerSettings(
        nats_url=nats_server.url,
        database_url=pg_url,
        nats_prefix=subjects.prefix,
        partitions=partitions,
        health_port=free_port(),
    )
    service = SessionizerService(settings, nc, pool, health_host="127.0.0.1")
    wal_before = await pool.fetchval("SELECT pg_current_wal_lsn()")
    events = messages * EVENTS_PER_MESSAGE
    nats_before = nats_proc.cpu_times()
    cpu_before = time.process_time()
    started = time.monotonic()
    running = asyncio.create_task(service.run())
    while service.metrics.events._value.get() < events:
        if running.done():
            running.result()
        await asyncio.sleep(0.02)
    service.stop()
    await running  # the final checkpoint is part of the drain
    elapsed = time.monotonic() - started
    cpu_s = time.process_time() - cpu_before
    nats_after = nats_proc.cpu_times()
    nats_s = (nats_after.user + nats_after.system) - (nats_before.user + nats_before.system)
    wal_bytes = int(await pool.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", wal_before))
    await pool.close()  # its backends flush their table statistics as they exit
    conn = await asyncpg.connect(pg_url)
    await asyncio.sleep(1.0)
    checkpoints = int(
        await conn.fetchval(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables"
            " WHERE relname = 'sessionizer_checkpoints'"
        )
    )
    await conn.close()
    await nc.close()
    return {
        "events": events,
        "sessionizer_cpu_us_per_event": round(cpu_s / events * 1e6, 1),
        "nats_cpu_us_per_event": round(nats_s / events * 1e6, 1),
        "events_per_s_wall": round(events / elapsed),
        "checkpoints": checkpoints,
        "wal_bytes_per_checkpoint": round(wal_bytes / max(1, checkpoints)),
        "wal_bytes_per_event": round(wal_bytes / events, 1),
    }


def run_benchmark(messages: int = 2000, partitions: int = 4) -> dict[str, Any]:
    configure_logging("sessionizer", "json", "info")  # as deployed: no per-batch debug lines
    with tempfile.TemporaryDirectory() as tmp:
        nats_server = EmbeddedNats(Path(tmp) / "nats").start()
        postgres = EmbeddedPostgres(Path(tmp) / "pg").start()
        try:
            result = asyncio.run(_drain(nats_server, postgres.url, messages, partitions))
            print(f"  sessionizer backlog: {result}", flush=True)
            return result
        finally:
            postgres.stop()
            nats_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    run_benchmark(args.messages, args.partitions)


if __name__ == "__main__":
    main()
