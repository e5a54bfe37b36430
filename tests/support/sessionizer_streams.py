"""Helpers for sessionizer tests: publish raw batches as ingest does, read back what the
sessionizer published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.common.schemas.events_v1 import (
    EnrichedBatchV1,
    EventV1,
    RawBatchV1,
    SessionUpdateBatchV1,
)
from libs.common.subjects import Subjects, partition_of

_encoder = msgspec.json.Encoder()


def make_event(
    event_id: str,
    ts: datetime,
    person: str,
    received_at: datetime,
    project: str = "acme",
    name: str = "$pageview",
    **fields: Any,
) -> EventV1:
    return EventV1(
        event_id=event_id,
        project_id=project,
        type="page" if name == "$pageview" else "track",
        name=name,
        ts=ts,
        received_at=received_at,
        distinct_id=person,
        **fields,
    )


async def publish_raw(
    js: JetStreamContext, subjects: Subjects, events: Sequence[EventV1], partitions: int
) -> dict[int, int]:
    """Publish `events` as one ingest request would: one raw message per person partition.
    Returns each partition's raw stream sequence."""
    by_partition: dict[int, list[EventV1]] = {}
    for event in events:
        by_partition.setdefault(partition_of(event.distinct_id, partitions), []).append(event)
    seqs = {}
    for partition, part in sorted(by_partition.items()):
        batch_id = uuid.uuid4().hex
        payload = _encoder.encode(RawBatchV1(batch_id=batch_id, partition=partition, events=part))
        ack = await js.publish(
            subjects.raw(partition), payload, headers={"Nats-Msg-Id": f"{batch_id}:{partition}"}
        )
        seqs[partition] = ack.seq
    return seqs


async def read_subject(js: JetStreamContext, stream: str, subject: str) -> list[Any]:
    """Every message stored on `subject` (wildcards allowed), oldest first."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
        ),
    )
    messages: list[Any] = []
    try:
        while True:
            try:
                batch = await sub.fetch(500, timeout=0.5)
            except TimeoutError:  # nats' or asyncio's: nothing more to read
                break
            messages.extend(batch)
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return messages


async def enriched_events(js: JetStreamContext, subjects: Subjects) -> list[EventV1]:
    """Every event on the enriched stream, once per time it was stored."""
    messages = await read_subject(js, subjects.enriched_stream, subjects.enriched_all)
    events: list[EventV1] = []
    for msg in messages:
        events.extend(msgspec.json.decode(msg.data, type=EnrichedBatchV1).events)
    return events


async def session_updates(js: JetStreamContext, subjects: Subjects) -> list[SessionUpdateBatchV1]:
    messages = await read_subject(js, subjects.sessions_stream, subjects.sessions_all)
    return [msgspec.json.decode(m.data, type=SessionUpdateBatchV1) for m in messages]


async def wait_for_enriched(
    js: JetStreamContext, subjects: Subjects, event_ids: set[str], within_s: float = 60.0
) -> list[EventV1]:
    """Poll until every id in `event_ids` is on the enriched stream; returns the stream's events."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        events = await enriched_events(js, subjects)
        missing = event_ids - {e.event_id for e in events}
        if not missing:
            return events
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{len(missing)} events never reached the enriched stream")
        await asyncio.sleep(0.2)
