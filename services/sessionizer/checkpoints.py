"""Sessionizer checkpoints: a partition's session state and the raw stream sequence it reflects,
stored so that they always agree (each checkpoint is one transaction).

A checkpoint writes only what changed since the previous one: the partition's row in
`sessionizer_checkpoints` holds its whole state as of its last rewrite (the base), and each
checkpoint since adds a row to `sessionizer_checkpoint_changes` with the persons it changed or
forgot and the partition's clocks, numbered 1, 2, ... (the partition row's `changes` says how
many belong to it, and its `stream_seq` is the latest checkpoint's). Restoring applies them to
the base in order. Once the changes stored add up to the base's own size (or to
MAX_CHANGES rows), the next checkpoint rewrites the base and drops them, in one transaction:
so a checkpoint's WAL and the table's size follow what changes, not the whole state, and the
table holds at most about twice the compressed state (docs/storage.md, "Sessionizer
checkpoints").

States and changes are msgpack compressed with zlib (level 1: ~0.5 ms per 30 KB, about 2.3x
smaller on generated traffic), stored EXTERNAL so PostgreSQL does not try to compress them
again (migrations 0021, 0028). A checkpoint of an older release (one row, no changes) is read
as it was.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable

import asyncpg
import msgspec

from services.sessionizer.session_window import PartitionSessions, PersonSessions

_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(PartitionSessions)

# A base is rewritten once the changes stored since add up to its size, or to this many rows
# (they are all read back at a restart).
MAX_CHANGES = 100


class Checkpoint(msgspec.Struct, kw_only=True):
    """Everything up to and including raw stream sequence `stream_seq` is reflected in `state`
    (0: nothing processed yet)."""

    stream_seq: int
    state: PartitionSessions


class StateChanges(msgspec.Struct, array_like=True):
    """What one checkpoint changed in a partition's state: each changed person as it is now,
    None for a person forgotten (or never held), and the partition's clocks."""

    persons: dict[str, dict[str, PersonSessions | None]]  # project_id -> distinct_id -> person
    event_clock_us: int
    received_clock_us: int
    last_prune_received_us: int
    messages_since_prune: int


_changes_encoder = msgspec.msgpack.Encoder()
_changes_decoder = msgspec.msgpack.Decoder(StateChanges)

# Compressed blobs start with this marker. A state checkpointed by an older release is plain
# msgpack of a map, whose first byte (0x80-0x8f, 0xde or 0xdf) is never "Z".
_COMPRESSED = b"Z1"


def encode_state(state: PartitionSessions) -> bytes:
    return _COMPRESSED + zlib.compress(_state_encoder.encode(state), 1)


def decode_state(blob: bytes) -> PartitionSessions:
    if blob.startswith(_COMPRESSED):
        return _state_decoder.decode(zlib.decompress(blob[len(_COMPRESSED) :]))
    return _state_decoder.decode(blob)


def changes_of(state: PartitionSessions, changed: Iterable[tuple[str, str]]) -> StateChanges:
    """The persons `changed` (project_id, distinct_id) as `state` holds them now."""
    persons: dict[str, dict[str, PersonSessions | None]] = {}
    held = state.persons
    for project_id, distinct_id in changed:
        people = held.get(project_id)
        person = people.get(distinct_id) if people is not None else None
        persons.setdefault(project_id, {})[distinct_id] = person
    return StateChanges(
        persons=persons,
        event_clock_us=state.event_clock_us,
        received_clock_us=state.received_clock_us,
        last_prune_received_us=state.last_prune_received_us,
        messages_since_prune=state.messages_since_prune,
    )


def apply_changes(state: PartitionSessions, changes: StateChanges) -> None:
    """Bring `state` (as of the checkpoint before `changes`) to the checkpoint of `changes`."""
    for project_id, changed in changes.persons.items():
        people = state.persons.get(project_id)
        if people is None:
            people = state.persons[project_id] = {}
        for distinct_id, person in changed.items():
            if person is None:
                people.pop(distinct_id, None)
            else:
                people[distinct_id] = person
        if not people:  # as `prune` leaves it: no project without persons
            del state.persons[project_id]
    state.event_clock_us = changes.event_clock_us
    state.received_clock_us = changes.received_clock_us
    state.last_prune_received_us = changes.last_prune_received_us
    state.messages_since_prune = changes.messages_since_prune


