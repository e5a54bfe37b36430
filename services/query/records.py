"""Rows of `events` and `sessions` as API records, and the opaque keyset cursor that pages
through events by (ts, event_id)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from libs.common.model.event_encoding import restored_sql
from services.query.params import ParamError
from services.query.responses import EventRecord, SessionRecord

EVENT_FIELDS = tuple(f for f in EventRecord.__struct_fields__ if f != "properties")
# Properties and anonymous_id as they were sent (libs/common/model/event_encoding.py).
EVENT_SELECT = (
    ", ".join(f"{restored_sql(f)} AS {f}" for f in EVENT_FIELDS)
    + f", {restored_sql('properties')}::text AS properties"
)

_SESSION_COLUMNS = tuple(
    f for f in SessionRecord.__struct_fields__ if f not in ("start", "end", "duration_s", "bounce")
)
SESSION_SELECT = (
    ", ".join(f"s.{c}" for c in _SESSION_COLUMNS)
    + ", s.start_ts, s.end_ts, s.interactive_events < 2 AS bounce"
)

_properties = msgspec.json.Decoder(dict[str, Any])
_cursor_json = msgspec.json.Decoder(tuple[int, str])
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_record(row: asyncpg.Record) -> EventRecord:
    raw = row["properties"]
    return EventRecord(
        **{f: row[f] for f in EVENT_FIELDS}, properties=_properties.decode(raw) if raw else {}
    )


def session_record(row: asyncpg.Record) -> SessionRecord:
    start: datetime = row["start_ts"]
    end: datetime = row["end_ts"]
    return SessionRecord(
        **{c: row[c] for c in _SESSION_COLUMNS},
        start=start,
        end=end,
        duration_s=(end - start).total_seconds(),
        bounce=row["bounce"],
    )


def encode_cursor(ts: datetime, event_id: str) -> str:
    """An opaque position after the event (ts, event_id); microseconds keep it exact."""
    micros = (ts - _EPOCH) // timedelta(microseconds=1)
    raw = msgspec.json.encode((micros, event_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, event_id = _cursor_json.decode(raw)
        # A forged position off the calendar, or an id text cannot hold, is no cursor of ours.
        position = _EPOCH + timedelta(microseconds=micros)
        if "\x00" in event_id:
            raise ValueError("NUL in the event id")
    except (binascii.Error, ValueError, OverflowError, TypeError, msgspec.DecodeError):
        raise ParamError("cursor", "not a cursor returned by this endpoint") from None
    return position, event_id
