"""Benchmark: NATS CPU and disk per raw-stream message with and without S2 compression.

Publishes raw-batch-like messages (50 JSON events, about 30 KB) to a stream on an embedded
nats-server, acks pipelined as ingest does, and reads the server process's CPU time and the
stream's stored bytes. The raw stream is purged once the sessionizer checkpoints, so its disk
matters far less than the CPU NATS spends on every message (docs/subjects.md).

    python -m bench.raw_stream [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.js.api import StorageType, StoreCompression, StreamConfig

from libs.common.schemas.events_v1 import EventV1, RawBatchV1, raw_batch_encoder
from strata_dev.embedded import EmbeddedNats

EVENTS_PER_MESSAGE = 50
IN_FLIGHT = 1000


def raw_message(index: int) -> bytes:
    """One raw batch as ingest publishes it: enriched page views of a few persons."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=index)
    events = [
        EventV1(
            event_id=f"{index:08d}-{i:03d}-0a1b2c3d4e5f60718293a4b5",
            project_id="acme",
            type="page",
            name="$pageview",
            ts=t0 + timedelta(milliseconds=i),
            received_at=t0 + timedelta(milliseconds=i),
            distinct_id=f"visitor-{(index * 7 + i) % 997:05d}",
            url=f"https://shop.example.com/products/{(index + i) % 313}?ref=home",
            path=f"/products/{(index + i) % 313}",
            referrer="https://www.google.com/",
            referrer_domain="www.google.com",
            browser="Chrome",
            os="Windows",
            device_type="desktop",
            channel="organic_search",
            country="DE",
            title="Product page",
            user_id=f"user-{(index * 7 + i) % 997:05d}",
            properties={"price": 19.99, "currency": "EUR", "sku": f"SKU-{(index + i) % 313}"},
        )
        for i in range(EVENTS_PER_MESSAGE)
    ]
    return raw_batch_encoder.encode(RawBatchV1(batch_id=f"b{index}", partition=0, events=events))


async def _measure(
    server: EmbeddedNats, compression: StoreCompression, count: int
) -> dict[str, float]:
    assert server.proc is not None
    proc = psutil.Process(server.proc.pid)
    nc = await nats.connect(server.url)
    js = nc.jetstream(publish_async_max_pending=2 * IN_FLIGHT)
    name = f"RAWBENCH_{compression.value.upper()}"
    subject = f"rawbench.{compression.value}"
    await js.add_stream(
        StreamConfig(
            name=name, subjects=[subject], storage=StorageType.FILE, compression=compression
        )
    )
    payloads = [raw_message(i) for i in range(200)]
    before = proc.cpu_times()
    pending = []
    for i in range(count):
        pending.append(
            await js.publish_async(subject, payloads[i % 200], headers={"Nats-Msg-Id": str(i)})
        )
        if len(pending) >= IN_FLIGHT:
            await asyncio.gather(*pending[: IN_FLIGHT // 2])
            del pending[: IN_FLIGHT // 2]
    await asyncio.gather(*pending)
    after = proc.cpu_times()
    await nc.close()
    # The stream's block files on disk (state.bytes counts messages before compression).
    on_disk = sum(
        f.stat().st_size for f in server.data_dir.glob(f"jetstream/**/streams/{name}/msgs/*.blk")
    )
    cpu_s = (after.user + after.system) - (before.user + before.system)
    return {
        "message_bytes": round(sum(map(len, payloads)) / len(payloads)),
        "nats_cpu_us_per_message": round(cpu_s / count * 1e6, 1),
        "stored_bytes_per_event": round(on_disk / (count * EVENTS_PER_MESSAGE)),
    }


def run_benchmark(messages: int = 5000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp)).start()
        try:
            results = {}
            for compression in (StoreCompression.S2, StoreCompression.NONE):
                results[compression.value] = asyncio.run(_measure(server, compression, messages))
                print(f"  raw stream compression={compression.value}: {results[compression.value]}")
            return results
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    run_benchmark(parser.parse_args().messages)


if __name__ == "__main__":
    main()
