"""The embedded infrastructure and migrations the whole stack stands on."""

from __future__ import annotations

import asyncpg
import pytest
from nats.js.api import StoreCompression

from libs.common import db
from libs.common.nats_io import ensure_streams

pytestmark = pytest.mark.infra


async def test_migrations_are_idempotent_and_create_day_partitions(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await db.migrate(conn) == []  # the template already applied them all
        await conn.execute("SELECT ensure_event_partitions('2026-01-30'::date, 3)")
        await conn.execute("SELECT ensure_event_partitions('2026-01-30'::date, 3)")
        parts = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'event_rows'::regclass ORDER BY 1"
        )
        assert [p["relname"] for p in parts] == [
            "events_20260130",
            "events_20260131",
            "events_20260201",
        ]
        # A row lands in the partition of its UTC day.
        await conn.execute(
            "INSERT INTO projects (id, name) VALUES ('p1', 'P1');"
            "INSERT INTO events (project_id, ts, event_id, name, type, distinct_id, received_at)"
            " VALUES ('p1', '2026-01-31 23:59:59.999+00', 'e1', 'x', 'track', 'd', now())"
        )
        assert await conn.fetchval("SELECT count(*) FROM events_20260131") == 1
    finally:
        await conn.close()


async def test_jetstream_dedups_a_republished_message_id(js, subjects) -> None:  # type: ignore[no-untyped-def]
    first = await js.publish(subjects.raw(0), b"a", headers={"Nats-Msg-Id": "m1"})
    again = await js.publish(subjects.raw(0), b"a", headers={"Nats-Msg-Id": "m1"})
    assert not first.duplicate
    assert again.duplicate
    info = await js.stream_info(subjects.raw_stream)
    assert info.state.messages == 1


async def test_streams_of_an_older_release_get_their_compression_and_keep_their_messages(  # type: ignore[no-untyped-def]
    js, subjects
) -> None:
    """A stream whose compression differs from its definition is switched at the next
    start-up (an uncompressed enriched stream to S2, an S2 raw stream back to none), with an
    operator's own limit kept and no stored message lost."""
    wanted = {
        subjects.enriched_stream: (StoreCompression.NONE, StoreCompression.S2),
        subjects.raw_stream: (StoreCompression.S2, StoreCompression.NONE),
    }
    for stream, (older, _) in wanted.items():
        config = (await js.stream_info(stream)).config
        config.compression = older
        config.max_msgs = 1_000_000  # an operator's limit, not managed by ensure_streams
        await js.update_stream(config)
    await js.publish(subjects.raw(0), b"kept", headers={"Nats-Msg-Id": "before-upgrade"})
    await js.publish(
        subjects.enriched("p1", "x"), b"kept", headers={"Nats-Msg-Id": "before-upgrade"}
    )
    await ensure_streams(js, subjects)
    for stream, (_, current) in wanted.items():
        info = await js.stream_info(stream)
        assert info.config.compression == current
        assert info.config.max_msgs == 1_000_000
        assert info.state.messages == 1
