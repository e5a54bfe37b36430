"""The dead-letter queue: messages a consumer gave up on, kept with the reason in the DLQ stream
(`<prefix>.dlq.v1.<service>`), listed and replayed by operators (`strata dlq list|replay`).

A dead letter carries the original payload and these headers (shared by every service):
`Strata-DLQ-Reason`, `Strata-DLQ-Service`, `Strata-DLQ-Original-Subject`,
`Strata-DLQ-Original-Seq`, and, from the aggregator, `Strata-DLQ-Original-Stream`,
`Strata-DLQ-Deliveries` and `Strata-DLQ-Failed-At`. A dead letter of one event cut out of a
message (the rest of which was stored) also has `Strata-DLQ-Event-Id`, and its payload is a
message of that event alone.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.common.subjects import Subjects

REASON = "Strata-DLQ-Reason"
SERVICE = "Strata-DLQ-Service"
ORIGINAL_SUBJECT = "Strata-DLQ-Original-Subject"
ORIGINAL_SEQ = "Strata-DLQ-Original-Seq"
ORIGINAL_STREAM = "Strata-DLQ-Original-Stream"
DELIVERIES = "Strata-DLQ-Deliveries"
FAILED_AT = "Strata-DLQ-Failed-At"
EVENT_ID = "Strata-DLQ-Event-Id"
MAX_REASON_CHARS = 1000


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


def _header_value(text: str) -> str:
    """A single-line header value (NATS headers cannot carry newlines)."""
    return " ".join(text.split())[:MAX_REASON_CHARS] or "-"


async def publish_dead_letter(
    js: JetStreamContext,
    subjects: Subjects,
    service: str,
    msg: Msg,
    reason: str,
    publish_timeout_s: float = 5.0,
    payload: bytes | None = None,
    event_id: str | None = None,
) -> None:
    """Store `msg` in the DLQ with why it failed (the caller then `term()`s it); with
    `event_id`, store `payload` (that one event of `msg`) instead."""
    meta = msg.metadata
    stream = meta.stream
    stream_seq = meta.sequence.stream
    msg_id = f"{service}:{stream}:{stream_seq}"
    headers = {
        # Deterministic id: a crash between this publish and term() does not dead-letter twice.
        "Nats-Msg-Id": msg_id if event_id is None else f"{msg_id}:{event_id}",
        REASON: _header_value(reason),
        SERVICE: service,
        ORIGINAL_SUBJECT: msg.subject,
        ORIGINAL_STREAM: stream,
        ORIGINAL_SEQ: str(stream_seq),
        DELIVERIES: str(meta.num_delivered),
        FAILED_AT: datetime.now(UTC).isoformat(),
    }
    if event_id is not None:
        headers[EVENT_ID] = _header_value(event_id)
    # Keep the original headers too (trace context), except JetStream's own.
    for key, value in (msg.headers or {}).items():
        if not key.startswith("Nats-") and key not in headers:
            headers[key] = value
    data = msg.data if payload is None else payload
    await js.publish(subjects.dlq(service), data, timeout=publish_timeout_s, headers=headers)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _dead_letter(seq: int, subject: str, headers: dict[str, str], data: bytes) -> DeadLetter:
    return DeadLetter(
        seq=seq,
        service=headers.get(SERVICE) or subject.rsplit(".", 1)[-1],
        reason=headers.get(REASON, ""),
        original_subject=headers.get(ORIGINAL_SUBJECT, ""),
        original_stream=headers.get(ORIGINAL_STREAM),
        original_seq=_int_or_none(headers.get(ORIGINAL_SEQ)),
        deliveries=_int_or_none(headers.get(DELIVERIES)),
        failed_at=headers.get(FAILED_AT),
        event_id=headers.get(EVENT_ID),
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
        original = headers.get(ORIGINAL_SUBJECT)
        if not original:
            continue
        replay_headers = {
            k: v for k, v in headers.items() if not k.startswith(("Strata-DLQ-", "Nats-"))
        }
        # A fresh id (the original is still in the stream's dedup window), stable per dead
        # letter so a replay interrupted before the delete does not publish twice on retry.
        replay_headers["Nats-Msg-Id"] = f"replay:{subjects.dlq_stream}:{seq}"
        await js.publish(original, data, headers=replay_headers)
        await js.delete_msg(subjects.dlq_stream, seq)
        replayed += 1
    return replayed
