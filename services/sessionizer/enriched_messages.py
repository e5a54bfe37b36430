"""The messages one sessionized raw batch becomes: enriched batches per (project, event name) and
session updates per project, each with a deterministic Nats-Msg-Id derived from the raw stream
sequence, so a replay after a crash is dropped by JetStream's dedup window."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from libs.common.schemas.events_v1 import (
    EnrichedBatchV1,
    EventV1,
    SessionUpdateBatchV1,
    SessionUpdateV1,
)
from libs.common.subjects import Subjects, subject_token
from services.sessionizer.session_window import SessionizedBatch, session_update

# Room left under the server's max_payload for headers (msg id, trace context).
HEADER_ALLOWANCE = 4096

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


class OutgoingMessage(msgspec.Struct, frozen=True):
    subject: str
    msg_id: str
    payload: bytes
    events: int  # enriched events carried (0 for session updates)


def build_messages(
    subjects: Subjects, seq: int, sessionized: SessionizedBatch, max_payload: int
) -> list[OutgoingMessage]:
    """Enriched batches then session updates for the raw message at stream sequence `seq`."""
    limit = max(1024, max_payload - HEADER_ALLOWANCE)
    out: list[OutgoingMessage] = []

    by_name: dict[tuple[str, str], list[EventV1]] = {}
    for event in sessionized.events:
        by_name.setdefault((event.project_id, event.name), []).append(event)
    # Two names can share a subject token ("a.b", "a_b"); their ids must still differ.
    tokens = {key: subject_token(key[1]) for key in by_name}
    token_names: dict[tuple[str, str], int] = {}
    for (project_id, _), token in tokens.items():
        key = (project_id, token)
        token_names[key] = token_names.get(key, 0) + 1
    enriched_prefix = subjects.enriched_prefix
    for (project_id, name), events in by_name.items():
        token = tokens[(project_id, name)]
        msg_id = f"{seq}:{project_id}:{token}"
        if token_names[(project_id, token)] > 1:
            msg_id += f":{zlib.crc32(name.encode()):08x}"
        subject = f"{enriched_prefix}{project_id}.{token}"

        def enriched(
            part: list[EventV1], part_id: str, project_id: str = project_id, name: str = name
        ) -> bytes:
            return _encoder.encode(
                EnrichedBatchV1(batch_id=part_id, project_id=project_id, name=name, events=part)
            )

        for part_id, payload, count in _fitting_parts(msg_id, events, enriched, limit):
            out.append(OutgoingMessage(subject, part_id, payload, count))

    by_project: dict[str, list[SessionUpdateV1]] = {}
    for touched in sessionized.touched:
        by_project.setdefault(touched.project_id, []).append(session_update(touched))
    for project_id, updates in by_project.items():

        def update_batch(
            part: list[SessionUpdateV1], part_id: str, project_id: str = project_id
        ) -> bytes:
            return _encoder.encode(
                SessionUpdateBatchV1(batch_id=part_id, project_id=project_id, sessions=part)
            )

        subject = subjects.sessions(project_id)
        for part_id, payload, _ in _fitting_parts(
            f"{seq}:{project_id}", updates, update_batch, limit
        ):
            out.append(OutgoingMessage(subject, part_id, payload, 0))
    return out


def _fitting_parts(
    msg_id: str,
    items: Sequence[T],
    encode: Callable[[list[T], str], bytes],
    limit: int,
) -> list[tuple[str, bytes, int]]:
    """(msg id, payload, item count) parts of at most `limit` bytes each. One part keeps
    `msg_id`; a split (deterministic halving) numbers the parts `msg_id#0`, `msg_id#1`, ..."""
    whole = encode(list(items), msg_id)
    if len(whole) <= limit:
        return [(msg_id, whole, len(items))]
    pieces: list[list[T]] = []
    pending: list[list[T]] = [list(items)]
    while pending:
        piece = pending.pop(0)
        if len(piece) > 1 and len(encode(piece, msg_id + "#0000")) > limit:
            half = len(piece) // 2
            pending[:0] = [piece[:half], piece[half:]]
        else:
            # A single item larger than the limit is sent alone; ingest's 32 KB event cap
            # keeps that far below any server's max_payload.
            pieces.append(piece)
    parts = []
    for index, piece in enumerate(pieces):
        part_id = f"{msg_id}#{index}"
        parts.append((part_id, encode(piece, part_id), len(piece)))
    return parts
