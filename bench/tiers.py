"""Storage tiering benchmark on the analyses bench dataset (bench/analyses.py's
generator: default 5,000,000 events over 120 days, 200,000 persons), the days ending yesterday,
loaded into a real PostgreSQL `events` table and moved by the tiering service's own jobs to a
`file://` object store. Figures only:

- hot bytes per event (the events partitions with their indexes) beside cold bytes per event
  (the day files' Parquet bytes);
- cold-move throughput: rows/s of export + verify (export_pending_days) + drop from PostgreSQL
  (move_cold_days), for the 30 oldest days and then for the remaining 90;
- a 5-step funnel over all 120 days through `open_scan` as the query service runs it: 90 days hot
  and 30 cold; everything cold from a warm local cache; everything cold from a cold cache; each
  as a ratio to ClickHouse (chdb's `windowFunnel`, when the `bench` group is installed) over the
  same day files;
- metrics (visitors, pageviews, events) over a year from rollups, daily buckets, as the metrics
  endpoint reads them (the event rollups are rebuilt from the loaded rows first);
- GDPR erasure of one person of median activity while 90 days are hot and 30 cold (no Archive
  files in this run): PostgreSQL delete at once, then the tiering pass rewriting every day file
  holding them and recomputing the touched weeks' rollups (wall time, files and bytes
  rewritten). The all-cold funnels run after it, on the data without that person.

    python -m bench.tiers [--events 5000000] [--persons 200000] [--days 120] [--runs 5]

Uses DATABASE_URL when set, else starts an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from bench import peers
from bench.analyses import _day_table
from libs.common import db
from libs.common.day_files import (
    DayExportSettings,
    DayFileCache,
    active_parts,
    export_pending_days,
)
from libs.common.erasure import request_erasure
from libs.common.event_dictionary import CLIENTS, PAGES, SOURCES, assign_keys
from libs.common.object_store import ObjectStore, open_object_store
from libs.common.observability import configure_logging
from libs.common.settings import QuerySettings
from services.query.analyses.conditions import EventScope
from services.query.analyses.funnels import FunnelSpec, funnel_spec, run_funnel
from services.query.analyses.requests import Condition, FunnelRequest, FunnelStep, WindowSpec
from services.query.buckets import output_buckets, rollup_pieces
from services.query.event_scan import open_scan
from services.query.freed_memory import keep_freed_memory
from services.query.metric_query import EVENT_METRICS, MetricQuery
from services.query.metrics_from_rollups import read_rollups
from services.query.params import Filters, TimeWindow
from services.query.scan_engine import ScanEngine
from services.tiering.erasure import process_erasures, recompute_week_rollups
from services.tiering.tier_moves import move_cold_days

PROJECT = "bench"
HOT_DAYS = 90


@dataclass
class ScanDeps:
    """What open_scan reads from (the query service's QueryDeps, reduced)."""

    pool: asyncpg.Pool
    scan_engine: ScanEngine


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def _with_keys(conn: asyncpg.Connection, table: pa.Table) -> pa.Table:
    """The day's rows as the writer stores them: the page's, the client's and the source's
    values replaced by their keys in `event_pages`, `event_clients` and `event_sources`
    (libs/common/event_dictionary.py)."""
    for dictionary in (PAGES, CLIENTS, SOURCES):
        encoded = [
            pc.dictionary_encode(table[c].combine_chunks(), null_encoding="encode")
            for c in dictionary.columns
        ]
        code = np.zeros(table.num_rows, dtype=np.int64)
        for column in encoded:
            code = code * len(column.dictionary) + np.asarray(column.indices, dtype=np.int64)
        distinct, inverse = np.unique(code, return_inverse=True)
        entries = []
        for value in distinct.tolist():
            parts = []
            for column in reversed(encoded):
                value, at = divmod(value, len(column.dictionary))
                parts.append(column.dictionary[at].as_py())
            entries.append((PROJECT, *reversed(parts)))
        keys = await assign_keys(conn, dictionary, entries)
        key = pa.array([keys.get(e) for e in entries], pa.int64()).take(pa.array(inverse))
        table = table.drop_columns(list(dictionary.columns)).append_column(dictionary.key, key)
    return table


async def load(
    pool: asyncpg.Pool, work: Path, events: int, persons: int, days: int, first_day: date
) -> int:
    """COPY the bench dataset's days into `event_rows` as the writer stores them (pages',
    clients' and sources' keys; the writer's speed is another benchmark), with the aliases
    and persons they imply, then VACUUM ANALYZE as autovacuum would."""
    await pool.execute(
        "INSERT INTO projects (id, name, hot_days) VALUES ($1, $1, $2) ON CONFLICT DO NOTHING",
        PROJECT,
        HOT_DAYS,
    )
    await pool.execute("SELECT ensure_event_partitions($1::date, $2)", first_day, days + 1)
    rng = np.random.default_rng(42)
    rows = 0
    csv_path = work / "day.csv"
    async with pool.acquire() as conn:
        for number in range(days):
            table = _day_table(rng, first_day + timedelta(days=number), persons, events // days)
            table = await _with_keys(conn, table)
            pa_csv.write_csv(table, csv_path)
            await conn.copy_to_table(
                "event_rows",
                source=csv_path,
                columns=table.column_names,
                format="csv",
                header=True,
            )
            rows += table.num_rows
        csv_path.unlink()
        await conn.execute(
            "INSERT INTO person_aliases (project_id, distinct_id, person_id)"
            " SELECT DISTINCT ON (distinct_id) project_id, distinct_id, user_id FROM events"
            " WHERE user_id IS NOT NULL ORDER BY distinct_id, ts"
        )
        # The person keys the generator stored on each row (d<p>: 2p, u<p>: 2p + 1), as the
        # aggregator assigns them: without them the aliases carry no keys and every scan
        # resolves persons by their string ids, which the service does not do.
        await conn.execute(
            "INSERT INTO person_keys (project_id, id, key)"
            " SELECT project_id, coalesce(user_id, distinct_id), person_key FROM events"
            " UNION SELECT project_id, distinct_id, coalesce(device_key, person_key) FROM events"
            " ON CONFLICT DO NOTHING"
        )
        await conn.execute(
            "INSERT INTO person_key_counters (project_id, next_key)"
            " SELECT project_id, max(key) + 1 FROM person_keys GROUP BY project_id"
            " ON CONFLICT (project_id) DO UPDATE SET next_key = excluded.next_key"
        )
        await conn.execute(
            "INSERT INTO persons (project_id, person_id, traits, first_seen, last_seen)"
            " SELECT project_id, user_id, '{}'::jsonb, min(ts), max(ts)"
            " FROM events WHERE user_id IS NOT NULL GROUP BY project_id, user_id"
        )
        await conn.execute("VACUUM ANALYZE event_rows, event_pages, event_clients, event_sources")
    return rows


async def hot_bytes(pool: asyncpg.Pool) -> int:
    """Bytes of the events' partitions and their dictionaries, with indexes and TOAST."""
    value = await pool.fetchval(
        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)"
        " + pg_total_relation_size('event_pages') + pg_total_relation_size('event_clients')"
        " + pg_total_relation_size('event_sources')"
        " FROM pg_inherits"
        " WHERE inhparent = 'event_rows'::regclass"
    )
    return int(value)


async def cold_bytes(pool: asyncpg.Pool) -> tuple[int, int]:
    """(bytes, rows) of the project's active day files."""
    row = await pool.fetchrow(
        "SELECT coalesce(sum(bytes), 0) AS bytes, coalesce(sum(rows), 0) AS rows"
        " FROM day_files WHERE project_id = $1 AND state = 'active'",
        PROJECT,
    )
    assert row is not None
    return int(row["bytes"]), int(row["rows"])


async def cold_move(
    pool: asyncpg.Pool,
    store: ObjectStore,
    settings: DayExportSettings,
    days: list[date],
    hot_days: int,
) -> dict[str, Any]:
    """Export + verify `days`, then the cold job with the project's hot_days set to `hot_days`;
    rows/s over both."""
    started = time.perf_counter()
    export = await export_pending_days(
        pool, store, settings, grace=timedelta(0), projects=[PROJECT], days=days
    )
    exported = time.perf_counter()
    await pool.execute("UPDATE projects SET hot_days = $2 WHERE id = $1", PROJECT, hot_days)
    moved = await move_cold_days(pool, store, projects=[PROJECT])
    done = time.perf_counter()
    if export.failures or moved.failures:
        raise RuntimeError(f"cold move failed: {export.failures} {moved.failures}")
    return {
        "days": len(days),
        "rows_exported": export.rows,
        "rows_dropped_from_postgres": moved.rows_moved,
        "export_verify_s": round(exported - started, 2),
        "drop_s": round(done - exported, 2),
        "rows_per_s": round(moved.rows_moved / (done - started)),
    }


def _funnel() -> FunnelSpec:
    """bench/analyses.py's 5-step funnel, 14-day window."""
    page = FunnelStep("$pageview", [Condition("path", "eq", "/")])
    pricing = FunnelStep("$pageview", [Condition("path", "eq", "/pricing")])
    steps = [page, pricing, FunnelStep("signup"), FunnelStep("add_to_cart"), FunnelStep("purchase")]
    return funnel_spec(FunnelRequest(steps=steps, window=WindowSpec(14, "day")))


async def funnel_once(
    deps: ScanDeps, funnel: FunnelSpec, start: datetime, end: datetime
) -> dict[str, Any]:
    """One funnel as the endpoint runs it: open the scan over the tiers, then the funnel."""
    started = time.perf_counter()
    scan = await open_scan(deps, PROJECT, start, end, include_bots=False, with_persons=False)
    opened = time.perf_counter()
    try:
        stop = end - timedelta(seconds=1)
        # The scope the query service gives it (services/query/analyses/runner.py): integer
        # persons when every row and alias has keys, ties by position, its analysis threads.
        scope = EventScope(
            start,
            end,
            person_keys=scan.person_keys,
            ties_by_position=scan.ties_by_position,
            cached_columns=scan.cached_columns,
            cached_rows=scan.cached_rows,
            threads=QuerySettings().analysis_threads,
        )
        result = await asyncio.to_thread(
            run_funnel,
            scan.con,
            funnel,
            scope,
            int(start.timestamp()) * 1_000_000,
            int(stop.timestamp()) * 1_000_000,
        )
    finally:
        scan.close()
    done = time.perf_counter()
    return {
        "open_ms": _ms(opened - started),
        "total_ms": _ms(done - started),
        "tiers": {t.tier: t.rows for t in scan.tiers},
        "persons_per_step": [s.count for s in result.total.steps],
        "person_keys": scan.person_keys,
    }


async def clickhouse_funnel_ms(
    pool: asyncpg.Pool, cache: DayFileCache, start: datetime, end: datetime, runs: int
) -> float | None:
    """The same funnel on ClickHouse's engine (chdb, the `bench` dependency group) over the
    day files Strata reads (the catalog's active parts), warm median; None without chdb."""
    try:
        clickhouse = peers.ClickHousePeer()
    except ImportError:
        return None
    last_day = (end - timedelta(microseconds=1)).date()
    parts = await active_parts(pool, PROJECT, start.date(), last_day)
    cached = await cache.acquire(parts)
    # One folder of dt=<day>-<n>.parquet names, as the peers' SQL lists its files.
    folder = Path(tempfile.mkdtemp(prefix="strata-bench-clickhouse-"))
    try:
        files = []
        for n, (part, path) in enumerate(zip(parts, cached, strict=True)):
            files.append(folder / f"dt={part.day.isoformat()}-{n}.parquet")
            files[-1].symlink_to(path)
        sql = peers.clickhouse_funnel_sql(files, start, end, timedelta(days=14))
        warm: float = peers.timed(partial(clickhouse.query, sql), runs)["warm_median_ms"]
        return warm
    finally:
        cache.release(parts)
        clickhouse.close()
        shutil.rmtree(folder, ignore_errors=True)


def _median(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "open_median_ms": round(statistics.median(s["open_ms"] for s in samples), 1),
        "total_median_ms": round(statistics.median(s["total_ms"] for s in samples), 1),
        "rows_per_tier": samples[-1]["tiers"],
        "persons_per_step": samples[-1]["persons_per_step"],
        "person_keys": samples[-1]["person_keys"],
    }


def _engine(cache_dir: Path, store: ObjectStore) -> ScanEngine:
    """The query service's scan engine with its default caches (hot rows, decoded columns)."""
    settings = QuerySettings()
    return ScanEngine(
        DayFileCache(cache_dir, 8 * 1024**3, store),
        hot_rows_cache_bytes=settings.hot_rows_cache_bytes,
        column_cache_bytes=settings.column_cache_bytes,
    )


async def timed_funnel(
    deps: ScanDeps, funnel: FunnelSpec, start: datetime, end: datetime, runs: int
) -> dict[str, Any]:
    """A first run (fills caches), then the median of `runs` warm ones, and what the query's
    cache of hot rows holds then."""
    first = await funnel_once(deps, funnel, start, end)
    # The files the first run read from Parquet are decoded on the column cache's thread; a
    # user's next request comes seconds later, when that is done.
    deps.scan_engine.columns.settle()
    warm = [await funnel_once(deps, funnel, start, end) for _ in range(runs)]
    hot = deps.scan_engine.hot_rows
    return {
        "first_ms": first["total_ms"],
        **_median(warm),
        "hot_rows_cached": hot.cached_rows,
        "hot_rows_cache_mb": round(hot.nbytes / 1024**2, 1),
    }


async def metrics_from_rollups(pool: asyncpg.Pool, end: datetime, runs: int) -> dict[str, Any]:
    """Visitors, pageviews and events per day over the year up to `end`, from rollups."""
    window = TimeWindow(end - timedelta(days=365), end, ZoneInfo("UTC"))
    query = MetricQuery(PROJECT, window, "day", EVENT_METRICS, Filters(), None, False)
    buckets = output_buckets(window.start, window.end, "day", window.tz)
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        pieces = rollup_pieces(buckets)
        assert pieces is not None
        cells = await read_rollups(pool, query, pieces)
        times.append(time.perf_counter() - started)
    return {
        "first_ms": _ms(times[0]),
        "warm_median_ms": _ms(statistics.median(times[1:])),
        "cells": len(cells),
    }


async def build_rollups(
    pool: asyncpg.Pool, store: ObjectStore, first_day: date, days: int, work: Path
) -> float:
    """Rebuild the event rollups of every week of the dataset from its rows (the aggregator
    writes them live; the bench loads rows directly). Seconds taken."""
    started = time.perf_counter()
    monday = first_day - timedelta(days=first_day.weekday())
    last = first_day + timedelta(days=days)
    while monday < last:
        week = datetime.combine(monday, datetime.min.time(), UTC)
        await recompute_week_rollups(pool, store, PROJECT, week, work)
        monday += timedelta(days=7)
    return time.perf_counter() - started


def typical_person(persons: int) -> str:
    """A person of median activity in the generator's heavy-tailed distribution, identified
    (every third person sends a user id and has a linked device)."""
    return f"u{persons // 2 // 3 * 3}"


async def events_of(deps: ScanDeps, person_id: str, start: datetime, end: datetime) -> int:
    """The person's events in every tier, as the query service's scan sees them."""
    scan = await open_scan(deps, PROJECT, start, end, include_bots=True, with_persons=False)
    try:
        rows = await scan.query("SELECT count(*) FROM events_scan WHERE person_id = ?", [person_id])
    finally:
        scan.close()
    return int(rows[0][0])


async def erase_one_person(
    pool: asyncpg.Pool,
    store: ObjectStore,
    settings: DayExportSettings,
    deps: ScanDeps,
    user_id: str,
    span: tuple[datetime, datetime],
) -> dict[str, Any]:
    """Erase one identified person: PostgreSQL at once, then tiering passes until the
    request is complete (every day file holding them rewritten, rollups recomputed)."""
    events_of_person = await events_of(deps, user_id, *span)
    started = time.perf_counter()
    async with pool.acquire() as conn:
        status = await request_erasure(
            conn, project_id=PROJECT, user_id=user_id, distinct_ids=[], key_id="bench"
        )
    accepted = time.perf_counter()
    parts = 0
    rewritten = 0
    for _ in range(10):
        run = await process_erasures(pool, store, settings)
        parts += run.parts_rewritten
        rewritten += run.bytes_rewritten
        if run.failures:
            raise RuntimeError(f"erasure failed: {run.failures}")
        if status.id in run.completed:
            break
    done = time.perf_counter()
    state = await pool.fetchval("SELECT state FROM erasure_requests WHERE id = $1", status.id)
    return {
        "person": user_id,
        "events": events_of_person,
        "state": state,
        "postgres_delete_ms": _ms(accepted - started),
        "wall_s": round(done - started, 2),
        "files_rewritten": parts,
        "bytes_rewritten": rewritten,
    }


async def run(
    database_url: str, events: int, persons: int, days: int, runs: int, work: Path
) -> dict[str, Any]:
    """Load, move, query and erase; the figures."""
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=days)
    end = datetime.combine(today, datetime.min.time(), UTC)
    start = end - timedelta(days=days)
    all_days = [first_day + timedelta(days=i) for i in range(days)]
    cold_days = [d for d in all_days if d < today - timedelta(days=HOT_DAYS)]
    figures: dict[str, Any] = {"dataset": {"events": events, "persons": persons, "days": days}}
    pool = await db.create_pool(database_url, min_size=2, max_size=6)
    store = open_object_store(f"file://{work / 'objects'}")
    settings = DayExportSettings(work_dir=work / "export-work", superseded_grace_s=0.0)
    cache_dir = work / "cache"
    try:
        started = time.perf_counter()
        loaded = await load(pool, work, events, persons, days, first_day)
        figures["dataset"]["rows_loaded"] = loaded
        figures["dataset"]["load_s"] = round(time.perf_counter() - started, 1)
        hot = await hot_bytes(pool)
        print(f"   loaded {loaded} events in {figures['dataset']['load_s']} s", flush=True)
        rollups_s = await build_rollups(pool, store, first_day, days, work / "rollups")
        figures["metrics_year_from_rollups"] = {
            "rollups_rebuild_s": round(rollups_s, 1),
            **await metrics_from_rollups(pool, end, runs),
        }
        print(f"   metrics {figures['metrics_year_from_rollups']}", flush=True)

        moves = {"oldest_30_days": await cold_move(pool, store, settings, cold_days, HOT_DAYS)}
        print(f"   cold move {moves['oldest_30_days']}", flush=True)
        funnel = _funnel()
        engine = _engine(cache_dir, store)
        deps = ScanDeps(pool, engine)
        # Before the tiering service's first export the hot days have no day files yet, so the
        # scan reads them from PostgreSQL: the worst case, only seen right after a backfill.
        funnels = {
            "hot_90_without_day_files_cold_30": await timed_funnel(deps, funnel, start, end, runs)
        }
        print(f"   funnel 90 hot (no day files yet) + 30 cold {funnels}", flush=True)
        # The steady state: every closed day is exported within the export grace period, so
        # the 90 hot days are read from their day files (PostgreSQL still holds them).
        rest = [d for d in all_days if d not in cold_days]
        hot_export_started = time.perf_counter()
        hot_export = await export_pending_days(
            pool, store, settings, grace=timedelta(0), projects=[PROJECT], days=rest
        )
        hot_export_s = time.perf_counter() - hot_export_started
        if hot_export.failures:
            raise RuntimeError(f"export failed: {hot_export.failures}")
        funnels["hot_90_with_day_files_cold_30"] = await timed_funnel(
            deps, funnel, start, end, runs
        )
        print(
            f"   funnel 90 hot (with day files) + 30 cold "
            f"{funnels['hot_90_with_day_files_cold_30']}",
            flush=True,
        )

        figures["erasure_one_person"] = await erase_one_person(
            pool, store, settings, deps, typical_person(persons), (start, end)
        )
        print(f"   erasure {figures['erasure_one_person']}", flush=True)

        moves["remaining_90_days"] = await cold_move(pool, store, settings, rest, 0)
        # Their export ran before the steady-state funnel: count it in the move's throughput.
        remaining = moves["remaining_90_days"]
        remaining["rows_exported"] += hot_export.rows
        remaining["export_verify_s"] = round(remaining["export_verify_s"] + hot_export_s, 2)
        remaining["rows_per_s"] = round(
            remaining["rows_dropped_from_postgres"]
            / (remaining["export_verify_s"] + remaining["drop_s"])
        )
        print(f"   cold move {moves['remaining_90_days']}", flush=True)
        moved_rows = sum(m["rows_dropped_from_postgres"] for m in moves.values())
        moved_s = sum(m["export_verify_s"] + m["drop_s"] for m in moves.values())
        cold, cold_rows = await cold_bytes(pool)
        figures["bytes_per_event"] = {
            "hot_postgres_with_indexes": round(hot / loaded, 1),
            "cold_parquet": round(cold / max(cold_rows, 1), 1),
            "hot_to_cold_ratio": round((hot / loaded) / (cold / max(cold_rows, 1)), 1),
        }
        figures["cold_move"] = {**moves, "rows_per_s": round(moved_rows / moved_s)}
        funnels["all_cold_warm_cache"] = await timed_funnel(deps, funnel, start, end, runs)
        print(f"   funnel all cold, warm cache {funnels['all_cold_warm_cache']}", flush=True)
        engine.close()
        cold_cache = []
        for _ in range(max(1, min(runs, 3))):
            shutil.rmtree(cache_dir, ignore_errors=True)
            engine = _engine(cache_dir, store)
            cold_cache.append(await funnel_once(ScanDeps(pool, engine), funnel, start, end))
            engine.close()
        funnels["all_cold_cold_cache"] = _median(cold_cache)
        print(f"   funnel all cold, cold cache {funnels['all_cold_cold_cache']}", flush=True)
        clickhouse_cache = DayFileCache(cache_dir, 8 * 1024**3, store)
        clickhouse_ms = await clickhouse_funnel_ms(pool, clickhouse_cache, start, end, runs)
        for layout in funnels.values():
            layout["strata_to_clickhouse_all_cold_ratio"] = peers.ratio(
                layout["total_median_ms"], clickhouse_ms
            )
        print(f"   funnel on ClickHouse (chdb) over the same day files {clickhouse_ms} ms")
        # Beside the layouts' figures, not one of them (the loop above reads only layouts).
        figures["funnel_5_steps_120d"] = {
            **funnels,
            "clickhouse_all_cold_warm_median_ms": clickhouse_ms,
        }

    finally:
        await store.close()
        await pool.close()
    return figures


