"""The one owner of `events` day partitions (libs/common/event_partitions.py): the aggregator's
and tiering's creators serialize on one advisory lock, concurrent creators of the same days all
succeed with each partition created once, and an empty day's partition is dropped while one
holding rows is kept."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import asyncpg
import pytest

from libs.common.event_partitions import (
    PARTITION_LOCK,
    EventPartitions,
    drop_partition_if_empty,
    ensure_partitions,
    ensure_partitions_ahead,
    partition_name,
)
from services.tiering.maintenance import run_maintenance

pytestmark = pytest.mark.infra

TODAY = date(2026, 3, 30)


async def _exists(pool: asyncpg.Pool, day: date) -> bool:
    return await pool.fetchval("SELECT to_regclass($1)", partition_name(day)) is not None


async def test_tiering_maintenance_creates_partitions_under_the_shared_lock(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", PARTITION_LOCK)
        now = datetime(2026, 3, 30, 12, tzinfo=UTC)
        task = asyncio.create_task(
            run_maintenance(pool, partitions_ahead_days=2, dedup_horizon_days=30, now=now)
        )
        await asyncio.sleep(0.5)
        assert not task.done() and not await _exists(pool, TODAY)
        await holder.execute("SELECT pg_advisory_unlock($1)", PARTITION_LOCK)
    await asyncio.wait_for(task, 10)
    assert await _exists(pool, TODAY)


async def test_the_aggregators_creation_waits_for_the_same_lock(pool: asyncpg.Pool) -> None:
    async def create() -> None:
        async with pool.acquire() as conn:
            await ensure_partitions(conn, [TODAY])

    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", PARTITION_LOCK)
        task = asyncio.create_task(create())
        await asyncio.sleep(0.5)
        assert not task.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", PARTITION_LOCK)
    await asyncio.wait_for(task, 10)
    assert await _exists(pool, TODAY)


async def test_concurrent_creators_of_the_same_days_all_succeed(pool: asyncpg.Pool) -> None:
    async def aggregator() -> None:
        async with pool.acquire() as conn:
            await ensure_partitions_ahead(conn, 3, EventPartitions(), today=TODAY)

    async def tiering() -> None:
        now = datetime(2026, 3, 30, 12, tzinfo=UTC)
        await run_maintenance(pool, partitions_ahead_days=3, dedup_horizon_days=30, now=now)

    await asyncio.gather(*(f() for _ in range(3) for f in (aggregator, tiering)))
    names = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'event_rows'::regclass ORDER BY 1"
    )
    # The aggregator also keeps yesterday's partition, for events arriving around midnight.
    assert [r["relname"] for r in names] == [
        "events_20260329",
        "events_20260330",
        "events_20260331",
        "events_20260401",
        "events_20260402",
    ]


async def test_only_an_empty_partition_is_dropped(pool: asyncpg.Pool) -> None:
    empty, used = date(2026, 3, 1), date(2026, 3, 2)
    async with pool.acquire() as conn:
        await ensure_partitions(conn, [empty, used])
        await conn.execute("INSERT INTO projects (id, name) VALUES ('p1', 'P1')")
        await conn.execute(
            "INSERT INTO events (project_id, ts, event_id, name, type, distinct_id, received_at)"
            " VALUES ('p1', '2026-03-02 12:00+00', 'e1', 'signup', 'track', 'd1', now())"
        )
        assert await drop_partition_if_empty(conn, empty)
        assert not await drop_partition_if_empty(conn, used)
        assert not await drop_partition_if_empty(conn, empty)  # already gone
    assert not await _exists(pool, empty)
    assert await _exists(pool, used)


async def test_a_new_partition_packs_its_columns_and_reads_as_the_old_layout(
    pool: asyncpg.Pool,
) -> None:
    """A partition created now puts the 8-byte columns first and the variable-length ones last,
    so its rows carry less alignment padding; a row reads back the same through `events` from
    it as from a partition in the parent's column order (one an older release created)."""
    old_layout, new_layout = date(2026, 3, 3), date(2026, 3, 4)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE events_20260303 PARTITION OF event_rows"
            " FOR VALUES FROM ('2026-03-03 00:00+00') TO ('2026-03-04 00:00+00')"
        )
        await ensure_partitions(conn, [old_layout, new_layout])
        layout = await conn.fetch(
            "SELECT a.attname, t.typlen, t.typalign FROM pg_attribute a"
            " JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attnum",
            partition_name(new_layout),
        )
        parent = await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'event_rows'::regclass"
            " AND attnum > 0 AND NOT attisdropped"
        )
        assert {r["attname"] for r in layout} == {r["attname"] for r in parent}
        widths = [8 if r["typalign"] == "d" and r["typlen"] > 0 else r["typlen"] for r in layout]
        fixed = [w for w in widths if w > 0]
        assert widths == sorted(fixed, reverse=True) + [-1] * (len(widths) - len(fixed))
        assert layout[0]["attname"] == "ts"
        # Defaults and NOT NULL hold in the new layout too (inserted_xid is filled by default).
        await conn.execute("INSERT INTO projects (id, name) VALUES ('p1', 'P1')")
        for day in ("2026-03-03", "2026-03-04"):
            await conn.execute(
                "INSERT INTO events (project_id, ts, event_id, name, type, distinct_id,"
                " session_id, url, browser, properties, received_at, person_key)"
                f" VALUES ('p1', '{day} 12:00+00', 'e-{day}', 'signup', 'track', 'd1', 's1',"
                " 'https://a.example/x', 'Firefox', '{\"plan\": \"pro\"}',"
                " '2026-03-05 00:00+00', 7)"
            )
        rows = await conn.fetch("SELECT * FROM events WHERE project_id = 'p1' ORDER BY ts")
        first, second = (dict(r) for r in rows)
        for row in (first, second):
            assert row.pop("inserted_xid") > 0
        assert first.pop("ts").day == 3 and second.pop("ts").day == 4
        assert first.pop("event_id") == "e-2026-03-03" and second.pop("event_id") == "e-2026-03-04"
        assert first == second
        assert first["properties"] == '{"plan": "pro"}' and first["person_key"] == 7
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute(
                "INSERT INTO event_rows (project_id, ts, event_id, name, type, received_at)"
                " VALUES ('p1', '2026-03-04 13:00+00', 'e2', 'x', 'track', now())"
            )


