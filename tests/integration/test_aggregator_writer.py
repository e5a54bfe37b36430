"""The aggregator's writer against a real PostgreSQL: events stored once, and every rollup,
session and session rollup equal to a recomputation from the stored events."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from libs.common import sketches
from libs.common.event_partitions import EventPartitions
from libs.common.schemas.events_v1 import ALIAS, IDENTIFY
from services.aggregator.consumer import is_transient
from services.aggregator.writer import ConcurrentWriteConflict, event_id_digest, write_events
from tests.support.recompute import (
    assert_aggregates_match_events,
    chunks,
    generate_events,
    make_event,
)

pytestmark = pytest.mark.infra


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[Any]]:
    tables = {
        "events": "SELECT * FROM events ORDER BY event_id",
        "event_ids": "SELECT digest FROM event_ids ORDER BY 1",
        "rollups": "SELECT * FROM rollups ORDER BY 1, 2, 3, 4, 5, 6, 7",
        "sessions": "SELECT * FROM sessions ORDER BY 1, 2",
        "session_rollups": "SELECT * FROM session_rollups ORDER BY 1, 2, 3, 4, 5, 6",
        "person_aliases": "SELECT project_id, distinct_id, person_id FROM person_aliases"
        " ORDER BY 1, 2",
        "persons": "SELECT * FROM persons ORDER BY 1, 2",
    }
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in tables.items()}


async def test_batch_written_twice_changes_nothing(pool: asyncpg.Pool) -> None:
    events = generate_events(seed=1)
    async with pool.acquire() as conn:
        for batch in chunks(events, 40):
            result = await write_events(conn, batch)
            assert (result.received, result.inserted, result.duplicates) == (len(batch),) * 2 + (0,)
        before = await snapshot(conn)
        assert len(before["events"]) == len(events)

        for batch in chunks(list(reversed(events)), 25):
            result = await write_events(conn, batch)
            assert (result.inserted, result.duplicates) == (0, len(batch))
        assert await snapshot(conn) == before
        await assert_aggregates_match_events(conn)


async def test_the_writers_event_id_digest_is_the_databases(pool: asyncpg.Pool) -> None:
    # The writer computes the dedup digests itself; ids stored by migration 0022, erasure or an
    # older release were digested by SQL, and a drift would store a repeat twice.
    pairs = [
        ("p1", "ev-1"),
        ("p1", ""),
        ("12", "3:x"),
        ("1", "23:x"),  # the length prefix keeps these two apart
        ("projét", "événement-✓-𝄞"),  # characters, not bytes, are counted
        ("p", "a" * 300),
    ]
    async with pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT event_id_digest(p, e)::text FROM unnest($1::text[], $2::text[]) AS u(p, e)",
            [p for p, _ in pairs],
            [e for _, e in pairs],
        )
    assert [event_id_digest(p, e) for p, e in pairs] == [r[0].replace("-", "") for r in stored]
    assert len({event_id_digest(p, e) for p, e in pairs}) == len(pairs)


async def test_shuffled_batches_with_repeats_match_recomputation(pool: asyncpg.Pool) -> None:
    events = generate_events(seed=2, persons=40)
    rng = random.Random(7)
    shuffled = events[:]
    rng.shuffle(shuffled)
    # Every batch repeats some events of its own and of earlier batches (redelivery, retries).
    batches = []
    for i, batch in enumerate(chunks(shuffled, 30)):
        batches.append(batch + batch[:3] + shuffled[max(0, i * 30 - 5) : i * 30])
    async with pool.acquire() as conn:
        inserted = 0
        for batch in batches:
            inserted += (await write_events(conn, batch, EventPartitions())).inserted
        assert inserted == len(events)
        rows = await assert_aggregates_match_events(conn)
        assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in events)


async def test_concurrent_writers_never_lose_an_update(pool: asyncpg.Pool) -> None:
    """Two writers (as two aggregator replicas) on overlapping batches touching the same
    rollup keys and sessions: no deadlock, no lost sketch merge, each event once."""
    events = generate_events(seed=3, persons=40)
    rng = random.Random(3)
    orders = []
    for _ in range(2):
        order = events[:]
        rng.shuffle(order)
        orders.append(order)

    async def writer(order: list[Any]) -> int:
        async with pool.acquire() as conn:
            return sum([(await write_events(conn, batch)).inserted for batch in chunks(order, 20)])

    inserted = await asyncio.gather(*(writer(o) for o in orders))
    assert sum(inserted) == len(events)
    async with pool.acquire() as conn:
        await assert_aggregates_match_events(conn)


async def test_many_writers_of_two_projects_with_redeliveries(pool: asyncpg.Pool) -> None:
    """Four writers (replicas and in-flight batches) on batches mixing two projects, every event
    delivered twice in different batches: no deadlock, no lost update, each event once."""
    events = generate_events(seed=4, persons=30) + generate_events(
        seed=5, persons=30, project_id="globex"
    )
    rng = random.Random(4)
    deliveries = events + events
    rng.shuffle(deliveries)
    batches = list(chunks(deliveries, 15))
    queue = iter(batches)

    async def writer() -> int:
        async with pool.acquire() as conn:
            return sum([(await write_events(conn, batch)).inserted for batch in queue])

    inserted = await asyncio.gather(*(writer() for _ in range(4)))
    assert sum(inserted) == len(events)
    async with pool.acquire() as conn:
        rows = await assert_aggregates_match_events(conn)
        assert len(rows) == len(events)
        projects = await conn.fetch("SELECT DISTINCT project_id FROM rollups ORDER BY 1")
        assert [r[0] for r in projects] == ["acme", "globex"]


async def wait_for_lock_wait(
    observer: asyncpg.Connection, backend: int, statement_like: str, step: str
) -> None:
    """Until the batch's backend waits on a lock in the statement matching `statement_like`."""
    for _ in range(500):
        waiting = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND pid = $1 AND query LIKE $2",
            backend,
            statement_like,
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the batch never reached {step}")