def run_benchmark(
    events: int = 5_000_000, persons: int = 200_000, days: int = 120, runs: int = 5
) -> dict[str, Any]:
    """The figures, against DATABASE_URL or an embedded PostgreSQL started for the run."""
    configure_logging("bench", "console", "warning")
    # As the query service does at start (STRATA_QUERY_KEEP_FREED_BYTES).
    keep_freed_memory(QuerySettings().query_keep_freed_bytes)
    with tempfile.TemporaryDirectory(prefix="strata-bench-tiers-") as tmp:
        work = Path(tmp)
        server = None
        url = os.environ.get("DATABASE_URL")
        if not url:
            from strata_dev.embedded import EmbeddedPostgres

            server = EmbeddedPostgres(work / "pg").start()
            url = server.url.rsplit("/", 1)[0] + "/strata_bench_tiers"
        try:
            asyncio.run(db.ensure_database(url))

            async def migrate() -> None:
                conn = await asyncpg.connect(url)
                try:
                    await db.migrate(conn)
                finally:
                    await conn.close()

            asyncio.run(migrate())
            return asyncio.run(run(url, events, persons, days, runs, work))
        finally:
            if server is not None:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Storage tiering benchmark")
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    figures = run_benchmark(args.events, args.persons, args.days, args.runs)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