async def test_partitions_keep_no_statistics_the_planner_cannot_use(pool: asyncpg.Pool) -> None:
    """A partition created now takes the parent's statistics targets: ANALYZE stores nothing
    of `properties` and a short sample of `session_id`, and still what filters need (`ts`)."""
    day = date(2026, 3, 5)
    async with pool.acquire() as conn:
        await ensure_partitions(conn, [day])
        await conn.execute("INSERT INTO projects (id, name) VALUES ('p1', 'P1')")
        await conn.execute(
            "INSERT INTO event_rows (project_id, ts, event_id, name, type, distinct_id,"
            " session_id, properties, received_at)"
            " SELECT 'p1', '2026-03-05'::timestamptz + make_interval(secs => i), 'e' || i, 'x',"
            " 'track', 'd' || i % 50, 's' || i / 10, jsonb_build_object('n', i % 7), now()"
            " FROM generate_series(1, 3000) AS i"
        )
        await conn.execute(f"ANALYZE {partition_name(day)}")
        stats = {
            r["attname"]: r["width"]
            for r in await conn.fetch(
                "SELECT a.attname, pg_column_size(s.*) AS width FROM pg_statistic s"
                " JOIN pg_attribute a ON a.attrelid = s.starelid AND a.attnum = s.staattnum"
                " WHERE s.starelid = $1::regclass",
                partition_name(day),
            )
        }
        targets = dict(
            await conn.fetch(
                "SELECT attname, attstattarget FROM pg_attribute WHERE attrelid = $1::regclass"
                " AND attname IN ('properties', 'session_id', 'ts')",
                partition_name(day),
            )
        )
    assert targets == {"properties": 0, "session_id": 10, "ts": None}
    assert "properties" not in stats and "received_at" not in stats
    assert {"ts", "distinct_id", "session_id", "project_id"} <= set(stats)