async def test_a_rollup_row_created_meanwhile_outside_the_lock_is_retried_not_overwritten(
    pool: asyncpg.Pool,
) -> None:
    """A writer that does not take the derived-tables lock (an older release during a rolling
    update) creates a rollup row the batch is about to create: the batch fails with a
    retryable error, and its retry merges into that row instead of overwriting it."""
    ts = datetime(2024, 3, 4, 10, 5, tzinfo=UTC)
    event = make_event(event_id="e-1", ts=ts, distinct_id="anon-1", anonymous_id="anon-1")
    hour = datetime(2024, 3, 4, 10, tzinfo=UTC)
    async with (
        pool.acquire() as outsider,
        pool.acquire() as conn,
        pool.acquire() as observer,
    ):
        other = outsider.transaction()
        await other.start()
        await outsider.execute(
            "INSERT INTO rollups (project_id, granularity, bucket, name, dim, value, bot, events,"
            " visitors) VALUES ('acme', 'h', $1, '$pageview', '', '', false, 5, $2)",
            hour,
            sketches.sketch_of(["someone-else"]),
        )
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        writing = asyncio.create_task(write_events(conn, [event]))
        # The batch's upsert now waits on the outsider's uncommitted row.
        await wait_for_lock_wait(observer, backend, "%INSERT INTO rollups%", "the rollups upsert")
        await other.commit()
        with pytest.raises(ConcurrentWriteConflict, match="rollup rows expected new"):
            await writing
        assert is_transient(ConcurrentWriteConflict("retry"))
        assert await conn.fetchval("SELECT count(*) FROM event_ids") == 0  # all rolled back

        assert (await write_events(conn, [event])).inserted == 1  # the retry
        row = await conn.fetchrow(
            "SELECT events, visitors FROM rollups WHERE granularity = 'h' AND name = '$pageview'"
            " AND dim = ''"
        )
        assert row["events"] == 6
        assert sketches.estimate([row["visitors"]]) == 2


