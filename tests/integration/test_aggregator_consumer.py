"""The aggregator as a real subprocess on real NATS JetStream and PostgreSQL: every event stored
exactly once across redelivery and kill -9, poison messages dead-lettered with their reason,
the DLQ cap halting the consumer, and replay re-publishing dead letters."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from libs.common.dead_letters import DlqHeader, list_dead_letters, replay_dead_letters
from libs.common.schemas.events_v1 import EnrichedBatchV1, EventV1
from libs.common.subjects import Subjects
from services.aggregator.writer import write_events
from tests.support.recompute import assert_aggregates_match_events, chunks, generate_events
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra

_encode = msgspec.json.Encoder().encode
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def enriched_messages(events: list[EventV1], size: int) -> list[tuple[str, bytes, str]]:
    """(subject, payload, msg id) per batch of one project and event name, as the sessionizer
    publishes them."""
    by_name: dict[str, list[EventV1]] = {}
    for ev in events:
        by_name.setdefault(ev.name, []).append(ev)
    out = []
    for name, evs in sorted(by_name.items()):
        for i, part in enumerate(chunks(evs, size)):
            batch_id = f"{name}-{i}"
            payload = _encode(
                EnrichedBatchV1(batch_id=batch_id, project_id="acme", name=name, events=part)
            )
            out.append((f"acme.{name}", payload, batch_id))
    return out


async def publish(
    js: JetStreamContext, subjects: Subjects, messages: list[tuple[str, bytes, str]]
) -> None:
    for key, payload, msg_id in messages:
        _, name = key.split(".", 1)
        await js.publish(subjects.enriched("acme", name), payload, headers={"Nats-Msg-Id": msg_id})


class Aggregator:
    """One `python -m services.aggregator` subprocess with its health port."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = int(env["STRATA_HEALTH_PORT"])
        self.process = ServiceProcess("aggregator", env, log_dir)

    def start(self, wait_for: str = "/readyz") -> Aggregator:
        self.process.start()
        self.process.wait_http(self.port, wait_for)
        return self

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0


@pytest.fixture
def aggregators(
    database_url: str, nats_url: str, subjects: Subjects, tmp_path: Path
) -> Iterator[Any]:
    started: list[Aggregator] = []

    def make(**settings: Any) -> Aggregator:
        defaults: dict[str, Any] = {
            "health_port": free_port(),
            "ack_wait_s": 2,
            "retry_backoff_max_s": 0.5,
            "fetch_timeout_s": 0.1,
        }
        defaults.update(settings)
        env = service_env(database_url, nats_url, subjects.prefix, **defaults)
        aggregator = Aggregator(env, tmp_path)
        started.append(aggregator)
        return aggregator

    yield make
    for aggregator in started:
        aggregator.process.kill9()


async def wait_for(
    predicate: Any, what: str, within_s: float = 60.0, process: Aggregator | None = None
) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        if process is not None and process.process.proc is not None:
            assert process.process.proc.poll() is None, process.process.log()
        await asyncio.sleep(0.1)
    log = process.process.log() if process is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


async def event_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM events"))


async def dlq_count(js: JetStreamContext, subjects: Subjects) -> int:
    return int((await js.stream_info(subjects.dlq_stream)).state.messages)


