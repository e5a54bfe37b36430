"""Integer person keys (migration 0024) against a real PostgreSQL: every id gets one key per
project, the same one whatever replays or concurrent writers do, and events carry the keys of
the person and device they name."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import asyncpg
import pytest

from services.aggregator.writer import write_events
from tests.support.recompute import assert_person_keys_match_ids, chunks, generate_events

pytestmark = pytest.mark.infra

MIGRATIONS = Path(__file__).parents[2] / "libs" / "common" / "migrations"


async def keys_of(conn: asyncpg.Connection, project_id: str = "acme") -> dict[str, int]:
    rows = await conn.fetch("SELECT id, key FROM person_keys WHERE project_id = $1", project_id)
    return {r["id"]: r["key"] for r in rows}


async def test_one_writer_numbers_ids_densely_and_replays_keep_them(pool: asyncpg.Pool) -> None:
    events = generate_events(seed=11, persons=25)
    async with pool.acquire() as conn:
        for batch in chunks(events, 30):
            await write_events(conn, batch)
        keys = await keys_of(conn)
        ids = {ev.distinct_id for ev in events} | {ev.user_id for ev in events if ev.user_id}
        assert set(keys) == ids
        # Dense: one writer leaves no gap, so keys number the project's persons from 0.
        assert sorted(keys.values()) == list(range(len(ids)))
        stored = await conn.fetch("SELECT event_id, person_key, device_key FROM events")
        # A replay (redelivery after a crash) in another batching changes no key.
        for batch in chunks(list(reversed(events)), 17):
            assert (await write_events(conn, batch)).inserted == 0
        assert await keys_of(conn) == keys
        assert await conn.fetch("SELECT event_id, person_key, device_key FROM events") == stored
        await assert_person_keys_match_ids(conn)


async def test_concurrent_writers_agree_on_every_key(pool: asyncpg.Pool) -> None:
    """Three writers (as aggregator replicas) on shuffled copies of the same events, every id
    new to all of them: each id ends with one key, the one every event carries."""
    events = generate_events(seed=12, persons=40)
    rng = random.Random(12)
    orders = []
    for _ in range(3):
        order = events[:]
        rng.shuffle(order)
        orders.append(order)

    async def writer(order: list[object]) -> int:
        async with pool.acquire() as conn:
            return sum([(await write_events(conn, batch)).inserted for batch in chunks(order, 15)])

    inserted = await asyncio.gather(*(writer(o) for o in orders))
    assert sum(inserted) == len(events)
    async with pool.acquire() as conn:
        await assert_person_keys_match_ids(conn)
        keys = await keys_of(conn)
        ids = {ev.distinct_id for ev in events} | {ev.user_id for ev in events if ev.user_id}
        assert set(keys) == ids
        # Keys a writer reserved for ids another keyed first stay unused: gaps, never reuse.
        assert len(set(keys.values())) == len(keys)


async def test_projects_number_their_persons_separately(pool: asyncpg.Pool) -> None:
    acme = generate_events(seed=13, persons=5)
    other = generate_events(seed=13, persons=5, project_id="other")
    async with pool.acquire() as conn:
        await write_events(conn, acme + other)
        assert await keys_of(conn, "acme") == await keys_of(conn, "other")
        assert min((await keys_of(conn, "other")).values()) == 0
        await assert_person_keys_match_ids(conn)


async def test_migration_backfills_rows_written_before_the_keys(pool: asyncpg.Pool) -> None:
    """Rows and aliases stored before migration 0024 (keys NULL, no person_keys) get keys when
    it runs; writers afterwards continue from its counters without reusing a key."""
    before, after = generate_events(seed=14, persons=20), generate_events(seed=15, persons=20)
    # (`events` is a view over `event_rows` since migration 0029: the rows' table is named.)
    migration = re.sub(
        r"\b(ALTER TABLE|UPDATE) events\b",
        r"\1 event_rows",
        (MIGRATIONS / "0024_person_keys.sql").read_text(),
    )
    async with pool.acquire() as conn:
        await write_events(conn, before)
        await conn.execute(
            "UPDATE event_rows SET person_key = NULL, device_key = NULL;"
            " DELETE FROM person_keys; DELETE FROM person_key_counters"
        )
        await conn.execute(migration)  # every statement of it may run again
        await assert_person_keys_match_ids(conn)
        assert await conn.fetchval("SELECT count(*) FROM events WHERE person_key IS NULL") == 0
        await write_events(conn, after)
        await assert_person_keys_match_ids(conn)
        # Rows an aggregator of the previous version wrote after the migration (no keys, ids
        # never keyed): running it again keys them after the keys already given.
        late = generate_events(seed=16, persons=10, project_id="late")
        for batch in chunks(list(reversed(late)), 7):  # keys given out of the ids' order
            await write_events(conn, batch)
        ids = sorted({ev.distinct_id for ev in late} | {ev.user_id for ev in late if ev.user_id})
        ids = ids[::2]  # the others keep their keys, which the new ones must not repeat
        await conn.execute(
            "UPDATE event_rows SET person_key = NULL, device_key = NULL WHERE event_id = ANY($1)",
            [ev.event_id for ev in late],
        )
        await conn.execute(
            "DELETE FROM person_keys WHERE project_id = 'late' AND id = ANY($1)", ids
        )
        async with conn.transaction():
            await conn.execute(migration)
        await assert_person_keys_match_ids(conn)