async def test_a_session_created_meanwhile_outside_the_lock_is_retried_not_overwritten(
    pool: asyncpg.Pool,
) -> None:
    """A writer outside the derived-tables lock creates the session a batch is about to create:
    the batch fails with a retryable error, and its retry merges into that session."""
    ts = datetime(2024, 3, 4, 10, 5, tzinfo=UTC)
    event = make_event(event_id="e-1", ts=ts)
    start, end = datetime(2024, 3, 4, 10, 0, tzinfo=UTC), datetime(2024, 3, 4, 10, 10, tzinfo=UTC)
    async with (
        pool.acquire() as outsider,
        pool.acquire() as conn,
        pool.acquire() as observer,
    ):
        other = outsider.transaction()
        await other.start()
        await outsider.execute(
            "INSERT INTO sessions (project_id, session_id, distinct_id, start_ts, end_ts, events,"
            " interactive_events, pageviews) VALUES ('acme', 's-1', 'anon-1', $1, $2, 2, 2, 0)",
            start,
            end,
        )
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        writing = asyncio.create_task(write_events(conn, [event]))
        # The batch's session merge now waits on the outsider's uncommitted row (the statement
        # is longer than pg_stat_activity keeps: its opening tells it).
        await wait_for_lock_wait(observer, backend, "%WITH merged AS%", "the session merge")
        await other.commit()
        with pytest.raises(ConcurrentWriteConflict):
            await writing
        assert await conn.fetchval("SELECT count(*) FROM event_ids") == 0  # all rolled back
        assert await conn.fetchval("SELECT count(*) FROM session_rollups") == 0

        assert (await write_events(conn, [event])).inserted == 1  # the retry
        row = await conn.fetchrow("SELECT * FROM sessions WHERE session_id = 's-1'")
        assert (row["events"], row["pageviews"], row["start_ts"], row["end_ts"]) == (
            3,
            1,
            start,
            end,
        )


async def test_late_event_moves_the_session_to_its_new_start(pool: asyncpg.Pool) -> None:
    monday = datetime(2024, 3, 11, 0, 5, tzinfo=UTC)
    first = make_event(event_id="e-1", ts=monday, path="/", referrer_domain=None, channel="direct")
    async with pool.acquire() as conn:
        await write_events(conn, [first])
        session = await conn.fetchrow("SELECT * FROM sessions WHERE session_id = 's-1'")
        assert (session["start_ts"], session["entry_path"], session["interactive_events"]) == (
            monday,
            "/",
            1,
        )
        bounce = await conn.fetchrow(
            "SELECT sessions, bounces FROM session_rollups WHERE granularity = 'd' AND dim = ''"
        )
        assert tuple(bounce) == (1, 1)

        # Sunday 23:55, the day before: the session now starts there, from a Google search.
        late = make_event(
            event_id="e-0",
            ts=monday - timedelta(minutes=10),
            path="/landing",
            referrer_domain="google.com",
            channel="organic",
        )
        await write_events(conn, [late])
        session = await conn.fetchrow("SELECT * FROM sessions WHERE session_id = 's-1'")
        assert session["start_ts"] == late.ts
        assert session["end_ts"] == monday
        assert (session["entry_path"], session["exit_path"]) == ("/landing", "/")
        assert (session["channel"], session["referrer_domain"]) == ("organic", "google.com")
        assert (session["events"], session["interactive_events"], session["pageviews"]) == (2, 2, 2)

        rollups = await conn.fetch(
            "SELECT granularity::text AS g, bucket, sessions, bounces, duration_s, pageviews"
            " FROM session_rollups WHERE dim = '' ORDER BY 1, 2"
        )
        sunday = datetime(2024, 3, 10, tzinfo=UTC)
        assert [tuple(r) for r in rollups] == [
            ("d", sunday, 1, 0, 600.0, 2),
            ("h", sunday.replace(hour=23), 1, 0, 600.0, 2),
        ]
        channels = await conn.fetch(
            "SELECT value, sessions FROM session_rollups WHERE granularity = 'd'"
            " AND dim = 'channel'"
        )
        assert [tuple(r) for r in channels] == [("organic", 1)]
        await assert_aggregates_match_events(conn)


async def test_non_interactive_events_do_not_end_a_bounce(pool: asyncpg.Pool) -> None:
    ts = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)
    events = [
        make_event(event_id="e-1", ts=ts),
        make_event(
            event_id="e-2",
            ts=ts + timedelta(seconds=30),
            type="track",
            name="heartbeat",
            non_interactive=True,
        ),
    ]
    async with pool.acquire() as conn:
        await write_events(conn, events)
        row = await conn.fetchrow(
            "SELECT sessions, bounces, events, duration_s FROM session_rollups"
            " WHERE granularity = 'd' AND dim = ''"
        )
        assert tuple(row) == (1, 1, 2, 30.0)
        await write_events(conn, [make_event(event_id="e-3", ts=ts + timedelta(seconds=40))])
        row = await conn.fetchrow(
            "SELECT sessions, bounces, events FROM session_rollups"
            " WHERE granularity = 'd' AND dim = ''"
        )
        assert tuple(row) == (1, 0, 3)


