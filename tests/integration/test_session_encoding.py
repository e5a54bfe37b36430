"""Sessions store the entry page's, exit page's and source's event time and id only when they
are not the session's first event's (migration 0027, libs/common/model/session_encoding.py),
and every reader (the merge, the recomputes) reads back what a plain row would hold. Rows
stored before the migration are encoded by it; rows from before migration 0016 (no ids) read
as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from libs.common import db
from libs.common.model.session_encoding import (
    ENCODED_COLUMNS,
    decoded_columns_sql,
    decoded_session,
)
from services.aggregator.writer import SESSION_COLUMNS, write_events
from tests.support.recompute import expected_sessions, fetch_events, make_event, stored_sessions

pytestmark = pytest.mark.infra

T0 = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)
LEAN = 27  # the migration that encodes them


async def _rows(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    """session_id -> (the stored row, the row read back in SQL)."""
    raw = {r["session_id"]: dict(r) for r in await conn.fetch("SELECT * FROM sessions")}
    read = await conn.fetch(f"SELECT {decoded_columns_sql(SESSION_COLUMNS)} FROM sessions s")
    for r in read:
        # SQL and Python read them back the same.
        assert {c: r[c] for c in ENCODED_COLUMNS} == {
            c: decoded_session(raw[r["session_id"]])[c] for c in ENCODED_COLUMNS
        }
    return raw


async def test_first_event_values_are_stored_once_and_read_back(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # s-1: one pageview with a channel (entry, exit and source are its first event).
        await write_events(conn, [make_event(event_id="a1", session_id="s-1", channel="Direct")])
        # s-2: a scroll first, then pageviews: entry and exit are other events.
        await write_events(
            conn,
            [
                make_event(event_id="b1", session_id="s-2", type="track", name="scroll"),
                make_event(event_id="b2", session_id="s-2", ts=T0 + timedelta(minutes=1)),
                make_event(event_id="b3", session_id="s-2", ts=T0 + timedelta(minutes=2)),
            ],
        )
        raw = await _rows(conn)
        one = raw["s-1"]
        assert one["first_event_id"] == "a1"
        assert all(one[c] is None for c in ENCODED_COLUMNS)
        assert decoded_session(one)["entry_ts"] == decoded_session(one)["source_ts"] == T0
        assert decoded_session(one)["exit_event_id"] == "a1"
        two = raw["s-2"]
        assert (two["entry_event_id"], two["exit_event_id"]) == ("b2", "b3")
        # s-1 gains an earlier event without a pageview: its entry is no longer the first.
        await write_events(
            conn,
            [
                make_event(
                    event_id="a0",
                    session_id="s-1",
                    ts=T0 - timedelta(minutes=5),
                    type="track",
                    name="scroll",
                )
            ],
        )
        one = (await _rows(conn))["s-1"]
        assert (one["first_event_id"], one["entry_event_id"], one["entry_ts"]) == ("a0", "a1", T0)
        # Whatever the encoding, the rows equal a recomputation from the events.
        assert await stored_sessions(conn) == expected_sessions(await fetch_events(conn))


async def test_the_migration_encodes_stored_rows_and_old_rows_read_as_before(
    empty_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = db.migration_files()
    monkeypatch.setattr(db, "migration_files", lambda: [m for m in every if m[0] < LEAN])
    await db.migrate(empty_db)
    # Written by the previous release (today's writer fails on it: start_event_id): a session
    # with ids, all its first event's, and one from before migration 0016 (no ids).
    await empty_db.execute(
        "INSERT INTO sessions (project_id, session_id, distinct_id, start_ts, end_ts, events,"
        " interactive_events, pageviews, entry_path, entry_ts, exit_path, exit_ts, channel,"
        " is_bot, start_event_id, entry_event_id, exit_event_id, source_ts, source_event_id)"
        " VALUES ('acme', 's-1', 'anon-1', $1, $1, 1, 1, 1, '/', $1, '/', $1, 'Direct', false,"
        " 'a1', 'a1', 'a1', $1, 'a1'),"
        " ('acme', 's-old', 'anon-1', $1, $1, 1, 1, 1, '/', $1, '/', $1, 'Direct', false,"
        " NULL, NULL, NULL, NULL, NULL)",
        T0,
    )
    plain = {r["session_id"]: dict(r) for r in await empty_db.fetch("SELECT * FROM sessions")}
    assert plain["s-1"]["entry_event_id"] == plain["s-1"]["start_event_id"] == "a1"
    monkeypatch.setattr(db, "migration_files", lambda: every)
    assert any(name.startswith(f"00{LEAN}_") for name in await db.migrate(empty_db))

    raw = await _rows(empty_db)
    assert all(raw["s-1"][c] is None for c in ENCODED_COLUMNS)
    for session_id, row in raw.items():
        read = decoded_session(row)
        assert {c: read[c] for c in ENCODED_COLUMNS} == {
            c: plain[session_id][c] if plain[session_id][c] is not None or c != "source_ts" else T0
            for c in ENCODED_COLUMNS
        }
    # The old row reads as (start_ts, no id): an event at the same time with any id comes after
    # it, so the stored entry stays.
    await write_events(empty_db, [make_event(event_id="z", session_id="s-old", path="/later")])
    old = decoded_session((await _rows(empty_db))["s-old"])
    assert (old["entry_path"], old["entry_ts"], old["pageviews"]) == ("/", T0, 2)
