"""The sessionizer in-process against real NATS JetStream and PostgreSQL: raw batches in,
enriched events (each once, with the right session) and session updates out."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from nats.js import JetStreamContext

from libs.common import keys
from libs.common.nats_io import connect
from libs.common.settings import SessionizerSettings
from libs.common.subjects import Subjects, partition_of
from services.sessionizer.service import SessionizerService
from services.sessionizer.session_window import session_id_for
from tests.support.project import TestProject
from tests.support.services import free_port
from tests.support.sessionizer_streams import (
    make_event,
    publish_raw,
    read_subject,
    session_updates,
    wait_for_enriched,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

pytestmark = pytest.mark.infra

PARTITIONS = 4
M = timedelta(minutes=1)


@asynccontextmanager
async def running_sessionizer(
    nats_url: str, database_url: str, pool: asyncpg.Pool, subjects: Subjects, **overrides: object
) -> AsyncIterator[SessionizerService]:
    settings = SessionizerSettings(
        nats_url=nats_url,
        database_url=database_url,
        nats_prefix=subjects.prefix,
        partitions=PARTITIONS,
        checkpoint_interval_s=0.2,
        health_port=free_port(),
        **overrides,  # type: ignore[arg-type]
    )
    nc = await connect(nats_url, "sessionizer-under-test")
    service = SessionizerService(settings, nc, pool, health_host="127.0.0.1")
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(task, timeout=30)
        await nc.drain()


async def test_every_event_is_enriched_once_with_its_session(
    nats_url: str,
    database_url: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
) -> None:
    async with pool.acquire() as conn:
        await keys.ensure_project(conn, "brisk", "Brisk")
        await conn.execute("UPDATE projects SET session_timeout_s = 600 WHERE id = 'brisk'")
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(hours=3)

    def ev(event_id: str, minute: float, person: str, project_id: str = "acme", **kw: object):  # type: ignore[no-untyped-def]
        return make_event(event_id, t0 + minute * M, person, now, project_id, **kw)  # type: ignore[arg-type]

    # Two requests, as a browser SDK flushing its queue twice; persons spread over partitions.
    first_request = [
        ev("a1", 0, "anna"),
        ev("b1", 0, "ben"),
        ev("a2", 10, "anna", name="signup"),
        ev("c1", 5, "cleo", non_interactive=True, name="heartbeat", url="https://acme.test/"),
        ev("k1", 0, "kim", "brisk"),
    ]
    second_request = [
        ev("a3", 50, "anna"),  # 40 min after a2: anna's second session
        ev("b2", 30, "ben"),  # exactly 30:00 after b1: same session
        ev("a0", -5, "anna"),  # late: joins anna's first session
        ev("k2", 15, "kim", "brisk"),  # brisk's timeout is 10 min: a new session
        ev("u1", 1, "anna", "brisk"),  # same distinct id in another project: another person
    ]
    expected = {
        "a1": ("acme", "anna", "a1"),
        "a2": ("acme", "anna", "a1"),
        "a0": ("acme", "anna", "a1"),
        "a3": ("acme", "anna", "a3"),
        "b1": ("acme", "ben", "b1"),
        "b2": ("acme", "ben", "b1"),
        "c1": ("acme", "cleo", "c1"),
        "k1": ("brisk", "kim", "k1"),
        "k2": ("brisk", "kim", "k2"),
        "u1": ("brisk", "anna", "u1"),
    }
    assert len({partition_of(p, PARTITIONS) for p in ("anna", "ben", "cleo", "kim")}) > 1

    async with running_sessionizer(nats_url, database_url, pool, subjects) as service:
        raw_seqs = list((await publish_raw(js, subjects, first_request, PARTITIONS)).values())
        await wait_for_enriched(js, subjects, {"a1", "b1", "a2", "c1", "k1"})
        raw_seqs += (await publish_raw(js, subjects, second_request, PARTITIONS)).values()
        events = await wait_for_enriched(js, subjects, set(expected))

        counts = Counter(e.event_id for e in events)
        assert counts == Counter(set(expected)), "every event exactly once"
        got = {e.event_id: e.session_id for e in events}
        assert got == {eid: session_id_for(*who) for eid, who in expected.items()}
        # Enriched subjects are per project and event name.
        messages = await read_subject(js, subjects.enriched_stream, subjects.enriched_all)
        assert {m.subject for m in messages} == {
            subjects.enriched("acme", "$pageview"),
            subjects.enriched("acme", "signup"),
            subjects.enriched("acme", "heartbeat"),
            subjects.enriched("brisk", "$pageview"),
        }

        await _wait_until(lambda: _checkpointed(pool, subjects, raw_seqs))
        port = service.settings.health_port
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 200, await r.text()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                metrics = await r.text()
        assert "strata_sessionizer_events_total 10.0" in metrics
        assert "strata_sessionizer_sessions_started_total 7.0" in metrics
        # No partition failed and silently restarted from its checkpoint along the way.
        assert "strata_sessionizer_partition_restarts_total{" not in metrics

    # The last session update of each session describes it after everything was seen.
    latest = {}
    for batch in await session_updates(js, subjects):
        for update in batch.sessions:
            latest[(update.project_id, update.session_id)] = update
    anna_first = latest[("acme", session_id_for("acme", "anna", "a1"))]
    assert (anna_first.start, anna_first.end) == (t0 - 5 * M, t0 + 10 * M)
    assert (anna_first.events, anna_first.interactive_events) == (3, 3)
    cleo = latest[("acme", session_id_for("acme", "cleo", "c1"))]
    assert (cleo.events, cleo.interactive_events) == (1, 0)
    assert len(latest) == 7

    # After the final checkpoint the raw consumers' ack floors reached the last raw message.
    async def all_acked() -> bool:
        for partition in {partition_of(p, PARTITIONS) for p in ("anna", "ben", "cleo", "kim")}:
            info = await js.consumer_info(subjects.raw_stream, f"sessionizer-{partition}")
            if info.num_ack_pending or info.num_pending:
                return False
        return True

    await _wait_until(all_acked)

    # ... and the checkpointed messages left the raw stream (their events live on in the
    # enriched stream), while its sequence numbers go on where they were.
    info = await js.stream_info(subjects.raw_stream)
    assert info.state.messages == 0
    assert info.state.last_seq == max(raw_seqs)


async def test_a_poison_raw_message_goes_to_the_dlq_and_the_partition_moves_on(
    nats_url: str,
    database_url: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
) -> None:
    now = datetime.now(UTC)
    person = "dora"
    partition = partition_of(person, PARTITIONS)
    async with running_sessionizer(nats_url, database_url, pool, subjects):
        bad = await js.publish(
            subjects.raw(partition),
            b'{"batch_id": 7}',
            headers={"Nats-Msg-Id": "bad-1", "traceparent": TRACEPARENT},
        )
        await publish_raw(js, subjects, [make_event("d1", now, person, now)], PARTITIONS)
        events = await wait_for_enriched(js, subjects, {"d1"})
        assert [e.event_id for e in events] == ["d1"]
        dead = await read_subject(js, subjects.dlq_stream, subjects.dlq("sessionizer"))
        assert len(dead) == 1
        assert dead[0].data == b'{"batch_id": 7}'
        assert dead[0].headers["Strata-DLQ-Original-Seq"] == str(bad.seq)
        assert dead[0].headers["Strata-DLQ-Original-Subject"] == subjects.raw(partition)
        assert dead[0].headers["Strata-DLQ-Original-Stream"] == subjects.raw_stream
        assert "undecodable raw batch" in dead[0].headers["Strata-DLQ-Reason"]
        # The ingest request's trace still leads to its dead letter.
        assert dead[0].headers["traceparent"] == TRACEPARENT


async def test_the_dead_letter_cap_halts_the_partition_instead_of_draining_it(
    nats_url: str,
    database_url: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
) -> None:
    now = datetime.now(UTC)
    person = "dora"
    partition = partition_of(person, PARTITIONS)
    # The aggregator's cap, from the same settings: two dead letters, and the third halts.
    async with running_sessionizer(nats_url, database_url, pool, subjects, dlq_max_count=2):
        for i in range(3):
            await js.publish(
                subjects.raw(partition), b'{"batch_id": 7}', headers={"Nats-Msg-Id": f"bad-{i}"}
            )
        await publish_raw(js, subjects, [make_event("d1", now, person, now)], PARTITIONS)
        await asyncio.sleep(2.0)  # the partition retries; the third stays in the stream
        dead = await read_subject(js, subjects.dlq_stream, subjects.dlq("sessionizer"))
        assert len(dead) == 2
        enriched = await read_subject(js, subjects.enriched_stream, subjects.enriched_all)
        assert enriched == []


async def _checkpointed(pool: asyncpg.Pool, subjects: Subjects, raw_seqs: list[int]) -> bool:
    stored = await pool.fetchval(
        "SELECT max(stream_seq) FROM sessionizer_checkpoints WHERE stream = $1",
        subjects.raw_stream,
    )
    return bool(stored == max(raw_seqs))


async def _wait_until(
    check: Callable[[], object], within_s: float = 30.0, interval: float = 0.1
) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
