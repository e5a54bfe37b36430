"""Pipelined publish acks of a sessionizer partition: settled oldest first, never more than the
cap in flight, and a failed publish stops the partition before its input is acked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js.api import PubAck
from prometheus_client import CollectorRegistry

from libs.common.settings import SessionizerSettings
from libs.common.subjects import Subjects
from services.sessionizer.enriched_messages import OutgoingMessage
from services.sessionizer.metrics import SessionizerMetrics
from services.sessionizer.partition_worker import PartitionWorker
from services.sessionizer.publish_acks import PublishAcks, PublishFailed

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class ManualJetStream:
    """publish_async whose acks the test settles by hand, in any order."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.acks: list[asyncio.Future[PubAck]] = []

    async def publish_async(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        self.published.append((subject, payload, headers))
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self.acks.append(future)
        return future

    def ack(self, index: int) -> None:
        self.acks[index].set_result(PubAck(stream="S", seq=index + 1))

    def in_flight(self) -> int:
        return sum(not future.done() for future in self.acks)


class RecordingMsg:
    def __init__(self) -> None:
        self.acked = 0

    async def ack(self) -> None:
        self.acked += 1


class RecordingPool:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def acquire(self) -> Any:
        self.calls.append("acquire")
        raise AssertionError("the checkpoint must not be stored before every publish is acked")


def _messages(count: int, start: int = 0) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(f"t.enriched.v1.p.e{i}", f"{i}:p:e", b"{}", 1)
        for i in range(start, start + count)
    ]


async def test_acks_settle_oldest_first_and_only_down_to_half_the_cap() -> None:
    js = ManualJetStream()
    acks = PublishAcks(cap=4, timeout_s=5.0)
    for _ in range(3):
        acks.track(await js.publish_async("s", b"", {}))
    await acks.make_room()  # below the cap: no wait
    acks.track(await js.publish_async("s", b"", {}))
    making_room = asyncio.create_task(acks.make_room())
    # The newest acked first does not make room: the oldest two must be.
    js.ack(3)
    js.ack(1)
    await asyncio.sleep(0.01)
    assert not making_room.done()
    js.ack(0)
    await asyncio.wait_for(making_room, 1.0)
    assert len(acks) == 2  # half the cap still in flight, in publish order
    js.ack(2)
    await acks.settle()
    assert len(acks) == 0


async def test_a_partition_never_has_more_than_the_cap_in_flight() -> None:
    js = ManualJetStream()
    worker = _worker(js, max_pending_publishes=10)
    peak = 0

    async def acker() -> None:
        nonlocal peak
        while True:
            peak = max(peak, js.in_flight())
            for index, future in enumerate(js.acks):
                if not future.done():
                    js.ack(index)
                    break
            await asyncio.sleep(0)

    acking = asyncio.create_task(acker())
    try:
        for batch in range(20):
            await worker._publish(_messages(3, start=3 * batch), {"traceparent": TRACEPARENT})
            peak = max(peak, js.in_flight())
    finally:
        acking.cancel()
    assert len(js.published) == 60
    assert peak <= 10 + 2  # the cap, plus what one raw message adds before make_room
    assert [headers["Nats-Msg-Id"] for _, _, headers in js.published] == [
        f"{i}:p:e" for i in range(60)
    ]
    assert all(headers["traceparent"] == TRACEPARENT for _, _, headers in js.published)


async def test_a_rejected_publish_fails_the_checkpoint_and_the_input_stays_unacked() -> None:
    js = ManualJetStream()
    pool = RecordingPool()
    worker = _worker(js, pool=pool)
    raw = RecordingMsg()
    await worker._publish(_messages(3), {})
    worker._advance(raw, 7)  # type: ignore[arg-type]
    js.ack(0)
    js.acks[1].set_exception(RuntimeError("stream full"))
    js.ack(2)
    with pytest.raises(PublishFailed, match="stream full"):
        await worker.checkpoint()
    assert raw.acked == 0
    assert pool.calls == []
    assert worker.checkpoint_seq == 0


async def test_an_ack_that_never_comes_fails_at_the_cap() -> None:
    js = ManualJetStream()
    acks = PublishAcks(cap=2, timeout_s=0.05)
    acks.track(await js.publish_async("s", b"", {}))
    acks.track(await js.publish_async("s", b"", {}))
    with pytest.raises(PublishFailed, match="not acknowledged"):
        await acks.make_room()
    acks.cancel()
    assert all(future.cancelled() for future in js.acks)


def _worker(js: ManualJetStream, pool: object = None, **settings: Any) -> PartitionWorker:
    return PartitionWorker(
        partition=0,
        nc=None,  # type: ignore[arg-type]
        js=js,  # type: ignore[arg-type]
        pool=pool,  # type: ignore[arg-type]
        subjects=Subjects("t"),
        settings=SessionizerSettings(**settings),
        rules=None,  # type: ignore[arg-type]
        metrics=SessionizerMetrics(CollectorRegistry()),
        tick=lambda _: None,
        stopping=asyncio.Event(),
    )
