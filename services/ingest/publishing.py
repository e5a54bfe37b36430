"""Publishing accepted events to the raw stream, coalesced across requests.

A message costs the NATS server and nats-py far more than the events in it, so the events of
concurrent requests bound for the same person partition are gathered for a short, bounded
linger (or until a message holds `max_message_events` / `max_message_bytes`) into ONE
RawBatchV1 message. A request is answered only after every message holding any of its events
was acknowledged by JetStream; a message that fails fails exactly the requests whose events it
holds. A request's events for one partition stay contiguous and in order (split only across
consecutive messages, published in order on one connection), so a person's order holds.

The Nats-Msg-Id is a hash of the message's (project, event id) pairs: a retry coalesced as
before is dropped by JetStream's dedup window; one coalesced differently is not, and the
aggregator's primary key on the event id stores it once (docs/subjects.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time
from collections.abc import Iterable
from typing import cast

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.context import Context
from prometheus_client import Histogram

from libs.common.errors import StrataError
from libs.common.observability import inject_trace_headers, tracing_enabled
from libs.common.schemas.events_v1 import EventV1, RawBatchV1, raw_batch_encoder
from libs.common.subjects import Subjects, partition_of

log = structlog.get_logger("strata.ingest")
_tracer = trace.get_tracer("strata.ingest")
# Room left under NATS' max_payload for headers and protocol framing.
_PAYLOAD_MARGIN = 8 * 1024
# The status a NATS server answers a request with when nothing subscribes to its subject.
_NO_RESPONDERS = "503"


class _AckError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _JetStreamAck(msgspec.Struct):
    """JetStream's reply to a publish: {"stream", "seq", "duplicate"} or {"error"}."""

    stream: str | None = None
    seq: int | None = None
    duplicate: bool = False
    error: _AckError | None = None


# Decoding the ack with a typed msgspec Struct costs far less than nats-py's JSON + dataclass
# PubAck (what `js.publish` / `js.publish_async` do for every message).
_ack_decoder = msgspec.json.Decoder(_JetStreamAck)


class PublishUnavailable(StrataError):
    """JetStream did not acknowledge (NATS down, no stream, timeout): answer 503."""

    code = "publish_unavailable"
    http_status = 503

    retry_after_s = 2.0


class PublishOverloaded(PublishUnavailable):
    """Too many requests are already waiting on JetStream: answer 503 rather than queue."""

    code = "publish_overloaded"

    retry_after_s = 1.0


def message_id(events: Iterable[EventV1], project_id: str | None = None) -> str:
    """The Nats-Msg-Id of a raw message: a hash of its sorted (project, event id) pairs, so
    the same events published again as one message are dropped by JetStream's dedup window.
    `project_id`, when given, is every event's project (the usual message: one project's
    requests); the same text is then hashed with one join instead of a string per event."""
    if project_id is not None:
        ids = [event.event_id for event in events]
        if ids:
            return _one_project_id(project_id, ids)
    return _pairs_id([(event.project_id, event.event_id) for event in events])


def _one_project_id(project_id: str, ids: list[str]) -> str:
    """`message_id` of one project's events, from their ids (sorted here, in place)."""
    ids.sort()  # with one project, sorting the ids sorts the pairs
    prefix = project_id + "\x1f"
    joined = prefix + ("\n" + prefix).join(ids)
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


def _pairs_id(pairs: Iterable[tuple[str, str]]) -> str:
    """`message_id` of (project, event id) pairs."""
    keys = [f"{project}\x1f{event_id}" for project, event_id in pairs]
    keys.sort()
    return hashlib.blake2b("\n".join(keys).encode(), digest_size=16).hexdigest()


def split_by_partition(events: list[EventV1], partitions: int) -> dict[int, list[EventV1]]:
    """Events grouped by person partition, each group in request order."""
    groups: dict[int, list[EventV1]] = {}
    # A browser's batch is one person's: the partition is computed once per run of one id.
    person: str | None = None
    group: list[EventV1] = []
    for event in events:
        if event.distinct_id != person:
            person = event.distinct_id
            partition = partition_of(person, partitions)
            found = groups.get(partition)
            if found is None:
                found = groups[partition] = []
            group = found
        group.append(event)
    return groups


