"""Cross-request coalescing in the ingest publisher, against real NATS JetStream and PostgreSQL:
concurrent requests' events for one person partition share raw messages, every request is
answered only after the messages holding its events were acknowledged, a failed message fails
exactly the requests whose events it held, and a person's events keep their order."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.common.nats_io import connect
from libs.common.schemas.events_v1 import RawBatchV1, raw_batch_decoder
from libs.common.settings import IngestSettings
from libs.common.subjects import Subjects, partition_of
from services.ingest.app import IngestDeps, build_app
from services.ingest.publishing import message_id
from tests.support.project import TestProject

pytestmark = pytest.mark.infra

PARTITIONS = 4


class Gateway:
    """An in-process ingest app and what reached its raw stream."""

    def __init__(self, client: TestClient[Any, Any], js: JetStreamContext, subjects: Subjects):
        self.client = client
        self.js = js
        self.subjects = subjects

    async def send(self, key: str, items: list[dict[str, Any]]) -> ClientResponse:
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        return await self.client.post(
            "/v1/batch", data=json.dumps({"batch": items}), headers={"Authorization": auth}
        )

    async def raw_messages(self) -> list[tuple[str, dict[str, str], bytes, RawBatchV1]]:
        """Every raw message in stream order: (subject, headers, payload, batch)."""
        info = await self.js.stream_info(self.subjects.raw_stream)
        found: list[tuple[str, dict[str, str], bytes, RawBatchV1]] = []
        if info.state.messages == 0:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(self.subjects.raw_stream, seq)
            assert msg.subject is not None and msg.data is not None
            headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
            found.append((msg.subject, headers, msg.data, raw_batch_decoder.decode(msg.data)))
        return found


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(
    nats_url: str, js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool
) -> AsyncIterator[StartGateway]:
    started: list[tuple[TestClient[Any, Any], NATS]] = []

    async def start(**overrides: Any) -> Gateway:
        settings = IngestSettings(
            nats_prefix=subjects.prefix, partitions=PARTITIONS, publish_timeout_s=5.0, **overrides
        )
        nc = await connect(nats_url, "ingest-coalescing-test")
        app = build_app(settings, IngestDeps(nc, pool, subjects, CollectorRegistry()))
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        started.append((client, nc))
        return Gateway(client, js, subjects)

    yield start
    for client, nc in started:
        await client.close()
        await nc.close()


def person_in(partition: int, tag: str) -> str:
    """A distinct id that lands in `partition`."""
    n = 0
    while partition_of(f"{tag}-{n}", PARTITIONS) != partition:
        n += 1
    return f"{tag}-{n}"


def steps(person: str, count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "anonymousId": person,
            "event": f"step-{step}",
            "messageId": f"{prefix}-{person}-{step}",
        }
        for step in range(count)
    ]


async def test_concurrent_requests_share_one_message_per_partition_in_order(
    start_gateway: StartGateway, project: TestProject
) -> None:
    # A long linger so every request below is in flight before the messages close.
    gateway = await start_gateway(publish_linger_s=2.0)
    key = project.write_key
    warm = await gateway.send(key, steps("warm-up", 1, "w"))  # key lookup cached from here on
    assert warm.status == 200
    before = len(await gateway.raw_messages())

    requests = []
    for r in range(12):
        people = [f"r{r}-p{i}" for i in range(3)]
        # Persons interleaved inside the request: each person's steps must stay in order.
        items = [item for s in range(4) for item in (steps(p, 4, f"r{r}")[s] for p in people)]
        requests.append(items)
    responses = await asyncio.gather(*(gateway.send(key, items) for items in requests))
    assert [r.status for r in responses] == [200] * 12
    assert [(await r.json())["accepted"] for r in responses] == [12] * 12

    messages = (await gateway.raw_messages())[before:]
    touched = {
        partition_of(item["anonymousId"], PARTITIONS) for items in requests for item in items
    }
    assert len(messages) == len(touched)  # 12 requests, one message per partition
    sent = {item["messageId"] for items in requests for item in items}
    stored = [event.event_id for *_, raw in messages for event in raw.events]
    assert sorted(stored) == sorted(sent)  # every event once
    for subject, headers, _, raw in messages:
        assert subject == gateway.subjects.raw(raw.partition)
        assert headers["Nats-Msg-Id"] == raw.batch_id
        # The id kept from the requests' event ids is the one the events themselves give (a
        # retry coalesced the same way is deduplicated whichever process publishes it).
        assert raw.batch_id == message_id(raw.events)
        assert {partition_of(e.distinct_id, PARTITIONS) for e in raw.events} == {raw.partition}
        by_person: dict[str, list[str]] = {}
        for event in raw.events:
            by_person.setdefault(event.distinct_id, []).append(event.name)
        assert all(names == [f"step-{s}" for s in range(4)] for names in by_person.values())
        # One request's events stay contiguous: the request tags change only between runs.
        tags = [event.event_id.split("-")[0] for event in raw.events]
        runs = [tag for i, tag in enumerate(tags) if i == 0 or tags[i - 1] != tag]
        assert len(runs) == len(set(runs))


async def test_full_messages_go_out_at_once_and_keep_a_persons_order(
    start_gateway: StartGateway, project: TestProject
) -> None:
    # The linger is far longer than the test: only full messages can be what answers it.
    gateway = await start_gateway(publish_linger_s=60.0, publish_max_message_events=10)
    person = person_in(1, "long")
    response = await asyncio.wait_for(gateway.send(project.write_key, steps(person, 30, "m")), 30)
    assert response.status == 200
    messages = await gateway.raw_messages()
    assert [len(raw.events) for *_, raw in messages] == [10, 10, 10]
    assert [e.name for *_, raw in messages for e in raw.events] == [f"step-{s}" for s in range(30)]


async def test_messages_stay_within_the_byte_limit(
    start_gateway: StartGateway, project: TestProject
) -> None:
    gateway = await start_gateway(publish_linger_s=0.05, publish_max_message_bytes=4096)
    person = person_in(2, "big")
    items = steps(person, 40, "b")
    for item in items:
        item["properties"] = {"note": "x" * 300}
    response = await gateway.send(project.write_key, items)
    assert response.status == 200
    messages = await gateway.raw_messages()
    assert len(messages) > 1
    assert all(len(payload) <= 4096 for _, _, payload, _ in messages)
    assert [e.name for *_, raw in messages for e in raw.events] == [f"step-{s}" for s in range(40)]


async def test_a_refused_message_fails_exactly_the_requests_whose_events_it_held(
    start_gateway: StartGateway, project: TestProject, js: JetStreamContext, subjects: Subjects
) -> None:
    gateway = await start_gateway(publish_linger_s=1.0)
    key = project.write_key
    assert (await gateway.send(key, steps(person_in(3, "warm"), 1, "w"))).status == 200
    # JetStream refuses messages over 4 KB: a message holding the big request is refused.
    info = await js.stream_info(subjects.raw_stream)
    config = info.config
    config.max_msg_size = 4096
    await js.update_stream(config)
    before = len(await gateway.raw_messages())

    big = steps(person_in(0, "big"), 30, "big")  # ~20 KB once enriched
    small_beside_big = steps(person_in(0, "beside"), 1, "beside")  # same partition as big
    small_elsewhere = steps(person_in(1, "elsewhere"), 1, "elsewhere")
    responses = await asyncio.gather(
        gateway.send(key, big),
        gateway.send(key, small_beside_big),
        gateway.send(key, small_elsewhere),
    )
    assert [r.status for r in responses] == [503, 503, 200]
    for refused in responses[:2]:
        assert refused.headers["Retry-After"] == "2"
        error = (await refused.json())["error"]
        assert error.startswith("events not accepted: JetStream refused the message: "), error
    stored = [e.event_id for *_, raw in (await gateway.raw_messages())[before:] for e in raw.events]
    assert stored == [small_elsewhere[0]["messageId"]]
