"""The aggregator's timestamp codec: integer microseconds since 1970-01-01 UTC in and out of
timestamptz, exact over the whole range PostgreSQL stores, and the same instant a datetime
parameter names."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from libs.common import db
from services.aggregator.writer import write_events
from tests.support.recompute import assert_aggregates_match_events, chunks, generate_events

pytestmark = pytest.mark.infra

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


@pytest.fixture
async def micros_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, max_size=2, init=db.timestamps_as_microseconds)
    try:
        yield p
    finally:
        await p.close()


EDGES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1899, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    _EPOCH,
    datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2000, 1, 1, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, 0, 1, tzinfo=UTC),
    datetime(9998, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
]


async def test_integers_round_trip_exactly(micros_pool: asyncpg.Pool) -> None:
    rng = random.Random(13)
    low, high = micros(EDGES[0]), micros(EDGES[-1])
    values = [micros(t) for t in EDGES] + [rng.randint(low, high) for _ in range(2000)]
    got = await micros_pool.fetchval("SELECT array_agg(t) FROM unnest($1::timestamptz[]) t", values)
    assert got == values


async def test_both_parameter_kinds_name_the_instant_plain_connections_read(
    micros_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    plus_two = timezone(timedelta(hours=2))
    await pool.execute("CREATE TABLE stamps (i int, t timestamptz)")
    instants = [*EDGES, datetime(2026, 6, 1, 12, tzinfo=plus_two)]
    records = [(i, t) for i, t in enumerate(instants)]
    records += [(100 + i, micros(t)) for i, t in enumerate(instants)]
    async with micros_pool.acquire() as conn:
        await conn.copy_records_to_table("stamps", records=records, columns=["i", "t"])
        by_micros = dict(await conn.fetch("SELECT i, t FROM stamps"))
    stored = dict(await pool.fetch("SELECT i, t FROM stamps"))
    for i, t in enumerate(instants):
        assert stored[i] == stored[100 + i] == t
        assert by_micros[i] == by_micros[100 + i] == micros(t)


async def test_the_writer_on_the_aggregators_connections_stores_what_it_stores_elsewhere(
    micros_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    events = generate_events(seed=7)
    async with micros_pool.acquire() as conn:
        for batch in chunks(events, 40):
            await write_events(conn, batch)
    async with pool.acquire() as conn:
        await assert_aggregates_match_events(conn)
        stored = await conn.fetch("SELECT event_id, ts, received_at FROM events")
    by_id = {ev.event_id: ev for ev in events}
    assert len(stored) == len(by_id)
    for event_id, ts, received_at in stored:
        assert (ts, received_at) == (by_id[event_id].ts, by_id[event_id].received_at)