def encode_raw_batch(batch_id: str, partition: int, fragments: list[bytes]) -> bytes:
    """A RawBatchV1 message from events already encoded by `encode_events` (each fragment a
    comma-separated run of encoded events): events are encoded once, by the request that
    brought them, and only joined here."""
    # One join, one copy of the events (`b"[" + ... + b"]"` would copy them twice more).
    parts = [b"["]
    for fragment in fragments:
        parts.append(fragment)
        parts.append(b",")
    parts[-1] = b"]" if fragments else b"[]"
    events = msgspec.Raw(b"".join(parts))
    # msgspec encodes the value it is given: the Raw is spliced in verbatim, and every other
    # field (present or added later) is encoded from the Struct as usual.
    return raw_batch_encoder.encode(
        RawBatchV1(batch_id=batch_id, partition=partition, events=cast(list[EventV1], events))
    )


def encode_events(events: list[EventV1]) -> bytes:
    """Events as a comma-separated run of JSON objects, ready for `encode_raw_batch`."""
    return raw_batch_encoder.encode(events)[1:-1]


class _Request:
    """One request waiting on the messages that hold its events: one future per request, set
    when the last of them settles, rather than one wait over every message's future (a
    request of 100 people's events spans up to one message per partition)."""

    __slots__ = ("done", "failure", "unsettled")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.unsettled = 0  # messages holding its events not yet acked, failed or expired
        self.failure: PublishUnavailable | None = None  # the first that failed, if any

    def settle(self, failure: PublishUnavailable | None) -> None:
        if failure is not None and self.failure is None:
            self.failure = failure
        self.unsettled -= 1
        if self.unsettled == 0 and not self.done.done():
            self.done.set_result(None)


class _RawMessage:
    """One coalesced message of one partition: open (taking events), then sent, then settled
    by its ack, an error or its deadline."""

    __slots__ = (
        "deadline",
        "event_count",
        "event_ids",
        "fragments",
        "headers",
        "partition",
        "payload",
        "requests",
        "settled",
        "size",
    )

    def __init__(self, partition: int, headers: dict[str, str] | None) -> None:
        self.partition = partition
        self.requests: list[_Request] = []  # every request with events in this message
        self.settled = False
        self.headers = headers
        self.fragments: list[bytes] = []
        # The message's event ids by project, all the Nats-Msg-Id needs: the events themselves
        # are released once encoded.
        self.event_ids: dict[str, list[str]] = {}
        self.event_count = 0
        self.size = 0  # bytes of the fragments and the commas between them
        self.payload = b""  # the encoded message, once closed
        self.deadline: asyncio.TimerHandle | None = None


