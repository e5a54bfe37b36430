"""Benchmark: the raw ceiling of this machine for Strata's write path — the same hops without
Strata's work. An aiohttp process takes the same 100-event `/v1/batch` requests the pipeline
bench sends, decodes them into msgspec Structs and publishes one JetStream message per request
(answering after the ack); a consumer process pulls those messages and COPYs (binary) their
events into one PostgreSQL table, acking after the commit. No validation, enrichment, sessions,
dedup, indexes or rollups: what is left is HTTP, JetStream, and PostgreSQL's COPY.

Both servers are embedded (same settings as `strata up`) and everything shares this machine's
cores with the load generator, as in bench.pipeline; the pipeline bench runs this first and
prints the ratio of its stored events/s to this one's.

    python -m bench.raw_ceiling [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import socket
import tempfile
import time
from datetime import datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import nats
from aiohttp import web
from nats.js.api import StreamConfig

from strata_dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port

STREAM = "RAWCEILING"
SUBJECT = "rawceiling.events"
PROJECT = "raw"
FETCH = 40  # messages per pull: 4,000 events, the aggregator's batch size
_CREATE_TABLE = """
CREATE TABLE raw_events (
    project_id text NOT NULL,
    event_id text NOT NULL,
    distinct_id text NOT NULL,
    ts timestamptz NOT NULL,
    name text NOT NULL,
    properties jsonb NOT NULL
)
"""
_COLUMNS = ("project_id", "event_id", "distinct_id", "ts", "name", "properties")


class _InEvent(msgspec.Struct, kw_only=True):
    messageId: str  # the wire format's names
    anonymousId: str = ""
    timestamp: datetime
    event: str = "$pageview"
    properties: msgspec.Raw = msgspec.Raw(b"{}")


class _InBatch(msgspec.Struct):
    batch: list[_InEvent]


class _Row(msgspec.Struct, array_like=True):
    event_id: str
    distinct_id: str
    ts: datetime
    name: str
    properties: str


def _serve(nats_url: str, port: int) -> None:
    """The HTTP → JetStream process: one message per request, 200 after JetStream's ack."""
    decode = msgspec.json.Decoder(_InBatch).decode
    encode = msgspec.msgpack.Encoder().encode

    async def main() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()

        async def batch(request: web.Request) -> web.Response:
            try:
                body = decode(await request.read())
            except msgspec.ValidationError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            rows = [
                _Row(e.messageId, e.anonymousId, e.timestamp, e.event, bytes(e.properties).decode())
                for e in body.batch
            ]
            await js.publish(SUBJECT, encode(rows))
            return web.json_response({"success": True})

        app = web.Application()
        app.router.add_post("/v1/batch", batch)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def _copy(nats_url: str, database_url: str, stored: Synchronized[int]) -> None:
    """The JetStream → PostgreSQL process: pull, COPY in one transaction, ack after commit."""
    decode = msgspec.msgpack.Decoder(list[_Row]).decode

    async def main() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        sub = await js.pull_subscribe(SUBJECT, durable="copy", stream=STREAM)
        conn = await asyncpg.connect(database_url)
        while True:
            try:
                msgs = await sub.fetch(FETCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            records = [
                (PROJECT, r.event_id, r.distinct_id, r.ts, r.name, r.properties)
                for m in msgs
                for r in decode(m.data)
            ]
            async with conn.transaction():
                await conn.copy_records_to_table("raw_events", records=records, columns=_COLUMNS)
            await asyncio.gather(*(m.ack() for m in msgs))
            with stored.get_lock():
                stored.value += len(records)

    asyncio.run(main())


async def _offer_and_count(
    url: str, seconds: float, stored: Synchronized[int]
) -> tuple[int, list[tuple[float, int]]]:
    # The pipeline bench's loader, so both paths see the same requests (imported here: the
    # pipeline bench imports this module).
    from bench.pipeline import offer_load

    auth = "Basic " + base64.b64encode(b"raw:").decode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        t0 = time.monotonic()
        load = asyncio.create_task(offer_load(http, url, auth, seconds, None, 32))
        marks: list[tuple[float, int]] = []
        while not load.done():
            await asyncio.sleep(1.0)
            marks.append((time.monotonic() - t0, stored.value))
        accepted, _failed = load.result()
    return accepted, marks


def run_benchmark(seconds: float = 10.0) -> dict[str, Any]:
    """Stored events/s of the raw path at saturation (steady second half of the run)."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="strata-bench-raw-") as tmp:
        nats_server = EmbeddedNats(Path(tmp) / "nats").start()
        postgres = EmbeddedPostgres(Path(tmp) / "pg").start()
        procs: list[multiprocessing.process.BaseProcess] = []
        try:

            async def prepare() -> None:
                conn = await asyncpg.connect(postgres.url)
                await conn.execute(_CREATE_TABLE)
                await conn.close()
                nc = await nats.connect(nats_server.url)
                await nc.jetstream().add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT]))
                await nc.close()

            asyncio.run(prepare())
            stored: Synchronized[int] = ctx.Value("q", 0)
            port = free_port()
            procs.append(ctx.Process(target=_serve, args=(nats_server.url, port), daemon=True))
            procs.append(
                ctx.Process(target=_copy, args=(nats_server.url, postgres.url, stored), daemon=True)
            )
            for proc in procs:
                proc.start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the raw path's HTTP server did not start") from None
                    time.sleep(0.1)
            accepted, marks = asyncio.run(
                _offer_and_count(f"http://127.0.0.1:{port}/v1/batch", seconds, stored)
            )
            half = [m for m in marks if m[0] >= seconds / 2]
            if len(half) >= 2:
                rate = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0])
            else:
                rate = marks[-1][1] / marks[-1][0]
            return {
                "accepted_events_per_s": round(accepted / seconds),
                "stored_events_per_s": round(rate),
            }
        finally:
            for proc in procs:
                proc.terminate()
                proc.join(10)
            postgres.stop()
            nats_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(run_benchmark(args.seconds), indent=2))


if __name__ == "__main__":
    main()
