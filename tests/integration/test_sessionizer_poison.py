"""The sessionizer sets aside only the events it cannot handle: an undecodable event, or one the
sessionizing step fails on, goes to the DLQ alone with its reason while the rest of its raw
message is sessionized; after the cause is fixed, a replay sessionizes it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from libs.common.dead_letters import list_dead_letters, replay_dead_letters
from libs.common.schemas.events_v1 import RawBatchV1
from libs.common.subjects import Subjects, partition_of
from tests.integration.test_sessionizer_inprocess import PARTITIONS, running_sessionizer
from tests.support.project import TestProject
from tests.support.sessionizer_streams import make_event, read_subject, wait_for_enriched

pytestmark = pytest.mark.infra


async def test_only_the_bad_events_of_a_raw_message_are_dead_lettered(
    nats_url: str,
    database_url: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
) -> None:
    # A project whose sessions end at local midnight, in UTC+14: an event at the calendar's
    # end has no local day, so sessionizing it fails (a data fault ingest would have refused).
    await pool.execute(
        "UPDATE projects SET timezone = 'Pacific/Kiritimati', session_split_midnight = true"
        " WHERE id = 'acme'"
    )
    now = datetime.now(UTC)
    person = "dora"
    partition = partition_of(person, PARTITIONS)
    edge = datetime(9999, 12, 31, 20, tzinfo=UTC)
    events = [
        make_event("good-1", now - timedelta(minutes=2), person, now),
        make_event("edge", edge, person, now),
        make_event("good-2", now - timedelta(minutes=1), person, now),
        make_event("naive", now, person, now),
        make_event("good-3", now, person, now),
    ]
    payload = msgspec.json.encode(RawBatchV1(batch_id="mixed", partition=partition, events=events))
    # The fourth event's time lost its zone: that event, not its message, is undecodable.
    naive_ts = now.isoformat().replace("+00:00", "")
    payload = payload.replace(
        b'"event_id":"naive","project_id":"acme","type":"page","name":"$pageview","ts":"'
        + now.isoformat().replace("+00:00", "Z").encode(),
        b'"event_id":"naive","project_id":"acme","type":"page","name":"$pageview","ts":"'
        + naive_ts.encode(),
    )
    assert naive_ts.encode() in payload
    ack = await js.publish(subjects.raw(partition), payload, headers={"Nats-Msg-Id": "mixed"})

    async with running_sessionizer(nats_url, database_url, pool, subjects, project_refresh_s=0.2):
        enriched = await wait_for_enriched(js, subjects, {"good-1", "good-2", "good-3"})
        assert sorted(e.event_id for e in enriched) == ["good-1", "good-2", "good-3"]
        assert len({e.session_id for e in enriched}) == 1
        letters = await list_dead_letters(js, subjects)
        assert sorted((d.event_id or "", d.original_seq) for d in letters) == [
            ("edge", ack.seq),
            ("naive", ack.seq),
        ]
        by_event = {d.event_id: d for d in letters}
        assert "sessionizing failed: OverflowError" in by_event["edge"].reason
        assert "timestamps must carry a time zone" in by_event["naive"].reason
        for letter in letters:
            stored = await js.get_msg(subjects.dlq_stream, letter.seq)
            assert stored.data is not None
            alone = msgspec.json.decode(stored.data)
            assert [e["event_id"] for e in alone["events"]] == [letter.event_id]

        # Fixed: the project no longer splits at midnight. A replay sessionizes the edge event;
        # the undecodable one fails again and is back in the DLQ.
        await pool.execute("UPDATE projects SET session_split_midnight = false")
        await asyncio.sleep(0.5)  # past project_refresh_s: the next batch reloads the rules
        assert await replay_dead_letters(js, subjects) == 2
        enriched = await wait_for_enriched(js, subjects, {"edge"})
        assert sorted(e.event_id for e in enriched) == ["edge", "good-1", "good-2", "good-3"]
        dead = await read_subject(js, subjects.dlq_stream, subjects.dlq("sessionizer"))
        assert [m.headers["Strata-DLQ-Event-Id"] for m in dead] == ["naive"]
