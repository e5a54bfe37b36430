"""The ingest app in-process for the browser tracker's tests, and reading what reached the raw
stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.common.nats_io import connect
from libs.common.schemas.events_v1 import EventV1, raw_batch_decoder
from libs.common.settings import IngestSettings
from libs.common.subjects import Subjects
from services.ingest.app import IngestDeps, build_app

PARTITIONS = 2


@dataclass
class RunningIngest:
    client: TestClient[Any, Any]
    nc: NATS
    js: JetStreamContext
    subjects: Subjects

    @property
    def origin(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def raw_events(self) -> list[EventV1]:
        """Every event on the raw stream, in stream order."""
        info = await self.js.stream_info(self.subjects.raw_stream)
        events: list[EventV1] = []
        if info.state.messages == 0:
            return events
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(self.subjects.raw_stream, seq)
            assert msg.data is not None
            events.extend(raw_batch_decoder.decode(msg.data).events)
        return events

    async def wait_for_events(
        self, arrived: Callable[[list[EventV1]], bool], timeout_s: float = 30.0
    ) -> list[EventV1]:
        """The raw stream's events once `arrived` holds for them (fails after `timeout_s`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            events = await self.raw_events()
            if arrived(events):
                return events
            if loop.time() > deadline:
                names = sorted({event.name for event in events})
                raise AssertionError(f"expected events did not arrive; got {names}")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.client.close()
        await self.nc.close()


async def start_ingest(
    nats_url: str, js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool
) -> RunningIngest:
    """An ingest app on a loopback port, publishing under the test's prefix."""
    settings = IngestSettings(
        nats_prefix=subjects.prefix, partitions=PARTITIONS, key_cache_ttl_s=0.3
    )
    nc = await connect(nats_url, "ingest-tracker-test")
    app = build_app(settings, IngestDeps(nc, pool, subjects, CollectorRegistry()))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return RunningIngest(client, nc, js, subjects)