def encode_changes(changes: StateChanges) -> bytes:
    return _COMPRESSED + zlib.compress(_changes_encoder.encode(changes), 1)


def decode_changes(blob: bytes) -> StateChanges:
    return _changes_decoder.decode(zlib.decompress(blob[len(_COMPRESSED) :]))


class PartitionCheckpoints:
    """The checkpoints of one partition: loads the last one, and writes each next one as the
    persons changed since (or as a whole new base, when the changes have grown to its size).

    Only the partition's owner writes them; after a failed write, load again before the next
    (a commit whose outcome is unknown leaves the counters below unknown too).
    """

    def __init__(self, pool: asyncpg.Pool, stream: str, partition: int) -> None:
        self._pool = pool
        self._stream = stream
        self._partition = partition
        self._has_base = False
        self._changes = 0  # change rows stored since the base
        self._base_bytes = 0
        self._changes_bytes = 0

    async def load(self) -> Checkpoint:
        """The partition's last checkpoint, or an empty one when it never checkpointed."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(
                "SELECT stream_seq, base_state, changes FROM sessionizer_checkpoints"
                " WHERE stream = $1 AND partition = $2",
                self._stream,
                self._partition,
            )
            if row is None:
                self._has_base = False
                self._changes = self._base_bytes = self._changes_bytes = 0
                return Checkpoint(stream_seq=0, state=PartitionSessions())
            rows = await conn.fetch(
                "SELECT persons FROM sessionizer_checkpoint_changes"
                " WHERE stream = $1 AND partition = $2 AND change <= $3 ORDER BY change",
                self._stream,
                self._partition,
                row["changes"],
            )
        if len(rows) != row["changes"]:
            raise RuntimeError(
                f"checkpoint of {self._stream} partition {self._partition} lists"
                f" {row['changes']} changes, {len(rows)} stored"
            )
        state = decode_state(row["base_state"])
        for change in rows:
            apply_changes(state, decode_changes(change["persons"]))
        self._has_base = True
        self._changes = row["changes"]
        self._base_bytes = len(row["base_state"])
        self._changes_bytes = sum(len(change["persons"]) for change in rows)
        return Checkpoint(stream_seq=row["stream_seq"], state=state)

    async def save(
        self, stream_seq: int, state: PartitionSessions, changed: Collection[tuple[str, str]]
    ) -> int:
        """Store `state` as of raw sequence `stream_seq`, given every person changed or
        forgotten since the last save or load; returns the bytes of state written."""
        # When most persons changed, their changes would be about the whole state's size.
        if (
            self._has_base
            and self._changes < MAX_CHANGES
            and 2 * len(changed) < max(1, state.person_count())
        ):
            blob = encode_changes(changes_of(state, changed))
            if self._changes_bytes + len(blob) < self._base_bytes:
                await self._append(stream_seq, blob)
                return len(blob)
        blob = encode_state(state)
        await self._rewrite(stream_seq, blob)
        return len(blob)

    async def _append(self, stream_seq: int, blob: bytes) -> None:
        change = self._changes + 1
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO sessionizer_checkpoint_changes (stream, partition, change, persons)"
                " VALUES ($1, $2, $3, $4)",
                self._stream,
                self._partition,
                change,
                blob,
            )
            # The base (out of line) is not rewritten by an update of the row's other columns.
            await conn.execute(
                "UPDATE sessionizer_checkpoints"
                " SET stream_seq = $3, changes = $4, updated_at = now()"
                " WHERE stream = $1 AND partition = $2",
                self._stream,
                self._partition,
                stream_seq,
                change,
            )
        self._changes = change
        self._changes_bytes += len(blob)

    async def _rewrite(self, stream_seq: int, blob: bytes) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO sessionizer_checkpoints"
                " (stream, partition, stream_seq, base_state, changes, updated_at)"
                " VALUES ($1, $2, $3, $4, 0, now())"
                " ON CONFLICT (stream, partition) DO UPDATE"
                " SET stream_seq = EXCLUDED.stream_seq, base_state = EXCLUDED.base_state,"
                " changes = 0, updated_at = now()",
                self._stream,
                self._partition,
                stream_seq,
                blob,
            )
            await conn.execute(
                "DELETE FROM sessionizer_checkpoint_changes WHERE stream = $1 AND partition = $2",
                self._stream,
                self._partition,
            )
        self._has_base = True
        self._changes = 0
        self._base_bytes = len(blob)
        self._changes_bytes = 0
