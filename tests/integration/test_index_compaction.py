"""Tiering's index compaction (services/tiering/index_compaction.py): the B-tree indexes of
closed days' partitions and of the rollups, left half empty by interleaved writes, are rebuilt
smaller without changing what they answer; an open day is left alone, a rebuilt index is not
rebuilt again until it has grown loose, and what an interrupted rebuild left is dropped."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from libs.common.event_partitions import ensure_partitions, partition_name
from services.tiering.index_compaction import (
    COMPACTION_LOCK,
    QuietTables,
    compact_indexes,
    needs_rebuild,
)
from services.tiering.metrics import TieringMetrics
from services.tiering.service import TieringSchedule
from tests.integration.test_tier_export import strata

pytestmark = pytest.mark.infra

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
CLOSED, OPEN = date(2026, 3, 8), date(2026, 3, 10)  # ended 36 h before NOW; today
PROJECTS = ("p1", "p2", "p3")


async def _interleaved(conn: asyncpg.Connection, day: date, rows: int, first: int = 0) -> None:
    """`rows` events of the three projects taking turns, at times scattered over the day, as a
    backfill's batches write them: nearly every insert lands in the middle of an index."""
    await conn.execute(
        "INSERT INTO event_rows (project_id, ts, event_id, name, type, distinct_id, received_at)"
        " SELECT (ARRAY['p1','p2','p3'])[1 + i % 3],"
        " $1::date + make_interval(secs => i * 7919 % 86400),"
        " 'e' || i, 'page', 'page', 'd' || (i * 7919 % 1000003), now()"
        " FROM generate_series($2::int, $2::int + $3::int - 1) AS i",
        day,
        first,
        rows,
    )


async def _indexes(conn: asyncpg.Connection, table: str) -> dict[str, tuple[int, int]]:
    """A table's B-tree indexes: (size in bytes, relfilenode) by name."""
    rows = await conn.fetch(
        "SELECT x.relname, pg_relation_size(x.oid) AS bytes, x.relfilenode FROM pg_index i"
        " JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_am am ON am.oid = x.relam"
        " WHERE i.indrelid = $1::regclass AND am.amname = 'btree'",
        table,
    )
    return {r["relname"]: (r["bytes"], r["relfilenode"]) for r in rows}