async def test_aliases_and_identify_traits(pool: asyncpg.Pool) -> None:
    t0 = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)
    browse = make_event(event_id="e-1", ts=t0, distinct_id="anon-1", anonymous_id="anon-1")
    identify = make_event(
        event_id="e-2",
        ts=t0 + timedelta(minutes=1),
        type="identify",
        name=IDENTIFY,
        user_id="u-1",
        traits={"plan": "free", "email": "a@acme.test"},
    )
    upgrade = make_event(
        event_id="e-3",
        ts=t0 + timedelta(minutes=5),
        type="identify",
        name=IDENTIFY,
        user_id="u-1",
        traits={"plan": "pro"},
    )
    alias = make_event(
        event_id="e-4",
        ts=t0 + timedelta(minutes=6),
        type="alias",
        name=ALIAS,
        distinct_id="u-1",
        anonymous_id=None,
        user_id="u-1",
        previous_id="legacy-42",
    )
    # An identify from before the upgrade arrives last: it fills gaps, never undoes "pro".
    stale = make_event(
        event_id="e-5",
        ts=t0 + timedelta(minutes=2),
        type="identify",
        name=IDENTIFY,
        user_id="u-1",
        traits={"plan": "trial", "city": "Berlin"},
    )
    async with pool.acquire() as conn:
        await write_events(conn, [browse, identify])
        await write_events(conn, [upgrade, alias])
        await write_events(conn, [stale])
        await write_events(conn, [stale, upgrade])  # redelivered: nothing changes
        aliases = await conn.fetch(
            "SELECT distinct_id, person_id FROM person_aliases ORDER BY distinct_id"
        )
        assert [tuple(r) for r in aliases] == [("anon-1", "u-1"), ("legacy-42", "u-1")]
        person = await conn.fetchrow("SELECT * FROM persons WHERE person_id = 'u-1'")
        assert msgspec.json.decode(person["traits"]) == {
            "plan": "pro",
            "email": "a@acme.test",
            "city": "Berlin",
        }
        assert (person["first_seen"], person["last_seen"]) == (identify.ts, alias.ts)
        assert await conn.fetchval("SELECT count(*) FROM persons") == 1

        # Unique visitors at write time count the user once identified.
        visitors = await conn.fetchval(
            "SELECT visitors FROM rollups WHERE granularity = 'd' AND name = '*' AND dim = ''"
        )
        assert sketches.estimate([visitors]) == 2  # anon-1 before identify, then u-1


async def test_properties_stored_as_jsonb_and_old_days_get_partitions(
    pool: asyncpg.Pool,
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=400)
    event = make_event(
        event_id="e-old",
        ts=long_ago,
        type="track",
        name="purchase",
        properties={"amount": 12.5, "items": [{"sku": "a"}], "note": "naïve ✓"},
    )
    async with pool.acquire() as conn:
        await write_events(conn, [event])
        stored = await conn.fetchrow(
            "SELECT properties->>'note' AS note, (properties->'items'->0->>'sku') AS sku,"
            " tableoid::regclass::text AS part FROM event_rows"
        )
        assert (stored["note"], stored["sku"]) == ("naïve ✓", "a")
        assert stored["part"] == "events_" + long_ago.strftime("%Y%m%d")


async def test_rolled_back_caller_transaction_leaves_nothing(pool: asyncpg.Pool) -> None:
    partitions = EventPartitions()
    event = make_event(event_id="e-1", ts=datetime.now(UTC))
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="abort"):
            async with conn.transaction():
                await write_events(conn, [event], partitions)
                raise RuntimeError("abort")
        assert await conn.fetchval("SELECT count(*) FROM event_ids") == 0
        assert await conn.fetchval("SELECT count(*) FROM rollups") == 0
        # The partition created inside the rolled-back transaction is gone too; the cache must
        # not believe otherwise.
        result = await write_events(conn, [event], partitions)
        assert result.inserted == 1
        await assert_aggregates_match_events(conn)
