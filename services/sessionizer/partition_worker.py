"""One raw-stream partition: consume from its checkpoint, sessionize each raw batch in order,
publish enriched batches and session updates, and checkpoint (state + sequence), then ack.

The chain per raw message: decode -> validate -> sessionize (pure) -> publish (acks awaited
before the next checkpoint). Per checkpoint: await publish acks -> store (seq, the persons
changed since the last checkpoint) in one transaction -> ack the
raw stream up to seq -> ask a background task to purge the partition's raw messages up to seq
(off the consume path: at most one purge in flight per partition, never past the stored
checkpoint). A crash anywhere replays
from the last checkpoint; since sessionizing is deterministic, the replay republishes the same
message ids and JetStream drops them.

A data fault costs only the events that cause it: a message with undecodable events has its
other events sessionized, and an event the sessionizing step fails on (found by replaying the
message from the checkpoint and trying each of its events alone) is set aside. Either goes to
the DLQ alone, as a raw message of that one event with its reason, replayable after a fix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import propagate, trace

from libs.common.dead_letters import DlqLimit, DlqPolicy
from libs.common.errors import StrataError
from libs.common.observability import inject_trace_headers, tracing_enabled
from libs.common.schemas.events_v1 import EventV1, RawBatchV1, raw_batch_decoder
from libs.common.settings import SessionizerSettings
from libs.common.subjects import Subjects
from services.sessionizer.checkpoints import PartitionCheckpoints
from services.sessionizer.enriched_messages import OutgoingMessage, build_messages
from services.sessionizer.metrics import SessionizerMetrics
from services.sessionizer.project_rules import ProjectRules
from services.sessionizer.publish_acks import PublishAcks
from services.sessionizer.session_window import (
    PartitionSessions,
    SessionizedBatch,
    SessionRules,
    sessionize_batch,
)

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("strata.sessionizer")

_TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
DLQ_SERVICE = "sessionizer"
MAX_RESTART_BACKOFF_S = 30.0
# A partition that ran this long before failing was healthy: it restarts without the backoff
# its earlier failures built up (a NATS failover hours later waits 0.5 s, not 30 s).
STABLE_RUN_S = 10.0


class InvalidRawBatch(StrataError, ValueError):
    """A raw message that can never be sessionized (poison): it goes to the DLQ."""

    code = "invalid_raw_batch"


class DeliveryGap(StrataError, RuntimeError):
    """The raw consumer delivered a message this worker never received (its delivery sequence
    jumped): lost in flight when a NATS server died, or taken by another client's pull. The
    checkpoint must not pass it, so the partition restarts from its checkpoint at once."""

    code = "delivery_gap"


class SessionizeFailed(StrataError, RuntimeError):
    """The sessionizing step raised on a message: it is replayed from the checkpoint with its
    events tried one by one."""

    code = "sessionize_failed"


class _RawEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """A raw message with its events left undecoded, to tell the bad ones from the good."""

    v: int = 1
    batch_id: str
    partition: int
    events: list[msgspec.Raw]


_envelope_decoder = msgspec.json.Decoder(_RawEnvelope)
_event_decoder = msgspec.json.Decoder(EventV1)
_encode = msgspec.json.Encoder().encode


class RejectedEvent(msgspec.Struct, frozen=True):
    """One event of a raw message set aside, as the DLQ will hold it."""

    index: int  # position in its raw message
    event_id: str | None
    payload: bytes  # a raw message of this event alone
    reason: str


def _check_event(event: EventV1) -> None:
    if event.ts.tzinfo is None or event.received_at.tzinfo is None:
        raise InvalidRawBatch(f"event {event.event_id}: timestamps must carry a time zone")


def decode_raw_batch(data: bytes) -> RawBatchV1:
    """Decode and validate one raw message, or raise InvalidRawBatch saying why."""
    try:
        batch = raw_batch_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidRawBatch(f"undecodable raw batch: {exc}") from exc
    for event in batch.events:
        _check_event(event)
    return batch


def _alone(envelope: _RawEnvelope, index: int, raw: msgspec.Raw) -> bytes:
    return _encode(
        _RawEnvelope(
            batch_id=f"{envelope.batch_id}/{index}", partition=envelope.partition, events=[raw]
        )
    )


def decode_raw_events(data: bytes) -> tuple[RawBatchV1, list[RejectedEvent]]:
    """The message with its valid events, and the events set aside for the DLQ; raises
    InvalidRawBatch when the message itself (not one of its events) is unreadable."""
    try:
        return decode_raw_batch(data), []
    except InvalidRawBatch as whole:
        try:
            envelope = _envelope_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise whole from None
        good: list[EventV1] = []
        rejected: list[RejectedEvent] = []
        for index, raw in enumerate(envelope.events):
            try:
                event = _event_decoder.decode(raw)
                _check_event(event)
            except (msgspec.DecodeError, msgspec.ValidationError, InvalidRawBatch) as exc:
                event_id = _event_id(raw)
                reason = f"event {event_id or f'#{index}'}: {exc}"
                rejected.append(
                    RejectedEvent(index, event_id, _alone(envelope, index, raw), reason)
                )
            else:
                good.append(event)
        if not rejected:
            raise whole from None
        batch = RawBatchV1(batch_id=envelope.batch_id, partition=envelope.partition, events=good)
        return batch, rejected


class _EventIdOnly(msgspec.Struct):
    event_id: Any = None


_event_id_decoder = msgspec.json.Decoder(_EventIdOnly)


def _event_id(raw: msgspec.Raw | bytes) -> str | None:
    try:
        found = _event_id_decoder.decode(raw).event_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return found if isinstance(found, str) else None


def sessionize_each(
    state: PartitionSessions,
    batch: RawBatchV1,
    seq: int,
    rules: Callable[[str], SessionRules],
    changed: set[tuple[str, str]] | None = None,
) -> tuple[SessionizedBatch, list[RejectedEvent]]:
    """`sessionize_batch` for a message it failed on: each event is first tried alone on an
    empty state, those that fail are set aside, and the others are sessionized together (the
    persons they change go to `changed`)."""
    good: list[EventV1] = []
    rejected: list[RejectedEvent] = []
    for index, event in enumerate(batch.events):
        try:
            sessionize_batch(PartitionSessions(), [event], seq, rules)
        except Exception as exc:  # a data fault of this event: what it is, the DLQ says
            alone = RawBatchV1(
                batch_id=f"{batch.batch_id}/{index}", partition=batch.partition, events=[event]
            )
            reason = f"event {event.event_id}: sessionizing failed: {type(exc).__name__}: {exc}"
            rejected.append(RejectedEvent(index, event.event_id, _encode(alone), reason))
        else:
            good.append(event)
    return sessionize_batch(state, good, seq, rules, changed), rejected


class PartitionWorker:
    """Owns one partition of the raw stream for as long as the service runs."""

    def __init__(
        self,
        partition: int,
        nc: NATS,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        subjects: Subjects,
        settings: SessionizerSettings,
        rules: ProjectRules,
        metrics: SessionizerMetrics,
        tick: Callable[[int], None],
        stopping: asyncio.Event,
    ) -> None:
        self.partition = partition
        self._nc = nc
        self._js = js
        self._pool = pool
        self._subjects = subjects
        self._settings = settings
        self._rules = rules
        self._metrics = metrics
        self._tick = tick
        self._stopping = stopping
        self._label = str(partition)
        self._log = log.bind(partition=partition)
        # The shared dead-letter policy and cap (DeadLetterCapExceeded fails the partition,
        # which restarts with backoff). Kept across restarts from the checkpoint, so a restart
        # does not reset the cap's window: the partition stays stopped at the poison message
        # until the window's dead letters age out.
        self._dlq = DlqPolicy(
            js, subjects, DLQ_SERVICE, DlqLimit.from_settings(settings), settings.publish_timeout_s
        )
        # Raw sequences whose sessionizing failed: replayed with their events tried alone.
        self._sessionize_each: set[int] = set()
        self._tracing = tracing_enabled()
        # The raw purge runs beside the consume loop, one at a time: `_purge_upto` is the
        # highest stored checkpoint it may purge to, `_purged_upto` what it has purged.
        self._purge_task: asyncio.Task[None] | None = None
        self._purge_upto = 0
        self._purged_upto = 0
        self._checkpoints = PartitionCheckpoints(pool, subjects.raw_stream, partition)
        self._reset(0, PartitionSessions())

    def _reset(self, checkpoint_seq: int, state: PartitionSessions) -> None:
        self.state = state
        # Persons changed or forgotten since the last checkpoint: the next one stores them.
        self._changed: set[tuple[str, str]] = set()
        self.checkpoint_seq = checkpoint_seq  # last raw seq whose effects are checkpointed
        self.processed_seq = checkpoint_seq  # last raw seq sessionized and published
        self._last_msg: Msg | None = None  # acking it acks everything before (AckPolicy.ALL)
        # The consumer's delivery sequence of the last message received (the consumer is
        # created afresh at every start, so deliveries number from 1).
        self._delivered = 0
        self._publish_acks = PublishAcks(
            self._settings.max_pending_publishes, self._settings.publish_timeout_s
        )
        self._checkpointed_at = time.monotonic()
        self._messages_since_checkpoint = 0

    @property
    def consumer_name(self) -> str:
        return f"sessionizer-{self.partition}"

    async def run(self) -> None:
        """Consume until the service stops; transient failures restart from the checkpoint."""
        backoff = 0.5
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._run_from_checkpoint()
                backoff = 0.5
            except DeliveryGap as exc:
                # Not a failure of anything we can wait out: replay from the checkpoint now.
                self._cancel_pending_publishes()
                self._metrics.restarts.labels(self._label).inc()
                self._log.warning("raw_delivery_gap", error=str(exc))
            except Exception as exc:
                if time.monotonic() - started >= STABLE_RUN_S:
                    backoff = 0.5
                # Anything unexpected (NATS or PostgreSQL away, a publish not acked) is
                # retried from the last checkpoint: replays are deterministic and deduplicated.
                self._cancel_pending_publishes()
                self._metrics.restarts.labels(self._label).inc()
                self._log.error(
                    "partition_failed",
                    error=str(exc) or type(exc).__name__,
                    error_type=type(exc).__name__,
                    retry_in_s=backoff,
                    exc_info=True,
                )
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, MAX_RESTART_BACKOFF_S)

    async def _run_from_checkpoint(self) -> None:
        # A purge requested before a failure finishes first: a raw stream recreated behind the
        # checkpoint must not meet a purge aimed at the old stream's sequences.
        await self._settle_purge()
        self._purge_upto = self._purged_upto = 0
        checkpoint = await self._checkpoints.load()
        self._reset(checkpoint.stream_seq, checkpoint.state)
        start_seq = await self._start_sequence(checkpoint.stream_seq)
        sub = await self._subscribe(start_seq)
        self._log.info(
            "partition_started",
            checkpoint_seq=checkpoint.stream_seq,
            start_seq=start_seq,
            persons=self.state.person_count(),
        )
        fetch_timeout = max(0.05, min(1.0, self._settings.checkpoint_interval_s / 2))
        try:
            while not self._stopping.is_set():
                self._tick(self.partition)
                try:
                    msgs = await sub.fetch(self._settings.fetch_batch, timeout=fetch_timeout)
                except TimeoutError:  # nats.errors.TimeoutError or asyncio's: nothing new
                    msgs = []
                for msg in msgs:
                    if self._stopping.is_set():
                        break  # unprocessed messages replay from the checkpoint
                    await self._process(msg)
                    if self._messages_since_checkpoint >= self._settings.checkpoint_max_messages:
                        await self.checkpoint()
                if time.monotonic() - self._checkpointed_at >= self._settings.checkpoint_interval_s:
                    await self.checkpoint()
                self._metrics.checkpoint_age.labels(self._label).set(
                    time.monotonic() - self._checkpointed_at
                )
            await self.checkpoint()
            await self._settle_purge()
            self._log.info("partition_stopped", checkpoint_seq=self.checkpoint_seq)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be gone; nothing to release
                pass

    async def _start_sequence(self, checkpoint_seq: int) -> int:
        """The raw sequence to resume at: right after the checkpoint, unless the stream was
        recreated behind it (its sequences restarted), in which case from its beginning."""
        if checkpoint_seq == 0:
            return 1
        info = await self._js.stream_info(self._subjects.raw_stream)
        if info.state.last_seq < checkpoint_seq:
            self._log.warning(
                "raw_stream_behind_checkpoint",
                checkpoint_seq=checkpoint_seq,
                stream_last_seq=info.state.last_seq,
            )
            self.checkpoint_seq = self.processed_seq = 0
            return 1
        return checkpoint_seq + 1

    async def _subscribe(self, start_seq: int) -> JetStreamContext.PullSubscription:
        # The checkpoint, not the consumer's ack floor, is the truth: recreate the durable
        # consumer at the checkpointed position every time the partition (re)starts.
        stream = self._subjects.raw_stream
        try:
            await self._js.delete_consumer(stream, self.consumer_name)
        except NotFoundError:
            pass
        interval = self._settings.checkpoint_interval_s
        max_ack_pending = 2 * self._settings.checkpoint_max_messages + self._settings.fetch_batch
        config = ConsumerConfig(
            name=self.consumer_name,
            durable_name=self.consumer_name,
            filter_subject=self._subjects.raw(self.partition),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.ALL,
            # Messages stay unacked until the next checkpoint; a redelivery before then is
            # skipped by sequence, so a generous ack wait only saves pointless resends.
            ack_wait=max(60.0, 10 * interval),
            max_ack_pending=max_ack_pending,
            max_deliver=-1,
        )
        await self._js.add_consumer(stream, config)
        return await self._js.pull_subscribe_bind(
            durable=self.consumer_name, stream=stream, pending_msgs_limit=4 * max_ack_pending
        )

    async def _process(self, msg: Msg) -> None:
        metadata = msg.metadata
        seq = metadata.sequence.stream
        self._metrics.lag.labels(self._label).set(metadata.num_pending)
        # Redeliveries skip by stream sequence below, so a delivery that never reached us
        # would be skipped for good once a later message moved the checkpoint past it.
        delivered = metadata.sequence.consumer or 0
        if delivered > self._delivered + 1:
            raise DeliveryGap(
                f"raw delivery {delivered} arrived after {self._delivered}: "
                f"{delivered - self._delivered - 1} delivered message(s) never received"
            )
        self._delivered = max(self._delivered, delivered)
        if seq <= self.processed_seq:
            return  # redelivered before our checkpoint acked it; already published
        try:
            batch, rejected = decode_raw_events(msg.data)
        except InvalidRawBatch as exc:
            await self._dead_letter(msg, seq, str(exc))
            self._advance(msg, seq)
            return

        await self._rules.ensure_known({event.project_id for event in batch.events})
        if seq in self._sessionize_each:
            sessionized, failed = sessionize_each(
                self.state, batch, seq, self._rules, self._changed
            )
            rejected += failed
        else:
            try:
                sessionized = sessionize_batch(
                    self.state, batch.events, seq, self._rules, self._changed
                )
            except Exception as exc:
                # The state may be half-updated: go back to the checkpoint, and this time
                # try the message's events one by one.
                self._sessionize_each.add(seq)
                raise SessionizeFailed(
                    f"raw message {seq} failed to sessionize ({type(exc).__name__}: {exc});"
                    " replaying it event by event"
                ) from exc
        for event in rejected:
            await self._dead_letter(msg, seq, event.reason, event)
        if not rejected:
            self._dlq.record_handled()
        messages = build_messages(self._subjects, seq, sessionized, self._nc.max_payload)

        # Carry the ingest request's trace through; our span (when tracing is on) becomes
        # the parent of the aggregator's.
        # Without a tracer provider the incoming headers pass through as they are: a span
        # would be empty work per message.
        incoming = msg.headers
        trace_headers = (
            {k: incoming[k] for k in _TRACE_HEADERS if k in incoming} if incoming else {}
        )
        if self._tracing:
            with tracer.start_as_current_span(
                "sessionize",
                context=propagate.extract(trace_headers),
                attributes={
                    "strata.batch_id": batch.batch_id,
                    "strata.partition": self.partition,
                },
            ):
                inject_trace_headers(trace_headers)
                await self._publish(messages, trace_headers)
        else:
            await self._publish(messages, trace_headers)

        self._advance(msg, seq)
        self._metrics.events.inc(len(sessionized.events))
        self._metrics.sessions_started.inc(sessionized.sessions_started)
        if sessionized.persons_pruned:
            self._metrics.persons_pruned.inc(sessionized.persons_pruned)
        self._log.debug(
            "raw_batch_sessionized",
            batch_id=batch.batch_id,
            seq=seq,
            events=len(sessionized.events),
            sessions_started=sessionized.sessions_started,
            messages=len(messages),
        )

    async def _publish(
        self, messages: list[OutgoingMessage], trace_headers: dict[str, str]
    ) -> None:
        """Publish without awaiting each ack: they are settled in order, at the in-flight cap
        and before the next checkpoint."""
        js = self._js
        acks = self._publish_acks
        for out in messages:
            headers = {**trace_headers, "Nats-Msg-Id": out.msg_id}
            acks.track(await js.publish_async(out.subject, out.payload, headers=headers))
        await acks.make_room()

    def _advance(self, msg: Msg, seq: int) -> None:
        self.processed_seq = seq
        self._last_msg = msg
        self._messages_since_checkpoint += 1

    async def _dead_letter(
        self, msg: Msg, seq: int, reason: str, event: RejectedEvent | None = None
    ) -> None:
        """The message (or, given `event`, that one event of it) to the DLQ with `reason`."""
        if event is None:
            await self._dlq.dead_letter(msg, reason)
        else:
            await self._dlq.dead_letter(
                msg,
                reason,
                payload=event.payload,
                event_id=event.event_id or f"#{event.index}",
                part=str(event.index),
            )
        self._metrics.dead_lettered.inc()
        if event is None:
            self._log.warning("raw_message_dead_lettered", seq=seq, error=reason)
        else:
            self._log.warning(
                "raw_event_dead_lettered", seq=seq, event_id=event.event_id, error=reason
            )

    def _cancel_pending_publishes(self) -> None:
        self._publish_acks.cancel()

    async def checkpoint(self) -> None:
        """Store (last processed seq, state) once every publish is acked, then ack the raw
        stream up to that seq."""
        if self.processed_seq == self.checkpoint_seq:
            self._checkpointed_at = time.monotonic()  # nothing new: fully checkpointed
            return
        await self._publish_acks.settle()
        written = await self._checkpoints.save(self.processed_seq, self.state, self._changed)
        self._changed = set()
        self.checkpoint_seq = self.processed_seq
        self._messages_since_checkpoint = 0
        self._checkpointed_at = time.monotonic()
        self._metrics.checkpoint_bytes.labels(self._label).set(written)
        self._metrics.persons.labels(self._label).set(self.state.person_count())
        self._metrics.checkpoint_age.labels(self._label).set(0)
        if self._last_msg is not None:
            try:
                await self._last_msg.ack()
            except Exception as exc:
                # Harmless: the checkpoint is the resume point; the next ack covers this one.
                self._log.warning("raw_ack_failed", error=str(exc))
        self._request_purge(self.checkpoint_seq)

    def _request_purge(self, checkpoint_seq: int) -> None:
        """Let the background purge drop raw messages up to `checkpoint_seq`, which must be
        stored: a purge already running picks the new bound up when it finishes."""
        self._purge_upto = max(self._purge_upto, checkpoint_seq)
        if self._purge_task is None or self._purge_task.done():
            self._purge_task = asyncio.create_task(
                self._purge_checkpointed(), name=f"raw-purge-{self.partition}"
            )

    async def _settle_purge(self) -> None:
        """Wait for the purge in flight, if any (it bounds itself by the NATS request timeout
        and never raises)."""
        if self._purge_task is not None:
            await self._purge_task
            self._purge_task = None

    async def _purge_checkpointed(self) -> None:
        """Drop the partition's raw messages up to the checkpoint from the raw stream: their
        events are in the enriched stream (every publish acked before the checkpoint) and no
        restart reads them again, so keeping them only filled the disk. Runs until the purge
        has caught up with the latest checkpoint, one JetStream purge at a time."""
        while self._purge_upto > self._purged_upto:
            upto = self._purge_upto
            try:
                await self._js.purge_stream(
                    self._subjects.raw_stream,
                    seq=upto + 1,
                    subject=self._subjects.raw(self.partition),
                )
            except Exception as exc:
                # Harmless: the next checkpoint's purge covers these messages too.
                self._log.warning("raw_purge_failed", error=str(exc))
                return
            self._purged_upto = upto
