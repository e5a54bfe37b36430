"""A client's retry that ingest coalesces with other requests differently than the first time
gets new raw message ids, so JetStream's dedup window does not drop it: the events reach the
raw stream twice. End to end (ingest -> sessionizer -> aggregator processes) they must still be
stored once, with aggregates equal to a recomputation from the stored events."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from nats.js import JetStreamContext

from libs.common.schemas.events_v1 import raw_batch_decoder
from libs.common.subjects import Subjects
from tests.support.project import TestProject
from tests.support.recompute import assert_aggregates_match_events
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra


def pageviews(visitors: list[str], start: datetime) -> list[dict[str, Any]]:
    return [
        {
            "type": "page",
            "anonymousId": visitor,
            "messageId": str(uuid.uuid4()),
            "timestamp": (start + timedelta(minutes=step)).isoformat(),
            "properties": {"path": f"/p{step}", "url": f"https://acme.test/p{step}"},
        }
        for visitor in visitors
        for step in range(3)
    ]


async def send(http: aiohttp.ClientSession, url: str, key: str, items: list[Any]) -> int:
    async with http.post(
        f"{url}/v1/batch",
        json={"batch": items},
        headers={"Authorization": aiohttp.encode_basic_auth(key, "")},
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return int(body["accepted"])


async def raw_event_ids(js: JetStreamContext, subjects: Subjects) -> list[str]:
    info = await js.stream_info(subjects.raw_stream)
    ids: list[str] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.raw_stream, seq)
        assert msg.data is not None
        ids.extend(event.event_id for event in raw_batch_decoder.decode(msg.data).events)
    return ids


async def test_a_retry_coalesced_differently_is_stored_once(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
) -> None:
    ports = {name: free_port() for name in ("ingest", "sessionizer", "aggregator")}
    base_env = service_env(database_url, nats_url, subjects.prefix, partitions=4)
    extra: dict[str, dict[str, Any]] = {
        # A linger long enough that concurrent requests below share messages.
        "ingest": {"ingest_port": ports["ingest"], "publish_linger_s": 0.5},
        # No checkpoint within the test, so the sessionizer does not purge the raw messages
        # this test reads back (it purges what it has checkpointed).
        "sessionizer": {"health_port": ports["sessionizer"], "checkpoint_interval_s": 600},
        "aggregator": {"health_port": ports["aggregator"]},
    }
    procs: dict[str, ServiceProcess] = {}
    try:
        for name, settings in extra.items():
            env = dict(base_env, **{f"STRATA_{k.upper()}": str(v) for k, v in settings.items()})
            procs[name] = ServiceProcess(name, env, tmp_path).start()
        await asyncio.gather(*(asyncio.to_thread(procs[n].wait_http, ports[n]) for n in procs))
        url = f"http://127.0.0.1:{ports['ingest']}"
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        first = pageviews([f"first-{i}" for i in range(8)], start)
        other = pageviews([f"other-{i}" for i in range(8)], start)
        async with aiohttp.ClientSession() as http:
            assert await send(http, url, project.write_key, first) == len(first)
            # The SDK never saw the answer and retries while another batch arrives.
            accepted = await asyncio.gather(
                send(http, url, project.write_key, first),
                send(http, url, project.write_key, other),
            )
        assert list(accepted) == [len(first), len(other)]

        # The scenario under test: the retry was not dropped at publish.
        on_stream = await raw_event_ids(js, subjects)
        retried = [event_id for event_id in on_stream if on_stream.count(event_id) > 1]
        assert retried, "the retry was coalesced exactly as before; nothing to deduplicate"

        expected = {item["messageId"] for item in first + other}
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(300):
                if await conn.fetchval("SELECT count(*) FROM events") >= len(expected):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # a double count would land by now
            ids = [r["event_id"] for r in await conn.fetch("SELECT event_id FROM events")]
            assert sorted(ids) == sorted(expected)
            await assert_aggregates_match_events(conn)
        finally:
            await conn.close()
    finally:
        for proc in procs.values():
            proc.stop()
