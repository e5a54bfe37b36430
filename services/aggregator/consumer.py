"""The aggregator's consume loop: fetch enriched batches from the shared durable pull consumer,
decode, write all their events in one transaction, and ack only after COMMIT.

Failures are sorted by type:
- `PoisonMessage` (cannot be decoded or validated): dead-lettered at once, then `term()`ed.
- a data fault (the database rejects the data: `asyncpg.DataError` and the like, or any error
  not known to be transient): the batch is retried message by message, and a message still
  failing at JetStream's `max_redeliveries`-th delivery has its events written in ever smaller
  groups, so that only the events the database rejects are dead-lettered, each alone with its
  reason, and the others are stored; then the message is acked.
- a transient failure (connection lost, serialization failure, deadlock): every message is
  `nak`ed with a backoff delay and retried, never dead-lettered.
Dead-lettering is capped by count and ratio over a time window: past the cap the consumer halts
(readyz fails with the reason) instead of emptying the stream into the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from libs.common.dead_letters import DeadLetterCapExceeded, DlqLimit, DlqPolicy
from libs.common.errors import StrataError
from libs.common.event_partitions import EventPartitions, ensure_partitions_ahead
from libs.common.observability import Liveness, error_text, extract_trace_context
from libs.common.schemas.events_v1 import SCHEMA_VERSION, EnrichedBatchV1, EventV1
from libs.common.settings import AggregatorSettings
from libs.common.subjects import Subjects
from services.aggregator.metrics import AggregatorMetrics
from services.aggregator.writer import WriteResult, write_events

SERVICE = "aggregator"
DURABLE = "aggregator"
PARTITIONS_REFRESH_S = 3600.0

_decoder = msgspec.json.Decoder(EnrichedBatchV1)
_encode_batch = msgspec.json.Encoder().encode
_tracer = trace.get_tracer("strata.aggregator")


class PoisonMessage(StrataError):
    """A message that can never be processed as it is: it goes to the DLQ, not back."""

    code = "poison_message"


# Failures of the environment, not of the data: retrying later succeeds.
_TRANSIENT = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # asyncpg's protocol left mid-operation by a connection cut under it ("cannot switch to
    # state ..."; seen once when the tests terminate backends mid-batch): a new connection works.
    asyncpg.InternalClientError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, query canceled
    asyncpg.exceptions.InsufficientResourcesError,  # disk full, too many connections
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ObjectInUseError,
    # The schema of another release (a rolling update across a migration): retried until the
    # process is replaced or the migration applied, never dead-lettered as bad data.
    asyncpg.exceptions.UndefinedTableError,
    asyncpg.exceptions.UndefinedColumnError,
    asyncpg.exceptions.UndefinedFunctionError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True when the failure is the environment's (retry with backoff), not the data's."""
    if isinstance(exc, _TRANSIENT):
        return True
    # A day partition dropped (by tiering) after this process cached it: re-create and retry.
    return isinstance(exc, asyncpg.exceptions.CheckViolationError) and "no partition" in str(exc)


def decode_batch(data: bytes) -> EnrichedBatchV1:
    """Decode and validate one enriched message, or raise PoisonMessage saying why."""
    try:
        batch = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PoisonMessage(f"undecodable EnrichedBatchV1: {exc}") from exc
    if batch.v != SCHEMA_VERSION:
        raise PoisonMessage(f"unsupported schema version {batch.v} (expected {SCHEMA_VERSION})")
    for event in batch.events:
        if event.ts.tzinfo is None or event.received_at.tzinfo is None:
            raise PoisonMessage(f"event {event.event_id}: timestamps must carry a time zone")
    return batch


@dataclass
class _Item:
    msg: Msg
    batch: EnrichedBatchV1


def transactions(msgs: Sequence[Msg], max_bytes: int) -> Iterator[list[Msg]]:
    """The fetched messages in delivery order, cut into runs of at most `max_bytes` of payload
    (a larger message makes a run of its own): one transaction each, decoded only when its turn
    comes, so a pull of large messages is neither one huge transaction nor all in memory."""
    run: list[Msg] = []
    size = 0
    for msg in msgs:
        if run and size + len(msg.data) > max_bytes:
            yield run
            run, size = [], 0
        run.append(msg)
        size += len(msg.data)
    if run:
        yield run


