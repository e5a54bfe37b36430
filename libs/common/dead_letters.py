"""The dead-letter queue: messages a consumer gave up on, kept with the reason in the DLQ stream
(`<prefix>.dlq.v1.<service>`), listed and replayed by operators (`strata dlq list|replay`).

One policy for every consumer (`DlqPolicy`): the same headers (`DlqHeader`), the original
message's own headers kept (trace context among them), deterministic message ids so a crash or
a replay from a checkpoint never dead-letters twice, and the same cap (`DlqLimit`): by count and
by ratio over a sliding time window, past which the consumer stops instead of emptying its
stream into the DLQ.

A dead letter of one event cut out of a message (the rest of which was processed) also has
`Strata-DLQ-Event-Id`, and its payload is a message of that event alone.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.common.errors import StrataError
from libs.common.subjects import Subjects


class DlqHeader(StrEnum):
    """The headers of a dead letter (documented in docs/subjects.md)."""

    REASON = "Strata-DLQ-Reason"
    SERVICE = "Strata-DLQ-Service"
    ORIGINAL_SUBJECT = "Strata-DLQ-Original-Subject"
    ORIGINAL_STREAM = "Strata-DLQ-Original-Stream"
    ORIGINAL_SEQ = "Strata-DLQ-Original-Seq"
    DELIVERIES = "Strata-DLQ-Deliveries"
    FAILED_AT = "Strata-DLQ-Failed-At"
    EVENT_ID = "Strata-DLQ-Event-Id"


_DLQ_PREFIX = "Strata-DLQ-"
_JETSTREAM_PREFIX = "Nats-"  # JetStream's own (message id, expected sequence, ...)
MAX_REASON_CHARS = 1000


class DeadLetterCapExceeded(StrataError):
    """Dead-lettering one more message would pass the cap: stop rather than drain."""

    code = "dead_letter_cap_exceeded"


class DlqSettings(Protocol):
    """The settings every consumer with a DLQ reads (STRATA_DLQ_*)."""

    @property
    def dlq_window_s(self) -> float: ...
    @property
    def dlq_max_count(self) -> int: ...
    @property
    def dlq_max_ratio(self) -> float: ...
    @property
    def dlq_ratio_min_messages(self) -> int: ...


@dataclass(frozen=True)
class DlqLimit:
    """Dead letters allowed over a sliding window of `window_s`: at most `max_count`, and at
    most `max_ratio` of the messages handled once the window holds `min_messages`."""

    window_s: float
    max_count: int
    max_ratio: float
    min_messages: int

    @classmethod
    def from_settings(cls, settings: DlqSettings) -> DlqLimit:
        return cls(
            settings.dlq_window_s,
            settings.dlq_max_count,
            settings.dlq_max_ratio,
            settings.dlq_ratio_min_messages,
        )


class DeadLetterBudget:
    """What a `DlqLimit` still allows, counted per second over its window."""

    def __init__(self, limit: DlqLimit) -> None:
        self.limit = limit
        self._seconds: deque[list[int]] = deque()  # [second, handled, dead] per second

    def _bucket(self) -> list[int]:
        now = int(time.monotonic())
        while self._seconds and self._seconds[0][0] <= now - self.limit.window_s:
            self._seconds.popleft()
        if not self._seconds or self._seconds[-1][0] != now:
            self._seconds.append([now, 0, 0])
        return self._seconds[-1]

    def record_handled(self, count: int = 1) -> None:
        """Account messages handled without a dead letter."""
        self._bucket()[1] += count

    def spend(self) -> None:
        """Account one dead letter, or raise DeadLetterCapExceeded if it would pass the cap."""
        limit = self.limit
        bucket = self._bucket()
        handled = sum(b[1] for b in self._seconds) + 1
        dead = sum(b[2] for b in self._seconds) + 1
        if dead > limit.max_count:
            raise DeadLetterCapExceeded(
                f"{dead} dead letters within {limit.window_s:g}s would pass"
                f" dlq_max_count={limit.max_count}"
            )
        if handled >= limit.min_messages and dead / handled > limit.max_ratio:
            raise DeadLetterCapExceeded(
                f"{dead} of the last {handled} messages would be dead-lettered, past"
                f" dlq_max_ratio={limit.max_ratio:g}"
            )
        bucket[1] += 1
        bucket[2] += 1


def _header_value(text: str) -> str:
    """A single-line header value (NATS headers cannot carry newlines)."""
    return " ".join(text.split())[:MAX_REASON_CHARS] or "-"


def dead_letter_headers(
    service: str, msg: Msg, reason: str, event_id: str | None = None, part: str | None = None
) -> dict[str, str]:
    """The headers of `msg`'s dead letter (or, with `event_id`, of that one event of it,
    `part` telling it apart from the message's other events in the message id)."""
    meta = msg.metadata
    msg_id = f"{service}:{meta.stream}:{meta.sequence.stream}"
    if event_id is not None:
        msg_id = f"{msg_id}:{part if part is not None else event_id}"
    headers = {
        # Deterministic: a crash (or a replay from a checkpoint) between this publish and the
        # message's settlement does not dead-letter it twice.
        "Nats-Msg-Id": msg_id,
        DlqHeader.REASON: _header_value(reason),
        DlqHeader.SERVICE: service,
        DlqHeader.ORIGINAL_SUBJECT: msg.subject,
        DlqHeader.ORIGINAL_STREAM: meta.stream,
        DlqHeader.ORIGINAL_SEQ: str(meta.sequence.stream),
        DlqHeader.DELIVERIES: str(meta.num_delivered),
        DlqHeader.FAILED_AT: datetime.now(UTC).isoformat(),
    }
    if event_id is not None:
        headers[DlqHeader.EVENT_ID] = _header_value(event_id)
    # The original's own headers too (trace context, so the failure joins its trace), except
    # JetStream's and those of an earlier dead-lettering.
    for key, value in (msg.headers or {}).items():
        if not key.startswith((_JETSTREAM_PREFIX, _DLQ_PREFIX)):
            headers[key] = value
    return headers


