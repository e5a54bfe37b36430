"""Publishing a request's events to the raw stream: one message per person partition, each with
a deterministic JetStream dedup id, all acknowledged before the request is answered."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.context import Context
from prometheus_client import Histogram

from libs.common.observability import inject_trace_headers
from libs.common.schemas.events_v1 import EventV1, RawBatchV1, raw_batch_encoder
from libs.common.subjects import Subjects, partition_of

_tracer = trace.get_tracer("strata.ingest")
# Room left under NATS' max_payload for headers and protocol framing.
_PAYLOAD_MARGIN = 8 * 1024


class _AckError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _JetStreamAck(msgspec.Struct):
    """JetStream's reply to a publish: {"stream", "seq", "duplicate"} or {"error"}."""

    stream: str | None = None
    seq: int | None = None
    duplicate: bool = False
    error: _AckError | None = None


# Publishing is a plain NATS request whose reply is the stream's ack; decoding that reply with
# a typed msgspec Struct costs far less than nats-py's JSON + dataclass PubAck per message.
_ack_decoder = msgspec.json.Decoder(_JetStreamAck)


def tracing_enabled() -> bool:
    """Whether an OpenTelemetry tracer provider is installed (STRATA_OTEL_EXPORTER != none);
    without one, spans and trace headers would be empty work on every request."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class PublishUnavailable(Exception):
    """JetStream did not acknowledge (NATS down, no stream, timeout): answer 503."""

    retry_after_s = 2.0


class PublishOverloaded(PublishUnavailable):
    """Too many requests are already waiting on JetStream: answer 503 rather than queue."""

    retry_after_s = 1.0


def dedup_id(project_id: str, events: list[EventV1]) -> str:
    """The Nats-Msg-Id of a message: a hash of its sorted event ids, so the same events
    published again (a client retrying a request) are dropped by JetStream's dedup window."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(project_id.encode())
    for event_id in sorted(event.event_id for event in events):
        digest.update(b"\n")
        digest.update(event_id.encode())
    return digest.hexdigest()


def split_by_partition(events: list[EventV1], partitions: int) -> dict[int, list[EventV1]]:
    """Events grouped by person partition, each group in request order."""
    groups: dict[int, list[EventV1]] = {}
    for event in events:
        partition = partition_of(event.distinct_id, partitions)
        group = groups.get(partition)
        if group is None:
            groups[partition] = [event]
        else:
            group.append(event)
    return groups


class RawEventPublisher:
    """Publishes events to `<prefix>.raw.v1.<partition>` and waits for every ack."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        partitions: int,
        timeout_s: float,
        max_in_flight: int,
        latency: Histogram | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._partitions = partitions
        self._timeout_s = timeout_s
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._latency = latency
        self._tracing = tracing_enabled()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def tracing(self) -> bool:
        return self._tracing

    async def publish(
        self, project_id: str, events: list[EventV1], trace_context: Context | None = None
    ) -> int:
        """Publish and await all acks; returns the number of messages. Raises
        PublishUnavailable (or PublishOverloaded) when the events cannot be acknowledged.
        `trace_context` (from the HTTP request's traceparent) parents the publish span."""
        if self._in_flight >= self._max_in_flight:
            raise PublishOverloaded(f"{self._in_flight} requests already wait on JetStream")
        if not self._nc.is_connected:
            raise PublishUnavailable("not connected to NATS")
        self._in_flight += 1
        started = time.perf_counter()
        try:
            with (
                _tracer.start_as_current_span("ingest.publish", context=trace_context)
                if self._tracing
                else contextlib.nullcontext()
            ) as span:
                groups = split_by_partition(events, self._partitions)
                if span is not None:
                    span.set_attribute("strata.events", len(events))
                    span.set_attribute("strata.partitions", len(groups))
                results = await asyncio.gather(
                    *(
                        self._publish_partition(project_id, partition, group)
                        for partition, group in groups.items()
                    ),
                    return_exceptions=True,
                )
        finally:
            self._in_flight -= 1
        messages = 0
        for result in results:
            if isinstance(result, BaseException):
                # Acked partitions are harmless: the client's retry republishes the same
                # message ids, which JetStream drops as duplicates.
                raise _unavailable(result) from result
            messages += result
        if self._latency is not None:
            self._latency.observe(time.perf_counter() - started)
        return messages

    async def _publish_partition(
        self, project_id: str, partition: int, events: list[EventV1]
    ) -> int:
        # Chunks of one partition go out in order, so a person's events stay ordered.
        chunks = self._encode(project_id, partition, events)
        subject = self._subjects.raw(partition)
        for msg_id, payload in chunks:
            headers = {"Nats-Msg-Id": msg_id}
            if self._tracing:
                inject_trace_headers(headers)
            reply = await self._nc.request(
                subject, payload, timeout=self._timeout_s, headers=headers
            )
            ack = _ack_decoder.decode(reply.data)
            if ack.error is not None:
                raise PublishUnavailable(f"JetStream refused the message: {ack.error.description}")
            if ack.stream is None:
                raise PublishUnavailable("no JetStream stream accepts the raw subjects")
        return len(chunks)

    def _encode(
        self, project_id: str, partition: int, events: list[EventV1]
    ) -> list[tuple[str, bytes]]:
        msg_id = dedup_id(project_id, events)
        payload = raw_batch_encoder.encode(
            RawBatchV1(batch_id=msg_id, partition=partition, events=events)
        )
        limit = max(self._nc.max_payload - _PAYLOAD_MARGIN, 1024)
        if len(payload) <= limit or len(events) == 1:
            # A single event cannot exceed the limit: events are at most 32 KB.
            return [(msg_id, payload)]
        middle = len(events) // 2
        return self._encode(project_id, partition, events[:middle]) + self._encode(
            project_id, partition, events[middle:]
        )


def _unavailable(exc: BaseException) -> PublishUnavailable:
    if isinstance(exc, PublishUnavailable):
        return exc
    if isinstance(exc, nats.errors.NoRespondersError):
        return PublishUnavailable("no JetStream stream accepts the raw subjects")
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError):
        return PublishUnavailable("JetStream did not acknowledge in time")
    if isinstance(exc, msgspec.DecodeError):
        return PublishUnavailable("JetStream answered with something other than an ack")
    if isinstance(exc, nats.errors.Error | OSError):
        return PublishUnavailable(f"NATS error: {exc}")
    raise exc