class Aggregator:
    """Consumes enriched events into PostgreSQL; `run()` until `stop()`."""

    def __init__(
        self,
        nc: NATS,
        pool: asyncpg.Pool,
        subjects: Subjects,
        settings: AggregatorSettings,
        metrics: AggregatorMetrics,
        liveness: Liveness,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.pool = pool
        self.subjects = subjects
        self.settings = settings
        self.metrics = metrics
        self.liveness = liveness
        self.partitions = EventPartitions()
        self.dlq = DlqPolicy(self.js, subjects, SERVICE, DlqLimit.from_settings(settings))
        self.halted_reason: str | None = None
        self._stopping = asyncio.Event()
        self._log = structlog.get_logger().bind(consumer=DURABLE)

    # -- lifecycle -----------------------------------------------------------------------------

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=DURABLE,
            durable_name=DURABLE,
            filter_subject=self.subjects.enriched_all,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            # Deliveries are counted by JetStream and capped by us (then DLQ), never dropped.
            max_deliver=-1,
            max_ack_pending=self.settings.max_ack_pending,
        )

    def stop(self) -> None:
        """Stop fetching; the batches in flight still commit and ack."""
        self._stopping.set()

    async def check_ready(self) -> None:
        if self.halted_reason is not None:
            raise RuntimeError(f"halted: {self.halted_reason}")
        if not self.nc.is_connected:
            raise RuntimeError("NATS disconnected")
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def run(self) -> None:
        """Create/bind the durable consumer and consume until stopped."""
        await self.js.add_consumer(self.subjects.enriched_stream, self.consumer_config())
        await self._partitions_ahead_at_start()
        subscriptions = [
            await self.js.pull_subscribe_bind(
                durable=DURABLE,
                stream=self.subjects.enriched_stream,
                pending_msgs_limit=2
                * max(self.settings.fetch_batch, self.settings.backlog_fetch_batch),
            )
            for _ in range(max(1, self.settings.writers))
        ]
        maintenance = asyncio.create_task(self._keep_partitions_ahead())
        try:
            await asyncio.gather(*(self._consume(sub) for sub in subscriptions))
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            for sub in subscriptions:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _partitions_ahead_at_start(self) -> None:
        """Today's partitions before the first fetch; a lost connection (a PostgreSQL restart
        or failover) is retried with backoff instead of ending the process."""
        delay = 0.1
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await ensure_partitions_ahead(
                        conn, self.settings.partitions_ahead_days, self.partitions
                    )
                return
            except Exception as exc:
                if not is_transient(exc) or self._stopping.is_set():
                    raise
                self._log.warning("partitions_ahead_failed_retrying", error=error_text(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _keep_partitions_ahead(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PARTITIONS_REFRESH_S)
                return
            try:
                async with self.pool.acquire() as conn:
                    await ensure_partitions_ahead(
                        conn, self.settings.partitions_ahead_days, self.partitions
                    )
            except Exception as exc:  # retried next hour; writes create their days anyway
                self._log.warning("partitions_ahead_failed", error=error_text(exc))

    async def _consume(self, sub: JetStreamContext.PullSubscription) -> None:
        behind = False  # the last pull left a backlog: pull and write more at a time
        while not self._stopping.is_set():
            self.liveness.tick()
            if self.halted_reason is not None:
                # Halted on purpose: stay up (and alive) so an operator sees why, fetch nothing.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                continue
            try:
                msgs = await sub.fetch(
                    self.settings.backlog_fetch_batch if behind else self.settings.fetch_batch,
                    timeout=self.settings.fetch_timeout_s,
                )
            except (NatsTimeoutError, TimeoutError):
                continue  # nothing to fetch (nats' or asyncio's timeout): idle, not failing
            except Exception as exc:  # NATS reconnecting: the client retries, so do we
                self._log.warning("fetch_failed", error=error_text(exc))
                await asyncio.sleep(0.5)
                continue
            if not msgs:  # a pull answered only by a status message
                continue
            started = time.perf_counter()
            try:
                await self.handle(msgs, backlog=behind)
            except Exception as exc:  # e.g. NATS lost mid-ack: unacked messages redeliver
                self._log.error("batch_handling_failed", error=error_text(exc), exc_info=True)
                await asyncio.sleep(0.5)
                continue
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            pending = msgs[-1].metadata.num_pending
            self.metrics.pending.set(pending)
            behind = pending >= self.settings.fetch_batch

    # -- one fetched batch ---------------------------------------------------------------------

    async def handle(self, msgs: Sequence[Msg], backlog: bool = False) -> None:
        """decode -> write in transactions of bounded size (larger when draining a `backlog`)
        -> ack each after its commit; poison and failures as documented."""
        settings = self.settings
        max_bytes = settings.backlog_batch_bytes if backlog else settings.max_batch_bytes
        try:
            with self._keep_in_progress(msgs):
                for run in transactions(msgs, max_bytes):
                    items: list[_Item] = []
                    for msg in run:
                        try:
                            items.append(_Item(msg, decode_batch(msg.data)))
                        except PoisonMessage as exc:
                            await self._dead_letter(msg, str(exc))
                    if items:
                        await self._write_and_ack(items)
        except DeadLetterCapExceeded as exc:
            self._halt(str(exc))
            for msg in msgs:
                # Everything not yet settled goes back, delayed, for a fixed deploy to handle
                # (nak of a settled message raises MsgAlreadyAckdError: nothing to do).
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self.settings.retry_backoff_max_s)

    async def _write(self, items: Sequence[_Item]) -> WriteResult:
        events: list[EventV1] = [e for item in items for e in item.batch.events]
        first = items[0].msg
        context = extract_trace_context(dict(first.headers) if first.headers else None)
        with _tracer.start_as_current_span(
            "aggregator.write",
            context=context,  # type: ignore[arg-type]
            attributes={"messages": len(items), "events": len(events)},
        ):
            async with self.pool.acquire() as conn:
                return await write_events(conn, events, self.partitions)

    async def _write_and_ack(self, items: list[_Item]) -> None:
        try:
            result = await self._write(items)
        except Exception as exc:
            if is_transient(exc):
                await self._retry_later(items, exc)
                return
            if len(items) == 1:
                await self._failed(items[0], exc)
                return
            # A data fault somewhere in the batch: find it by writing the messages one by one.
            self._log.warning(
                "batch_failed_isolating_messages", messages=len(items), error=error_text(exc)
            )
            for item in items:
                await self._write_and_ack([item])
            return
        # Ack only after COMMIT: a crash before this line redelivers, and the rewrite is a no-op.
        for item in items:
            await item.msg.ack()
        self.dlq.record_handled(len(items))
        self.metrics.messages.labels("acked").inc(len(items))
        self.metrics.events_inserted.inc(result.inserted)
        self.metrics.events_duplicate.inc(result.duplicates)
        self._log.debug(
            "batch_stored",
            batch_ids=[item.batch.batch_id for item in items][:20],
            inserted=result.inserted,
            duplicates=result.duplicates,
        )

    def _backoff(self, msg: Msg) -> float:
        deliveries = max(1, msg.metadata.num_delivered or 1)
        return float(min(self.settings.retry_backoff_max_s, 0.5 * 2 ** (deliveries - 1)))

    async def _retry_later(self, items: Sequence[_Item], exc: BaseException) -> None:
        if isinstance(exc, asyncpg.exceptions.CheckViolationError):
            self.partitions.forget()
        self._log.warning("transient_failure_retrying", messages=len(items), error=error_text(exc))
        for item in items:
            await item.msg.nak(delay=self._backoff(item.msg))
        self.metrics.messages.labels("retried").inc(len(items))

    async def _failed(self, item: _Item, exc: BaseException) -> None:
        """One message the database rejects: retry until its last allowed delivery, then
        dead-letter only the events that fail on their own."""
        deliveries = item.msg.metadata.num_delivered or 1
        reason = f"{type(exc).__name__}: {exc}"
        if deliveries >= self.settings.max_redeliveries:
            if len(item.batch.events) == 1:
                await self._dead_letter(item.msg, f"{reason} (after {deliveries} deliveries)")
            else:
                await self._isolate_events(item, deliveries)
            return
        self._log.warning(
            "message_failed_will_retry",
            batch_id=item.batch.batch_id,
            deliveries=deliveries,
            error=reason,
        )
        await item.msg.nak(delay=self._backoff(item.msg))
        self.metrics.messages.labels("retried").inc()

    async def _isolate_events(self, item: _Item, deliveries: int) -> None:
        """Write the message's events in halves, quarters, ... down to single events, so the
        database's rejection is pinned on the events that cause it: those are dead-lettered,
        each as a message of its own with its reason, the rest are stored, then the message is
        acked. A transient failure meanwhile naks the whole message: the groups already
        committed are no-ops when it comes back."""
        rejected: list[tuple[EventV1, str]] = []
        result = WriteResult(received=0, inserted=0, duplicates=0)
        groups = [list(item.batch.events)]
        while groups:
            group = groups.pop()
            try:
                async with self.pool.acquire() as conn:
                    written = await write_events(conn, group, self.partitions)
            except Exception as exc:
                if is_transient(exc):
                    await self._retry_later([item], exc)
                    return
                if len(group) == 1:
                    rejected.append((group[0], f"{type(exc).__name__}: {exc}"))
                else:
                    half = len(group) // 2
                    groups += [group[half:], group[:half]]  # the first half is written first
                continue
            result = WriteResult(
                received=result.received + written.received,
                inserted=result.inserted + written.inserted,
                duplicates=result.duplicates + written.duplicates,
            )
        batch = item.batch
        for event, reason in rejected:
            payload = _encode_batch(
                EnrichedBatchV1(
                    batch_id=f"{batch.batch_id}/{event.event_id}",
                    project_id=batch.project_id,
                    name=batch.name,
                    events=[event],
                )
            )
            await self._dead_letter(
                item.msg,
                f"event {event.event_id}: {reason} (after {deliveries} deliveries)",
                payload=payload,
                event_id=event.event_id,
            )
        # Ack only after every event is either committed or in the DLQ.
        await item.msg.ack()
        self.dlq.record_handled()
        self.metrics.messages.labels("acked").inc()
        self.metrics.events_inserted.inc(result.inserted)
        self.metrics.events_duplicate.inc(result.duplicates)
        self._log.warning(
            "message_stored_without_rejected_events",
            batch_id=batch.batch_id,
            events=len(batch.events),
            rejected=[event.event_id for event, _ in rejected][:20],
        )

    async def _dead_letter(
        self,
        msg: Msg,
        reason: str,
        payload: bytes | None = None,
        event_id: str | None = None,
    ) -> None:
        # Raises DeadLetterCapExceeded past the cap.
        await self.dlq.dead_letter(msg, reason, payload=payload, event_id=event_id)
        self.metrics.dead_letters.inc()
        if event_id is None:
            await msg.term()
            self.metrics.messages.labels("dead_lettered").inc()
        where = {
            "subject": msg.subject,
            "stream_seq": msg.metadata.sequence.stream,
            "deliveries": msg.metadata.num_delivered,
        }
        if event_id is None:
            self._log.warning("message_dead_lettered", **where, error=reason)
        else:
            self._log.warning("event_dead_lettered", **where, event_id=event_id, error=reason)

    def _halt(self, reason: str) -> None:
        if self.halted_reason is None:
            self.halted_reason = reason
            self.metrics.halted.set(1)
            self._log.error(
                "consumer_halted",
                error=reason,
                hint="dead-letter cap reached; fix the cause, then restart"
                " (and `strata dlq list` / `strata dlq replay`)",
            )

    @contextlib.contextmanager
    def _keep_in_progress(self, msgs: Sequence[Msg]) -> Iterator[None]:
        """While a long batch is being written, tell JetStream it is in progress so ack_wait
        does not expire and hand the same messages to another replica."""

        async def heartbeat() -> None:
            interval = max(1.0, self.settings.ack_wait_s / 3)
            while True:
                await asyncio.sleep(interval)
                for msg in msgs:
                    with contextlib.suppress(Exception):  # raises once settled: fine
                        await msg.in_progress()

        task = asyncio.create_task(heartbeat())
        try:
            yield
        finally:
            task.cancel()