class DlqPolicy:
    """How one consumer dead-letters: where, with which headers, and how many it may."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        service: str,
        limit: DlqLimit,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self.js = js
        self.subjects = subjects
        self.service = service
        self.budget = DeadLetterBudget(limit)
        self.publish_timeout_s = publish_timeout_s

    def record_handled(self, count: int = 1) -> None:
        """Account messages handled without a dead letter (the ratio's denominator)."""
        self.budget.record_handled(count)

    async def dead_letter(
        self,
        msg: Msg,
        reason: str,
        *,
        payload: bytes | None = None,
        event_id: str | None = None,
        part: str | None = None,
    ) -> None:
        """Store `msg` in the DLQ with why it failed (the caller then settles it); with
        `event_id`, store `payload` (that one event of `msg`) instead. Raises
        DeadLetterCapExceeded, storing nothing, when the cap would be passed."""
        self.budget.spend()
        headers = dead_letter_headers(self.service, msg, reason, event_id, part)
        data = msg.data if payload is None else payload
        await self.js.publish(
            self.subjects.dlq(self.service), data, timeout=self.publish_timeout_s, headers=headers
        )


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One message in the DLQ stream."""

    seq: int  # sequence in the DLQ stream: what `replay_dead_letters(seqs=...)` takes
    service: str
    reason: str
    original_subject: str
    original_stream: str | None = None
    original_seq: int | None = None
    deliveries: int | None = None
    failed_at: str | None = None
    event_id: str | None = None  # set when one event of a message was dead-lettered
    size: int  # payload bytes


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _dead_letter(seq: int, subject: str, headers: dict[str, str], data: bytes) -> DeadLetter:
    return DeadLetter(
        seq=seq,
        service=headers.get(DlqHeader.SERVICE) or subject.rsplit(".", 1)[-1],
        reason=headers.get(DlqHeader.REASON, ""),
        original_subject=headers.get(DlqHeader.ORIGINAL_SUBJECT, ""),
        original_stream=headers.get(DlqHeader.ORIGINAL_STREAM),
        original_seq=_int_or_none(headers.get(DlqHeader.ORIGINAL_SEQ)),
        deliveries=_int_or_none(headers.get(DlqHeader.DELIVERIES)),
        failed_at=headers.get(DlqHeader.FAILED_AT),
        event_id=headers.get(DlqHeader.EVENT_ID),
        size=len(data),
    )


async def _next_message(
    js: JetStreamContext, subjects: Subjects, from_seq: int
) -> tuple[int, str, dict[str, str], bytes] | None:
    """The first DLQ message at or after `from_seq` (skipping replayed, deleted ones)."""
    try:
        raw = await js.get_msg(
            subjects.dlq_stream, seq=from_seq, subject=subjects.dlq_all, next=True
        )
    except NotFoundError:
        return None
    assert raw.seq is not None
    return raw.seq, raw.subject or "", dict(raw.headers or {}), raw.data or b""


async def list_dead_letters(
    js: JetStreamContext, subjects: Subjects, limit: int = 100
) -> list[DeadLetter]:
    """The oldest `limit` dead letters of every service, in DLQ order."""
    found: list[DeadLetter] = []
    seq = 1
    while len(found) < limit:
        item = await _next_message(js, subjects, seq)
        if item is None:
            break
        found.append(_dead_letter(*item))
        seq = item[0] + 1
    return found


async def replay_dead_letters(
    js: JetStreamContext, subjects: Subjects, seqs: list[int] | None = None
) -> int:
    """Re-publish dead letters to their original subjects, then delete them from the DLQ;
    `seqs` None replays all. Returns how many were replayed (unknown seqs are skipped)."""
    replayed = 0
    if seqs is None:
        targets: list[tuple[int, str, dict[str, str], bytes]] = []
        seq = 1
        while (item := await _next_message(js, subjects, seq)) is not None:
            targets.append(item)
            seq = item[0] + 1
    else:
        targets = []
        for wanted in sorted(set(seqs)):
            item = await _next_message(js, subjects, wanted)
            if item is not None and item[0] == wanted:
                targets.append(item)
    for seq, _subject, headers, data in targets:
        original = headers.get(DlqHeader.ORIGINAL_SUBJECT)
        if not original:
            continue
        replay_headers = {
            k: v for k, v in headers.items() if not k.startswith((_DLQ_PREFIX, _JETSTREAM_PREFIX))
        }
        # A fresh id (the original is still in the stream's dedup window), stable per dead
        # letter so a replay interrupted before the delete does not publish twice on retry.
        replay_headers["Nats-Msg-Id"] = f"replay:{subjects.dlq_stream}:{seq}"
        await js.publish(original, data, headers=replay_headers)
        await js.delete_msg(subjects.dlq_stream, seq)
        replayed += 1
    return replayed