class RawEventPublisher:
    """Publishes events to `<prefix>.raw.v1.<partition>`, coalescing concurrent requests'
    events per partition, and answers each request once its messages are acknowledged."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        partitions: int,
        timeout_s: float,
        max_in_flight: int,
        latency: Histogram | None = None,
        *,
        linger_s: float = 0.002,
        max_message_events: int = 500,
        max_message_bytes: int = 512 * 1024,
        message_events: Histogram | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._partitions = partitions
        self._timeout_s = timeout_s
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._latency = latency
        self._message_events = message_events
        self._tracing = tracing_enabled()
        self._linger_s = linger_s
        self._max_events = max(max_message_events, 1)
        # Never past what the server accepts, whatever the setting says.
        self._max_bytes = max(min(max_message_bytes, nc.max_payload - _PAYLOAD_MARGIN), 1024)
        self._open: dict[int, _RawMessage] = {}  # partition -> message still taking events
        self._linger: asyncio.Handle | None = None
        # Closed messages in the order they must go out, and those sent awaiting their ack.
        self._outbox: collections.deque[tuple[str, _RawMessage]] = collections.deque()
        self._awaiting: dict[str, _RawMessage] = {}
        self._sender: asyncio.Task[None] | None = None
        self._ack_prefix: str | None = None
        self._next_token = 0

    @property
    def in_flight(self) -> int:
        """Requests waiting on JetStream acks."""
        return self._in_flight

    @property
    def tracing(self) -> bool:
        return self._tracing

    async def publish(
        self, project_id: str, events: list[EventV1], trace_context: Context | None = None
    ) -> int:
        """Publish and await every ack; returns how many messages hold the events. Raises
        PublishUnavailable (or PublishOverloaded) when the events cannot be acknowledged.
        `trace_context` (from the HTTP request's traceparent) parents the publish span.

        The events are encoded at once and not referenced afterwards: a caller that drops its
        own reference before awaiting frees them while they are still in the CPU's caches,
        not after the acks arrive (see `IngestApi._ingest`)."""
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
                request = _Request(asyncio.get_running_loop().create_future())
                messages = self._enqueue(events, request)
                if not messages:
                    return 0
                if span is not None:
                    span.set_attribute("strata.project_id", project_id)
                    span.set_attribute("strata.events", len(events))
                    span.set_attribute("strata.messages", messages)
                del events  # encoded: only their bytes and ids are kept from here on
                # The request's own future: a request that goes away cancels nothing that
                # other requests share.
                await request.done
        finally:
            self._in_flight -= 1
        failure = request.failure
        if failure is not None:
            # A fresh exception per request: the shared one would collect every request's
            # traceback.
            raise type(failure)(*failure.args) from failure
        if self._latency is not None:
            self._latency.observe(time.perf_counter() - started)
        return messages

    # -- coalescing ---------------------------------------------------------------------------

    def _enqueue(self, events: list[EventV1], request: _Request) -> int:
        """Add a request's events to the open messages of their partitions; how many messages
        hold some of them (the request waits for each)."""
        for partition, group in split_by_partition(events, self._partitions).items():
            for run in self._runs(partition, group):
                for part, fragment in self._fragments(run):
                    self._add(partition, part, fragment, request)
        if self._open and self._linger is None:
            loop = asyncio.get_running_loop()
            if self._linger_s > 0:
                self._linger = loop.call_later(self._linger_s, self._close_lingering)
            else:
                # No linger: coalesce what this turn of the event loop accepted.
                self._linger = loop.call_soon(self._close_lingering)
        return request.unsettled

    def _runs(self, partition: int, events: list[EventV1]) -> list[list[EventV1]]:
        """A request's events of one partition cut so that the first run fills the partition's
        open message and each later run is a full message (the last one takes the rest)."""
        message = self._open.get(partition)
        room = self._max_events - message.event_count if message is not None else self._max_events
        if len(events) <= room:
            return [events]
        runs = [events[:room]]
        for start in range(room, len(events), self._max_events):
            runs.append(events[start : start + self._max_events])
        return runs

    def _fragments(self, events: list[EventV1]) -> list[tuple[list[EventV1], bytes]]:
        """Events encoded, in consecutive runs each small enough for one message."""
        fragment = encode_events(events)
        if len(fragment) < self._max_bytes or len(events) == 1:
            # One event is at most max_event_bytes (32 KB), far below max_payload.
            return [(events, fragment)]
        middle = len(events) // 2
        return self._fragments(events[:middle]) + self._fragments(events[middle:])

    def _add(
        self, partition: int, events: list[EventV1], fragment: bytes, request: _Request
    ) -> None:
        message = self._open.get(partition)
        if message is not None and (
            message.event_count + len(events) > self._max_events
            or message.size + len(fragment) + 1 > self._max_bytes
        ):
            self._close(message)
            message = None
        if message is None:
            # The message carries the trace context of the request that opened it.
            headers = inject_trace_headers({}) if self._tracing else None
            message = _RawMessage(partition, headers)
            self._open[partition] = message
        message.fragments.append(fragment)
        project_id = events[0].project_id  # a request's events are one project's
        ids = message.event_ids.get(project_id)
        if ids is None:
            ids = message.event_ids[project_id] = []
        ids += [event.event_id for event in events]
        message.event_count += len(events)
        message.size += len(fragment) + 1
        # A request's fragments in one message are consecutive: it is listed once.
        if not message.requests or message.requests[-1] is not request:
            message.requests.append(request)
            request.unsettled += 1
        if message.event_count >= self._max_events:
            self._close(message)

    def _close_lingering(self) -> None:
        self._linger = None
        for message in list(self._open.values()):
            self._close(message)

    def _close(self, message: _RawMessage) -> None:
        """Stop the message taking events and queue it for sending, its deadline running."""
        del self._open[message.partition]
        by_project = message.event_ids
        message.event_ids = {}
        if len(by_project) == 1:
            [(project_id, ids)] = by_project.items()
            batch_id = _one_project_id(project_id, ids)
        else:
            batch_id = _pairs_id(
                (project_id, event_id) for project_id, ids in by_project.items() for event_id in ids
            )
        message.payload = encode_raw_batch(batch_id, message.partition, message.fragments)
        message.fragments = []
        headers = message.headers or {}
        headers["Nats-Msg-Id"] = batch_id
        message.headers = headers
        self._next_token += 1
        token = str(self._next_token)
        self._awaiting[token] = message
        message.deadline = asyncio.get_running_loop().call_later(
            self._timeout_s, self._expire, token
        )
        self._outbox.append((token, message))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_outbox())

    # -- sending and acks ---------------------------------------------------------------------

    async def _send_outbox(self) -> None:
        """Publish closed messages in order without waiting for acks in between; `_on_ack`
        settles them as JetStream answers."""
        try:
            while self._outbox:
                token, message = self._outbox.popleft()
                if message.settled:
                    continue  # its deadline passed while it waited here
                try:
                    if self._ack_prefix is None:
                        prefix = self._nc.new_inbox() + "."
                        await self._nc.subscribe(prefix + "*", cb=self._on_ack)
                        self._ack_prefix = prefix
                    await self._nc.publish(
                        self._subjects.raw(message.partition),
                        message.payload,
                        reply=self._ack_prefix + token,
                        headers=message.headers,
                    )
                except Exception as exc:  # any failure to send is this message's 503
                    self._settle(token, _unavailable(exc))
        finally:
            self._sender = None

    async def _on_ack(self, msg: Msg) -> None:
        assert self._ack_prefix is not None
        token = msg.subject[len(self._ack_prefix) :]
        if token not in self._awaiting:
            return  # answered after its deadline: the requests already got 503
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            self._settle(token, PublishUnavailable("no JetStream stream accepts the raw subjects"))
            return
        try:
            ack = _ack_decoder.decode(msg.data)
        except msgspec.DecodeError:
            self._settle(
                token, PublishUnavailable("JetStream answered with something other than an ack")
            )
            return
        if ack.error is not None:
            failure = PublishUnavailable(f"JetStream refused the message: {ack.error.description}")
            self._settle(token, failure)
        elif ack.stream is None:
            self._settle(token, PublishUnavailable("no JetStream stream accepts the raw subjects"))
        else:
            self._settle(token, None)

    def _expire(self, token: str) -> None:
        self._settle(token, PublishUnavailable("JetStream did not acknowledge in time"))

    def _settle(self, token: str, failure: PublishUnavailable | None) -> None:
        message = self._awaiting.pop(token, None)
        if message is None or message.settled:
            return
        message.settled = True
        if message.deadline is not None:
            message.deadline.cancel()
        if failure is None and self._message_events is not None:
            self._message_events.observe(message.event_count)
        for request in message.requests:
            request.settle(failure)
        message.payload = b""
        message.requests = []


def _unavailable(exc: BaseException) -> PublishUnavailable:
    if isinstance(exc, PublishUnavailable):
        return exc
    if isinstance(exc, nats.errors.NoRespondersError):
        return PublishUnavailable("no JetStream stream accepts the raw subjects")
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError):
        return PublishUnavailable("JetStream did not acknowledge in time")
    if isinstance(exc, nats.errors.Error | OSError):
        return PublishUnavailable(f"NATS error: {exc}")
    log.error("publish_failed_unexpectedly", exc_info=exc)
    return PublishUnavailable(f"publish failed: {exc!r}")
