"""The sessionizer as a real subprocess (`python -m services.sessionizer`): a graceful restart
does not split sessions, and a kill -9 between checkpoints loses nothing, duplicates nothing
and changes no session id."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from libs.common.schemas.events_v1 import EventV1, RawBatchV1
from libs.common.subjects import Subjects, partition_of
from services.sessionizer.session_window import session_id_for
from tests.support.project import TestProject
from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.sessionizer_streams import (
    enriched_events,
    make_event,
    publish_raw,
    wait_for_enriched,
)

pytestmark = pytest.mark.infra

M = timedelta(minutes=1)


def sessionizer(
    database_url: str, nats_url: str, subjects: Subjects, log_dir: Path, **settings: object
) -> tuple[ServiceProcess, int]:
    port = free_port()
    env = service_env(
        database_url,
        nats_url,
        subjects.prefix,
        health_port=port,
        **settings,  # type: ignore[arg-type]
    )
    return ServiceProcess("sessionizer", env, log_dir), port


async def checkpoints(pool: asyncpg.Pool, subjects: Subjects) -> dict[int, int]:
    rows = await pool.fetch(
        "SELECT partition, stream_seq FROM sessionizer_checkpoints WHERE stream = $1",
        subjects.raw_stream,
    )
    return {r["partition"]: r["stream_seq"] for r in rows}


async def restart_and_expect_each_event_once(
    database_url: str,
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    log_dir: Path,
    settings: dict[str, object],
    expected: dict[str, str],
) -> None:
    """Start the sessionizer again, let it sessionize everything published, stop it cleanly, and
    check the enriched stream holds each expected event once, in its expected session."""
    proc, port = sessionizer(database_url, nats_url, subjects, log_dir, **settings)
    proc.start()
    try:
        proc.wait_http(port)
        await wait_for_enriched(js, subjects, set(expected))
    finally:
        assert proc.stop() == 0, proc.log()
    assert "partition_failed" not in proc.log_path.read_text()
    events = await enriched_events(js, subjects)
    counts = Counter(e.event_id for e in events)
    assert set(counts) == set(expected), "nothing lost, nothing invented"
    assert [eid for eid, n in counts.items() if n != 1] == [], "replays were dropped as duplicates"
    assert {e.event_id: e.session_id for e in events} == expected


async def test_graceful_restart_keeps_the_session_open(
    nats_url: str,
    database_url: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    t0 = now - timedelta(hours=1)
    proc, port = sessionizer(database_url, nats_url, subjects, tmp_path, partitions=2)
    proc.start()
    try:
        proc.wait_http(port)
        [first_seq] = (
            await publish_raw(js, subjects, [make_event("s1", t0, "sam", now)], 2)
        ).values()
        await wait_for_enriched(js, subjects, {"s1"})
    finally:
        assert proc.stop() == 0, proc.log()
    assert "partition_failed" not in proc.log_path.read_text()
    # SIGTERM checkpointed what it had processed.
    assert (await checkpoints(pool, subjects))[partition_of("sam", 2)] == first_seq

    await publish_raw(js, subjects, [make_event("s2", t0 + 10 * M, "sam", now)], 2)
    proc, port = sessionizer(database_url, nats_url, subjects, tmp_path, partitions=2)
    proc.start()
    try:
        proc.wait_http(port)
        events = await wait_for_enriched(js, subjects, {"s1", "s2"})
    finally:
        assert proc.stop() == 0, proc.log()
    assert "partition_failed" not in proc.log_path.read_text()
    assert sorted(e.event_id for e in events) == ["s1", "s2"]
    assert {e.session_id for e in events} == {session_id_for("acme", "sam", "s1")}


async def test_kill9_between_checkpoints_loses_nothing_and_splits_nothing(
    nats_url: str,
    database_url: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    partitions = 2
    persons = [f"v{i:02d}" for i in range(12)]
    assert {partition_of(p, partitions) for p in persons} == {0, 1}
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(hours=4)
    # Checkpoints only every 10 raw messages (never by time): with 25 messages per partition
    # the last 5 are processed and published but not checkpointed when the process dies.
    settings = {
        "partitions": partitions,
        "checkpoint_interval_s": 3600,
        "checkpoint_max_messages": 10,
    }

    expected: dict[str, str] = {}
    first_event: dict[str, str] = {}
    requests: list[list[EventV1]] = []
    for minute in range(25):
        request = []
        for person in persons:
            event_id = f"{person}-{minute}"
            first_event.setdefault(person, event_id)
            expected[event_id] = session_id_for("acme", person, first_event[person])
            request.append(make_event(event_id, t0 + minute * M, person, now))
        requests.append(request)

    proc, port = sessionizer(database_url, nats_url, subjects, tmp_path, **settings)
    proc.start()
    raw_seqs: dict[int, list[int]] = {0: [], 1: []}
    try:
        proc.wait_http(port)
        for request in requests:
            for partition, seq in (await publish_raw(js, subjects, request, partitions)).items():
                raw_seqs[partition].append(seq)
        await wait_for_enriched(js, subjects, set(expected))
    finally:
        proc.kill9()
    stored = await checkpoints(pool, subjects)
    for partition, seqs in raw_seqs.items():
        assert len(seqs) == 25
        # Died after publishing message 25 but with only 20 checkpointed.
        assert stored[partition] == seqs[19], "the kill landed between checkpoints"

    # While it is down: each person comes back 10 minutes after their last event (same
    # session), and every other person once more 45 minutes after that (a new session).
    later: list[EventV1] = []
    for index, person in enumerate(persons):
        event_id = f"{person}-back"
        later.append(make_event(event_id, t0 + 34 * M, person, now))
        expected[event_id] = session_id_for("acme", person, first_event[person])
        if index % 2 == 0:
            gap_id = f"{person}-gap"
            later.append(make_event(gap_id, t0 + 79 * M, person, now))
            expected[gap_id] = session_id_for("acme", person, gap_id)
    await publish_raw(js, subjects, later, partitions)

    await restart_and_expect_each_event_once(
        database_url, nats_url, js, subjects, tmp_path, settings, expected
    )


async def test_a_delivery_that_never_arrives_is_not_checkpointed_past(
    nats_url: str,
    database_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    """A raw message the consumer delivered but the sessionizer never received (in flight on a
    NATS server that died, or pulled by another client) is sessionized anyway: the next delivery
    shows the gap and the partition replays from its checkpoint instead of moving past it."""
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(hours=1)
    settings = {"partitions": 1, "checkpoint_interval_s": 0.5}
    proc, port = sessionizer(database_url, nats_url, subjects, tmp_path, **settings)
    proc.start()
    try:
        proc.wait_http(port)
        await publish_raw(js, subjects, [make_event("e0", t0, "sam", now)], 1)
        await wait_for_enriched(js, subjects, {"e0"})

        # Another client pulls from the sessionizer's own consumer and never acks: whatever
        # it takes is delivered, from JetStream's point of view, and lost to the sessionizer.
        # The sessionizer is paused (SIGSTOP) until its own pull requests (0.25 s here) have
        # expired at the server, so the next message can only go to the other client's.
        thief = await js.pull_subscribe_bind(durable="sessionizer-0", stream=subjects.raw_stream)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.0)
            pull = asyncio.create_task(thief.fetch(1, timeout=10.0))
            await asyncio.sleep(0.2)  # the other client's pull request reaches the server
            await publish_raw(js, subjects, [make_event("e1", t0 + M, "sam", now)], 1)
            [msg] = await pull
        finally:
            proc.proc.send_signal(signal.SIGCONT)
        sent = ["e0", "e1"]
        stolen = [e.event_id for e in msgspec.json.decode(msg.data, type=RawBatchV1).events]
        assert stolen == ["e1"], "the message published while the sessionizer was paused"
        # The next message shows the sessionizer the gap in its deliveries.
        await publish_raw(js, subjects, [make_event("last", t0 + 70 * M, "sam", now)], 1)
        sent.append("last")
        # Well within the consumer's ack wait (60 s): no redelivery brings the stolen one back.
        events = await wait_for_enriched(js, subjects, set(sent), within_s=20)
    finally:
        assert proc.stop() == 0, proc.log()
    assert "raw_delivery_gap" in proc.log_path.read_text()
    # Each event stored once on the enriched stream, the stolen one included.
    assert Counter(e.event_id for e in events) == Counter(sent)


async def test_kill9_resumes_from_a_base_with_changes_stored_on_top(
    nats_url: str,
    database_url: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    """Checkpoints after the first store only the few persons each one changed; a restart
    after kill -9 must resume from the base with those changes applied, or a person's return
    25 minutes after an event only a change holds would start a new session."""
    persons = [f"w{i:02d}" for i in range(100)]
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(hours=4)
    settings = {"partitions": 1, "checkpoint_interval_s": 3600, "checkpoint_max_messages": 5}

    expected: dict[str, str] = {}
    last_minute: dict[str, int] = {}
    requests = [[make_event(f"{p}-0", t0, p, now) for p in persons]]
    for person in persons:
        expected[f"{person}-0"] = session_id_for("acme", person, f"{person}-0")
        last_minute[person] = 0
    # Messages 2-23: two persons each, a minute apart; checkpoints at 5, 10, 15, 20.
    for minute in range(1, 23):
        request = []
        for person in (persons[2 * minute], persons[2 * minute + 1]):
            event_id = f"{person}-{minute}"
            expected[event_id] = session_id_for("acme", person, f"{person}-0")
            last_minute[person] = minute
            request.append(make_event(event_id, t0 + minute * M, person, now))
        requests.append(request)

    proc, port = sessionizer(database_url, nats_url, subjects, tmp_path, **settings)
    proc.start()
    seqs: list[int] = []
    try:
        proc.wait_http(port)
        for request in requests:
            seqs += (await publish_raw(js, subjects, request, 1)).values()
        await wait_for_enriched(js, subjects, set(expected))
    finally:
        proc.kill9()
    assert (await checkpoints(pool, subjects))[0] == seqs[19], "killed between checkpoints"
    changes = await pool.fetchval(
        "SELECT changes FROM sessionizer_checkpoints WHERE stream = $1", subjects.raw_stream
    )
    assert changes >= 1, "the checkpoints after the first stored changes, not the whole state"

    later = []
    for person in persons:
        event_id = f"{person}-back"
        later.append(make_event(event_id, t0 + (last_minute[person] + 25) * M, person, now))
        expected[event_id] = session_id_for("acme", person, f"{person}-0")
    await publish_raw(js, subjects, later, 1)

    await restart_and_expect_each_event_once(
        database_url, nats_url, js, subjects, tmp_path, settings, expected
    )
