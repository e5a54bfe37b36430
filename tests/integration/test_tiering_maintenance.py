"""Tiering's hot-store upkeep: day partitions exist ahead of time, and event-id dedup rows past
the horizon are pruned while recent ones (still needed for dedup) are kept."""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from services.tiering.maintenance import run_maintenance
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra


async def _partitions(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'event_rows'::regclass ORDER BY 1"
    )
    return [r["relname"] for r in rows]


async def test_partitions_are_created_ahead_and_events_of_those_days_insert(
    pool: asyncpg.Pool,
) -> None:
    now = datetime(2026, 3, 30, 22, 15, tzinfo=UTC)
    report = await run_maintenance(pool, partitions_ahead_days=3, dedup_horizon_days=30, now=now)
    assert report.partitions_from == date(2026, 3, 30)
    assert await _partitions(pool) == [
        "events_20260330",
        "events_20260331",
        "events_20260401",
        "events_20260402",
    ]
    # A second pass a day later adds one day and leaves the rest alone.
    await run_maintenance(
        pool, partitions_ahead_days=3, dedup_horizon_days=30, now=now + timedelta(days=1)
    )
    assert (await _partitions(pool))[-1] == "events_20260403"
    assert len(await _partitions(pool)) == 5

    await pool.execute("INSERT INTO projects (id, name) VALUES ('p1', 'P1')")
    await pool.execute(
        "INSERT INTO events (project_id, ts, event_id, name, type, distinct_id, received_at)"
        " VALUES ('p1', '2026-04-03 23:59:59+00', 'e1', 'signup', 'track', 'd1', now())"
    )
    assert await pool.fetchval("SELECT count(*) FROM events_20260403") == 1


async def test_event_ids_older_than_the_horizon_are_pruned_recent_kept(
    pool: asyncpg.Pool,
) -> None:
    now = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
    received = {
        "ancient": now - timedelta(days=90),
        "just-past": now - timedelta(days=30, seconds=1),
        "just-inside": now - timedelta(days=29, hours=23),
        "today": now - timedelta(minutes=5),
    }
    await pool.executemany(
        "INSERT INTO event_ids (digest, received_at) VALUES (event_id_digest('p1', $1), $2)",
        list(received.items()),
    )
    report = await run_maintenance(pool, partitions_ahead_days=1, dedup_horizon_days=30, now=now)
    assert report.event_ids_pruned == 2
    left = await pool.fetch(
        "SELECT k.id FROM event_ids JOIN unnest($1::text[]) AS k(id)"
        " ON digest = event_id_digest('p1', k.id) ORDER BY received_at",
        list(received),
    )
    assert [r["id"] for r in left] == ["just-inside", "today"]

    # Nothing else is past the horizon now: a rerun deletes nothing.
    again = await run_maintenance(pool, partitions_ahead_days=1, dedup_horizon_days=30, now=now)
    assert again.event_ids_pruned == 0


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


async def test_service_maintains_on_start_serves_health_and_stops_on_sigterm(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(
        database_url, nats_url, "unused", health_port=port, partitions_ahead_days=2, schedule_s=600
    )
    service = ServiceProcess("tiering", env, tmp_path).start()
    try:
        await asyncio.to_thread(service.wait_http, port, "/readyz", 30.0)
        assert (await asyncio.to_thread(_get, port, "/healthz"))[0] == 200

        # The first pass runs at start-up; its success shows in /metrics.
        passed = 'strata_tiering_maintenance_runs_total{result="ok"} 1.0'
        for _ in range(100):
            _, metrics = await asyncio.to_thread(_get, port, "/metrics")
            if passed in metrics:
                break
            await asyncio.sleep(0.1)
        assert passed in metrics, service.log()

        today = datetime.now(UTC).date()
        wanted = {f"events_{(today + timedelta(days=i)):%Y%m%d}" for i in range(3)}
        conn = await asyncpg.connect(database_url)
        try:
            assert wanted <= set(await _partitions(conn))
        finally:
            await conn.close()
    finally:
        code = await asyncio.to_thread(service.stop, 15.0)
    assert code == 0, service.log()