async def _answers(conn: asyncpg.Connection) -> list[int]:
    """Counts read through the indexes (sequential scans off)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        return [
            await conn.fetchval(
                "SELECT count(*) FROM events WHERE project_id = $1 AND ts >= $2::date"
                " AND ts < $2::date + 1",
                p,
                CLOSED,
            )
            for p in PROJECTS
        ] + [
            await conn.fetchval(
                "SELECT count(*) FROM events WHERE project_id = 'p2'"
                " AND distinct_id BETWEEN 'd5' AND 'd6'"
            )
        ]


async def test_closed_days_and_rollups_indexes_are_rebuilt_smaller_once(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO projects (id, name) VALUES ('p1', 'P1'), ('p2', 'P2'), ('p3', 'P3')"
        )
        await ensure_partitions(conn, [CLOSED, OPEN])
        for day in (CLOSED, OPEN):
            await _interleaved(conn, day, 30_000)
        # Rollup rows arriving out of key order, as a backfill's batches write them ...
        await conn.execute(
            "INSERT INTO rollups (project_id, granularity, bucket, name, dim, value, bot,"
            " events, visitors)"
            " SELECT 'p1', 'd', '2026-01-01'::timestamptz + make_interval(days => i * 7919 % 400),"
            " 'page', 'path', '/p' || i, false, 1, '\\x00'::bytea"
            " FROM generate_series(1, 20000) AS i ON CONFLICT DO NOTHING"
        )
        # ... then upserted again: updates that find no room on their page add index entries,
        # and vacuum leaves the pages they split half empty.
        for _ in range(2):
            await conn.execute("UPDATE rollups SET events = events + 1, visitors = '\\x0102'")
            await conn.execute("VACUUM rollups")
        answers = await _answers(conn)
        closed = partition_name(CLOSED)
        before = {**await _indexes(conn, closed), **await _indexes(conn, "rollups")}
        open_before = await _indexes(conn, partition_name(OPEN))

    report = await compact_indexes(pool, NOW)

    async with pool.acquire() as conn:
        after = {**await _indexes(conn, closed), **await _indexes(conn, "rollups")}
        assert set(after) == set(before)
        for name, (size, node) in before.items():
            assert node != after[name][1], name  # rebuilt
            assert after[name][0] < 0.8 * size, (name, size, after[name][0])
        assert await _indexes(conn, partition_name(OPEN)) == open_before  # its day is open
        assert report.indexes == len(before) and report.failed == 0 and report.finished
        assert report.bytes_after == sum(size for size, _ in after.values())
        assert await _answers(conn) == answers
        recorded = {
            r["index_name"] for r in await conn.fetch("SELECT index_name FROM index_compactions")
        }
        assert set(before) <= recorded

        # A second pass finds nothing loose.
        assert (await compact_indexes(pool, NOW)).indexes == 0

        # A late backfill into the closed day loosens its indexes again: only they are rebuilt.
        await _interleaved(conn, CLOSED, 60_000, first=30_000)
        again = await compact_indexes(pool, NOW)
        assert again.indexes == len(await _indexes(conn, closed))
        assert await _indexes(conn, "rollups") == {
            n: after[n] for n in await _indexes(conn, "rollups")
        }


async def test_a_leftover_of_an_interrupted_rebuild_is_dropped_and_one_compactor_runs(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projects (id, name) VALUES ('p1', 'P1')")
        await ensure_partitions(conn, [CLOSED])
        await _interleaved(conn, CLOSED, 100)
        # A unique index over duplicates fails half-built and stays, invalid, as an
        # interrupted REINDEX CONCURRENTLY leaves its copy.
        leftover = f"{partition_name(CLOSED)}_project_id_ts_idx_ccnew"
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                f'CREATE UNIQUE INDEX CONCURRENTLY "{leftover}"'
                f' ON "{partition_name(CLOSED)}" (project_id)'
            )
        assert await conn.fetchval("SELECT to_regclass($1)", leftover) is not None

        await conn.execute("SELECT pg_advisory_lock($1)", COMPACTION_LOCK)
        assert (await compact_indexes(pool, NOW)).skipped
        await conn.execute("SELECT pg_advisory_unlock($1)", COMPACTION_LOCK)

        report = await compact_indexes(pool, NOW)
        assert not report.skipped and report.indexes == 0  # 100 rows: too small to gain
        assert await conn.fetchval("SELECT to_regclass($1)", leftover) is None


async def test_strata_tier_compact_rebuilds_now(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """After an import, an operator need not wait for the next tiering pass."""
    day = datetime.now(UTC).date() - timedelta(days=3)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO projects (id, name) VALUES ('p1', 'P1'), ('p2', 'P2'), ('p3', 'P3')"
        )
        await ensure_partitions(conn, [day])
        await _interleaved(conn, day, 30_000)
        before = await _indexes(conn, partition_name(day))
    run = await strata(
        "tier",
        "compact",
        database_url=database_url,
        data_dir=tmp_path,
        store_url=f"file://{tmp_path / 'objects'}",
    )
    assert run.code == 0, run.stderr
    assert f"{len(before)} index(es) rebuilt" in run.stdout, run.stdout
    async with pool.acquire() as conn:
        after = await _indexes(conn, partition_name(day))
    assert sum(size for size, _ in after.values()) < sum(size for size, _ in before.values())


async def test_quiet_tables_are_those_no_write_touched_over_two_looks(pool: asyncpg.Pool) -> None:
    day = date(2026, 3, 8)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projects (id, name) VALUES ('p1', 'P1')")
        await ensure_partitions(conn, [day, date(2026, 3, 9)])
        quiet = QuietTables()
        assert await quiet.settled(pool) == set()  # the first looks only count
        assert await quiet.settled(pool) == set()
        untouched = {"events_20260309", "rollups", "session_rollups"}
        assert untouched <= await quiet.settled(pool)
        await _interleaved(conn, day, 100)
        await conn.execute("SELECT pg_stat_force_next_flush()")  # report the counts now
        await conn.execute("SELECT 1")
        looks = [await quiet.settled(pool) for _ in range(3)]
    assert [partition_name(day) in look for look in looks] == [False, False, True]
    assert all(untouched <= look for look in looks)


async def test_between_passes_a_backfills_days_are_compacted_once_writes_stop(
    pool: asyncpg.Pool,
) -> None:
    """A backfill after the pass: its closed day is compacted within a few checks of its last
    write, not at the next pass an hour later."""
    day = datetime.now(UTC).date() - timedelta(days=3)
    schedule = TieringSchedule(
        pool,
        TieringMetrics(CollectorRegistry()),
        schedule_s=3600,
        partitions_ahead_days=1,
        dedup_horizon_days=30,
        quiet_check_s=0.5,
    )
    task = asyncio.create_task(schedule.run())
    try:
        for _ in range(100):
            if schedule.passes_ok:
                break
            await asyncio.sleep(0.1)
        assert schedule.passes_ok == 1
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO projects (id, name) VALUES ('p1', 'P1'), ('p2', 'P2'), ('p3', 'P3')"
            )
            await ensure_partitions(conn, [day])
            await _interleaved(conn, day, 30_000)
            before = await _indexes(conn, partition_name(day))
            for _ in range(100):
                recorded = {
                    r["index_name"]
                    for r in await conn.fetch("SELECT index_name FROM index_compactions")
                }
                if set(before) <= recorded:
                    break
                await asyncio.sleep(0.2)
            assert set(before) <= recorded
            after = await _indexes(conn, partition_name(day))
        assert sum(s for s, _ in after.values()) < sum(s for s, _ in before.values())
        assert schedule.passes_ok == 1  # no pass ran meanwhile
    finally:
        schedule.stop()
        await asyncio.wait_for(task, 30)


def test_rebuild_rule() -> None:
    assert not needs_rebuild(3, 1e6, None, None)  # too small to gain
    assert needs_rebuild(100, 1e4, None, None)  # never rebuilt
    assert not needs_rebuild(100, 1e4, 100 * 8192, 1e4)  # as rebuilt
    assert not needs_rebuild(190, 2e4, 100 * 8192, 1e4)  # grew with its rows
    assert needs_rebuild(160, 1e4, 100 * 8192, 1e4)  # same rows, 60 % bigger
    assert needs_rebuild(310, 2e4, 100 * 8192, 1e4)