async def test_every_event_stored_once_and_sigterm_exits_cleanly(
    js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool, aggregators: Any
) -> None:
    events = generate_events(seed=11, persons=40)
    messages = enriched_messages(events, 7)
    await publish(js, subjects, messages)
    # The same batches again under new message ids: JetStream cannot drop them, the writer must.
    await publish(js, subjects, [(k, p, f"again-{i}") for k, p, i in messages[::3]])
    # A batch already committed by an aggregator that died before acking it.
    async with pool.acquire() as conn:
        await write_events(conn, msgspec.json.decode(messages[0][1], type=EnrichedBatchV1).events)

    aggregator = aggregators().start()
    await wait_for(
        lambda: _equals(event_count(pool), len(events)), "all events", process=aggregator
    )
    await wait_for(lambda: _consumer_idle(js, subjects), "every message acked", process=aggregator)
    assert aggregator.process.stop() == 0
    async with pool.acquire() as conn:
        rows = await assert_aggregates_match_events(conn)
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in events)
    assert await dlq_count(js, subjects) == 0


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _consumer_idle(js: JetStreamContext, subjects: Subjects) -> bool:
    info = await js.consumer_info(subjects.enriched_stream, "aggregator")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_kill9_mid_stream_then_restart_stores_each_event_once(
    js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool, aggregators: Any
) -> None:
    events = generate_events(seed=12, persons=600)
    messages = enriched_messages(events, 5)
    await publish(js, subjects, messages)

    first = aggregators(fetch_batch=10, backlog_fetch_batch=10).start()
    # Kill while it is working through the backlog: some batches committed, some in flight.
    await wait_for(
        lambda: _at_least(event_count(pool), len(events) // 4), "a quarter stored", process=first
    )
    first.process.kill9()
    stored_at_kill = await event_count(pool)
    assert stored_at_kill < len(events), "backlog finished before the kill; make it larger"

    second = aggregators(fetch_batch=10, backlog_fetch_batch=10, health_port=free_port()).start()
    await wait_for(lambda: _equals(event_count(pool), len(events)), "all events", process=second)
    await wait_for(lambda: _consumer_idle(js, subjects), "every message acked", process=second)
    assert second.process.stop() == 0
    async with pool.acquire() as conn:
        rows = await assert_aggregates_match_events(conn)
    assert len({r["event_id"] for r in rows}) == len(rows) == len(events)


async def test_a_backlog_is_drained_in_larger_pulls_each_event_stored_once(
    js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool, aggregators: Any
) -> None:
    """Behind (a backfill, a restart), the aggregator pulls and writes backlog_fetch_batch
    messages at a time instead of fetch_batch: far fewer pulls, the same events, once."""
    events = generate_events(seed=19, persons=300)
    messages = enriched_messages(events, 2)
    assert len(messages) >= 200
    await publish(js, subjects, messages)
    aggregator = aggregators(fetch_batch=5, backlog_fetch_batch=100, writers=1).start()
    await wait_for(
        lambda: _equals(event_count(pool), len(events)), "all events", process=aggregator
    )
    await wait_for(lambda: _consumer_idle(js, subjects), "every message acked", process=aggregator)
    pulls = aggregator.metric("strata_aggregator_batch_seconds_count")
    assert 0 < pulls < len(messages) / 5 / 4, f"{pulls} pulls for {len(messages)} messages"
    assert aggregator.process.stop() == 0
    async with pool.acquire() as conn:
        rows = await assert_aggregates_match_events(conn)
    assert len({r["event_id"] for r in rows}) == len(rows) == len(events)


async def _at_least(value: Any, expected: int) -> bool:
    return bool(await value >= expected)


async def test_poison_messages_go_to_the_dlq_with_their_reason(
    js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool, aggregators: Any
) -> None:
    events = generate_events(seed=13, persons=10)
    good = enriched_messages(events, 10)
    # Valid JSON, but the database rejects it (jsonb cannot hold NUL): a data fault.
    bad_event = msgspec.structs.replace(
        events[0], event_id="e-nul", properties={"note": "a\u0000b"}
    )
    bad_batch = _encode(
        EnrichedBatchV1(batch_id="nul", project_id="acme", name="click", events=[bad_event])
    )
    await publish(js, subjects, good[:2])
    # The sessionizer carries the ingest request's trace; its dead letter keeps it.
    await js.publish(
        subjects.enriched("acme", "click"),
        b"{not json",
        headers={"Nats-Msg-Id": "garbage", "traceparent": TRACEPARENT},
    )
    await publish(
        js,
        subjects,
        [
            ("acme.click", b'{"batch_id": "x", "project_id": "acme"}', "invalid"),
            ("acme.click", bad_batch, "nul"),
        ],
    )
    await publish(js, subjects, good[2:])

    aggregator = aggregators(max_redeliveries=3).start()
    await wait_for(
        lambda: _equals(event_count(pool), len(events)), "good events", process=aggregator
    )
    await wait_for(lambda: _at_least(dlq_count(js, subjects), 3), "3 dead letters")
    await wait_for(lambda: _consumer_idle(js, subjects), "every message settled")

    letters = await list_dead_letters(js, subjects)
    by_reason = sorted(letters, key=lambda d: d.original_seq or 0)
    assert len(by_reason) == 3
    garbage, invalid, nul = by_reason
    assert garbage.reason.startswith("undecodable EnrichedBatchV1: JSON is malformed")
    assert "missing required field `name`" in invalid.reason
    assert (garbage.deliveries, invalid.deliveries) == (1, 1)
    assert "UntranslatableCharacterError" in nul.reason and "after 3 deliveries" in nul.reason
    assert nul.deliveries == 3
    assert {d.original_subject for d in letters} == {subjects.enriched("acme", "click")}
    assert all(d.service == "aggregator" for d in letters)
    stored = await js.get_msg(subjects.dlq_stream, seq=garbage.seq)
    assert stored.data == b"{not json"
    assert (stored.headers or {})["traceparent"] == TRACEPARENT
    assert await pool.fetchval("SELECT count(*) FROM events WHERE event_id = 'e-nul'") == 0
    assert aggregator.readyz()[0] == 200
    assert aggregator.process.stop() == 0
    async with pool.acquire() as conn:
        await assert_aggregates_match_events(conn)


async def test_dlq_cap_halts_the_consumer_instead_of_draining(
    js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool, aggregators: Any
) -> None:
    # A bad deploy: every message looks poison. Only dlq_max_count may reach the DLQ.
    poison = [("acme.click", b"\x00broken", f"p{i}") for i in range(8)]
    await publish(js, subjects, poison)
    # It may halt before it was ever ready: wait for it to be alive only.
    aggregator = aggregators(dlq_max_count=3).start(wait_for="/healthz")
    await wait_for(lambda: _status_is(aggregator, 503), "readyz failing", process=aggregator)
    _, body = aggregator.readyz()
    assert "dlq_max_count=3" in body["failures"]["aggregator"]
    assert await dlq_count(js, subjects) == 3
    await asyncio.sleep(1.0)  # halted for good: nothing more is dead-lettered
    assert await dlq_count(js, subjects) == 3
    info = await js.consumer_info(subjects.enriched_stream, "aggregator")
    assert info.num_pending + info.num_ack_pending == 5
    assert aggregator.metric("strata_aggregator_halted") == 1.0
    assert aggregator.process.stop() == 0


async def _status_is(aggregator: Aggregator, status: int) -> bool:
    return aggregator.readyz()[0] == status


async def test_ratio_cap_applies_once_the_window_is_full(
    js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool, aggregators: Any
) -> None:
    events = generate_events(seed=14, persons=5)
    good = enriched_messages(events, 1)[:6]
    poison = [("acme.click", b"[]", f"p{i}") for i in range(10)]
    await publish(js, subjects, good + poison)
    # One writer, so messages are handled in stream order and the ratio is deterministic.
    aggregator = aggregators(
        dlq_ratio_min_messages=10,
        dlq_max_ratio=0.3,
        fetch_batch=4,
        backlog_fetch_batch=4,
        writers=1,
    ).start(wait_for="/healthz")
    await wait_for(lambda: _status_is(aggregator, 503), "readyz failing", process=aggregator)
    _, body = aggregator.readyz()
    assert "dlq_max_ratio=0.3" in body["failures"]["aggregator"]
    # 6 good + 3 dead = 9 < 10 messages: ratio not applied yet; the 4th would make 4/10 > 0.3.
    assert await dlq_count(js, subjects) == 3
    assert await event_count(pool) == 6
    aggregator.process.stop()


async def test_replay_republishes_dead_letters(
    js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool, aggregators: Any
) -> None:
    events = generate_events(seed=15, persons=6)
    (key, payload, _), *_ = enriched_messages(events, 1000)
    name = key.split(".", 1)[1]
    # A valid batch dead-lettered during an incident, and a garbage one.
    await js.publish(
        subjects.dlq("aggregator"),
        payload,
        headers={
            DlqHeader.REASON: "UndefinedTableError: relation missing (after 5 deliveries)",
            DlqHeader.SERVICE: "aggregator",
            DlqHeader.ORIGINAL_SUBJECT: subjects.enriched("acme", name),
        },
    )
    await publish(js, subjects, [("acme.click", b"garbage", "g")])
    aggregator = aggregators().start()
    await wait_for(lambda: _equals(dlq_count(js, subjects), 2), "two dead letters")

    letters = await list_dead_letters(js, subjects)
    assert [d.reason.split(":")[0] for d in letters] == [
        "UndefinedTableError",
        "undecodable EnrichedBatchV1",
    ]
    assert letters[0].size == len(payload)
    assert await list_dead_letters(js, subjects, limit=1) == letters[:1]

    # Replay only the valid one: its events are stored, the garbage stays.
    assert await replay_dead_letters(js, subjects, [letters[0].seq, 999_999]) == 1
    await wait_for(
        lambda: _equals(event_count(pool), len([e for e in events if e.name == name])),
        "replayed events stored",
        process=aggregator,
    )
    remaining = await list_dead_letters(js, subjects)
    assert [d.seq for d in remaining] == [letters[1].seq]

    # Replay everything: the garbage is re-published, fails again, and is back in the DLQ.
    assert await replay_dead_letters(js, subjects) == 1
    await wait_for(
        lambda: _dlq_seqs_changed(js, subjects, letters[1].seq), "garbage dead-lettered again"
    )
    again = await list_dead_letters(js, subjects)
    assert len(again) == 1 and again[0].reason.startswith("undecodable")
    assert aggregator.process.stop() == 0


async def _dlq_seqs_changed(js: JetStreamContext, subjects: Subjects, old_seq: int) -> bool:
    letters = await list_dead_letters(js, subjects)
    return len(letters) == 1 and letters[0].seq != old_seq


async def test_sigterm_mid_stream_commits_and_acks_what_it_took(
    js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool, aggregators: Any
) -> None:
    events = generate_events(seed=16, persons=400)
    messages = enriched_messages(events, 5)
    await publish(js, subjects, messages)
    aggregator = aggregators(fetch_batch=10, backlog_fetch_batch=10).start()
    await wait_for(
        lambda: _at_least(event_count(pool), len(events) // 4),
        "a quarter stored",
        process=aggregator,
    )
    assert aggregator.process.stop() == 0

    # Everything it was handed was written and acked before exit; nothing else was written.
    info = await js.consumer_info(subjects.enriched_stream, "aggregator")
    assert info.num_ack_pending == 0
    acked = info.ack_floor.stream_seq
    assert acked < len(messages), "backlog finished before SIGTERM; make it larger"
    expected = sum(
        len(msgspec.json.decode(payload, type=EnrichedBatchV1).events)
        for _, payload, _ in messages[:acked]
    )
    assert await event_count(pool) == expected
    async with pool.acquire() as conn:
        await assert_aggregates_match_events(conn)


async def test_lost_database_connections_are_retried_not_dead_lettered(
    js: JetStreamContext,
    subjects: Subjects,
    pool: asyncpg.Pool,
    database_url: str,
    aggregators: Any,
) -> None:
    events = generate_events(seed=17, persons=300)
    await publish(js, subjects, enriched_messages(events, 5))
    aggregator = aggregators(fetch_batch=5, backlog_fetch_batch=5).start()
    killer = await asyncpg.connect(database_url)
    try:
        terminated = 0
        # Bounded: if the aggregator stops making progress, wait_for below reports its log.
        cutting_until = asyncio.get_running_loop().time() + 60
        while (
            await event_count(pool) < len(events)
            and terminated < 20
            and asyncio.get_running_loop().time() < cutting_until
        ):
            # Cut the aggregator's connections mid-batch, as a PostgreSQL restart or failover would.
            terminated += await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' AND state <> 'idle'"
            )
            await asyncio.sleep(0.05)
    finally:
        await killer.close()
    assert terminated > 0
    await wait_for(
        lambda: _equals(event_count(pool), len(events)), "all events", process=aggregator
    )
    await wait_for(lambda: _consumer_idle(js, subjects), "every message acked", process=aggregator)
    assert await dlq_count(js, subjects) == 0
    assert aggregator.process.stop() == 0
    async with pool.acquire() as conn:
        await assert_aggregates_match_events(conn)
