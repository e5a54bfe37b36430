"""Benchmark: columnar day files. Figures only.

On a generated dataset (`--events` over `--days` closed days, realistic cardinalities, random
message ids as clients send them) in a real PostgreSQL:
- export: rows/s of `export_pending_days` (snapshot COPY -> Parquet -> put -> read back and
  verify -> activate), and bytes per event in Parquet;
- layout: for row-group sizes and zstd levels, bytes per event, write time, and a DuckDB
  person-level scan over the same days (the shape funnels and retention take);
- open_scan over 30 days: cold cache (every part downloaded) against warm, and the same range
  read from PostgreSQL alone.

    python -m bench.day_files [--events 500000] [--days 35] [--output figures.json]

Uses DATABASE_URL when set, else starts an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq

from libs.common import db, event_dictionary
from libs.common.day_files import DayExportSettings, DayFileCache, export_pending_days
from libs.common.day_files.layout import EVENT_FILE_SCHEMA
from libs.common.day_files.parquet_parts import write_part
from libs.common.event_dictionary import CLIENTS, PAGES, assign_keys
from libs.common.object_store import open_object_store
from libs.common.observability import configure_logging
from services.query.event_scan import open_scan
from services.query.scan_engine import ScanEngine

PROJECT = "bench"
PATHS = ["/", "/pricing", "/docs", "/docs/install", "/signup", "/features", "/checkout"]
PATHS += [f"/blog/post-{i}" for i in range(60)] + [f"/docs/page-{i}" for i in range(80)]
SOURCES = [
    ("https://www.google.com/", "google.com", "organic_search", None, None, None),
    ("https://www.bing.com/", "bing.com", "organic_search", None, None, None),
    (None, None, "direct", None, None, None),
    ("https://t.co/x", "t.co", "social", "twitter", "social", "launch"),
    ("https://news.ycombinator.com/", "news.ycombinator.com", "referral", None, None, None),
    ("https://mail.example.com/", "mail.example.com", "email", "newsletter", "email", "spring"),
]
DEVICES = [
    ("desktop", "Chrome", "124.0", "Windows", "10"),
    ("desktop", "Firefox", "125.0", "Linux", None),
    ("desktop", "Safari", "17.4", "macOS", "14.4"),
    ("mobile", "Safari", "17.4", "iOS", "17.4"),
    ("mobile", "Chrome", "124.0", "Android", "14"),
    ("tablet", "Safari", "17.4", "iPadOS", "17.4"),
]
GEO = [("DE", "BE", "Berlin", "de-DE"), ("US", "CA", "San Francisco", "en-US"),
       ("FR", "IDF", "Paris", "fr-FR"), ("IN", "KA", "Bengaluru", "en-IN"),
       ("GB", "ENG", "London", "en-GB")]  # fmt: skip
CUSTOM = ["signup", "add_to_cart", "checkout", "purchase", "download", "search", "share"]
COLUMNS = [f.name for f in EVENT_FILE_SCHEMA]


def generate(events: int, days: int, first_day: date, seed: int = 5) -> Iterator[tuple[Any, ...]]:
    """Rows of `events`, in COPY column order, about 15 events per person."""
    rng = random.Random(seed)
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    made = 0
    person = 0
    while made < events:
        person += 1
        anon = uuid.UUID(int=rng.getrandbits(128)).hex
        user = f"user-{person}" if rng.random() < 0.3 else None
        device_type, browser, browser_version, os_name, os_version = rng.choice(DEVICES)
        country, region, city, locale = rng.choice(GEO)
        for _ in range(min(1 + int(rng.expovariate(0.5)), 12)):
            ts = start + timedelta(seconds=rng.uniform(0, days * 86400 - 7200))
            referrer, referrer_domain, channel, utm_source, utm_medium, utm_campaign = rng.choice(
                SOURCES
            )
            session = uuid.UUID(int=rng.getrandbits(128)).hex[:26]
            for number in range(min(1 + int(rng.expovariate(0.3)), 25)):
                if made >= events:
                    return
                ts += timedelta(seconds=rng.uniform(3, 240))
                kind = rng.random()
                path = rng.choice(PATHS)
                non_interactive = False
                properties: dict[str, int | float | str]
                if number == 0 or kind < 0.6:
                    name, event_type = "$pageview", "page"
                    properties = {"load_time_ms": rng.randint(80, 4000)}
                elif kind < 0.75:
                    name, event_type, non_interactive = "scroll", "track", True
                    properties = {"depth": rng.choice([25, 50, 75, 100])}
                else:
                    name, event_type = rng.choice(CUSTOM), "track"
                    properties = {"plan": rng.choice(["free", "pro", "team"]),
                                  "value": round(rng.uniform(1, 300), 2)}  # fmt: skip
                identified = user if (user and number > 2) else None
                made += 1
                yield (
                    PROJECT, ts, uuid.UUID(int=rng.getrandbits(128)).hex, name, event_type,
                    anon, identified, anon, session, path, f"https://www.example.com{path}",
                    f"Example - {path.strip('/') or 'home'}",
                    referrer if number == 0 else None, referrer_domain if number == 0 else None,
                    channel, utm_source, utm_medium, utm_campaign, None, None,
                    browser, browser_version, os_name, os_version, device_type,
                    country, region, city, locale, rng.random() < 0.02, non_interactive,
                    json.dumps(properties), ts + timedelta(milliseconds=rng.randint(20, 900)),
                )  # fmt: skip


async def load(pool: asyncpg.Pool, events: int, days: int, first_day: date) -> int:
    """COPY the generated rows straight into `event_rows` as the writer stores them (pages',
    clients' and sources' keys; the writer's own speed is another benchmark), plus the
    aliases and persons they imply."""
    await pool.execute("SELECT ensure_event_partitions($1::date, $2)", first_day, days + 1)
    # (The generated rows carry no person keys: those columns stay NULL, as before migration
    # 0024.)
    missing = (None,) * (len(COLUMNS) - len(next(generate(1, days, first_day))))
    rows = [(*r, *missing) for r in generate(events, days, first_day)]
    # Pages', clients' and sources' values replaced by their keys, as the writer stores them.
    dictionaries = [
        (d, [COLUMNS.index(c) for c in ("project_id", *d.columns)])
        for d in (PAGES, CLIENTS, event_dictionary.SOURCES)
    ]
    replaced = {c for d, _ in dictionaries for c in d.columns}
    kept = [i for i, c in enumerate(COLUMNS) if c not in replaced]
    columns = [*(COLUMNS[i] for i in kept), *(d.key for d, _ in dictionaries)]
    async with pool.acquire() as conn:
        keys = [
            (await assign_keys(conn, d, {tuple(r[i] for i in at) for r in rows}), at)
            for d, at in dictionaries
        ]
        records = [
            (*(r[i] for i in kept), *(k.get(tuple(r[i] for i in at)) for k, at in keys))
            for r in rows
        ]
        await conn.execute("CREATE TEMP TABLE staged (LIKE event_rows INCLUDING DEFAULTS)")
        await conn.execute("ALTER TABLE staged ALTER COLUMN properties TYPE text")
        await conn.copy_records_to_table("staged", records=records, columns=columns)
        await conn.execute(
            f"INSERT INTO event_rows ({', '.join(columns)})"
            f" SELECT {', '.join('properties::jsonb' if c == 'properties' else c for c in columns)}"
            " FROM staged"
        )
        await conn.execute(
            "INSERT INTO person_aliases (project_id, distinct_id, person_id)"
            " SELECT DISTINCT ON (distinct_id) project_id, distinct_id, user_id FROM events"
            " WHERE user_id IS NOT NULL ORDER BY distinct_id, ts"
        )
        await conn.execute(
            "INSERT INTO persons (project_id, person_id, traits, first_seen, last_seen)"
            " SELECT project_id, user_id, jsonb_build_object('plan', 'pro'), min(ts), max(ts)"
            " FROM events WHERE user_id IS NOT NULL GROUP BY project_id, user_id"
        )
        await conn.execute("ANALYZE event_rows")
    return len(rows)


PERSON_SCAN = """
SELECT count(*) FROM (
    SELECT person_id,
           min(ts) FILTER (WHERE name = '$pageview') AS first_view,
           min(ts) FILTER (WHERE name = 'signup') AS first_signup,
           min(ts) FILTER (WHERE name = 'purchase') AS first_purchase
    FROM events_scan GROUP BY person_id
) WHERE first_view <= first_signup AND first_signup <= first_purchase
"""


def scan_files_seconds(paths: list[str], runs: int = 7) -> float:
    """Median time of the person-level scan over `paths` in DuckDB (2 threads)."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    files = ", ".join(f"'{p}'" for p in paths)
    con.execute(
        "CREATE VIEW events_scan AS SELECT ts, name, distinct_id AS person_id"
        f" FROM read_parquet([{files}])"
    )
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        con.execute(PERSON_SCAN).fetchall()
        times.append(time.perf_counter() - started)
    con.close()
    return statistics.median(times)


def layout_figures(day_tables: list[pa.Table], directory: Path) -> list[dict[str, Any]]:
    """For row-group sizes and zstd levels: bytes per event, write speed and the person-level
    scan time, over the window's day files and over the same rows as one big day (a project
    with ~400k events a day, where row groups start to matter)."""
    figures = []
    rows = sum(t.num_rows for t in day_tables)
    big_day = pa.concat_tables(day_tables).sort_by(
        [("distinct_id", "ascending"), ("ts", "ascending"), ("event_id", "ascending")]
    )
    for row_group_rows, level in [
        (16384, 3), (65536, 3), (131072, 3), (1048576, 3), (131072, 1), (131072, 9)
    ]:  # fmt: skip
        out = directory / f"rg{row_group_rows}-z{level}"
        out.mkdir()
        started = time.perf_counter()
        paths = []
        size = 0
        for number, table in enumerate(day_tables):
            path = out / f"{number}.parquet"
            contents = write_part(
                path, [table], row_group_rows=row_group_rows, zstd_level=level, metadata={}
            )
            size += contents.bytes
            paths.append(str(path))
        write_s = time.perf_counter() - started
        big_path = out / "big.parquet"
        started = time.perf_counter()
        big = write_part(
            big_path, [big_day], row_group_rows=row_group_rows, zstd_level=level, metadata={}
        )
        big_write_s = time.perf_counter() - started
        figures.append(
            {
                "row_group_rows": row_group_rows,
                "zstd_level": level,
                "bytes_per_event": round(size / rows, 1),
                "write_rows_per_s": round(rows / write_s),
                "person_scan_ms": round(scan_files_seconds(paths) * 1000, 1),
                "one_big_day_bytes_per_event": round(big.bytes / rows, 1),
                "one_big_day_write_rows_per_s": round(rows / big_write_s),
                "one_big_day_person_scan_ms": round(scan_files_seconds([str(big_path)]) * 1000, 1),
            }
        )
        print(f"   layout {figures[-1]}", flush=True)
        shutil.rmtree(out)
    return figures


async def time_scans(
    pool: asyncpg.Pool, engine: ScanEngine, start: datetime, end: datetime, runs: int
) -> list[dict[str, float]]:
    class Deps:
        def __init__(self) -> None:
            self.pool = pool
            self.scan_engine = engine

    results = []
    for _ in range(runs):
        started = time.perf_counter()
        scan = await open_scan(Deps(), PROJECT, start, end, include_bots=False, with_persons=False)
        opened = time.perf_counter()
        await scan.query(PERSON_SCAN)
        done = time.perf_counter()
        results.append(
            {
                "open_ms": (opened - started) * 1000,
                "person_scan_ms": (done - opened) * 1000,
                "total_ms": (done - started) * 1000,
                "rows": float(sum(t.rows for t in scan.tiers)),
            }
        )
        scan.close()
    return results


def summary(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(s[k] for s in samples), 1) for k in samples[0]}


async def run(database_url: str, events: int, days: int, work: Path) -> dict[str, Any]:
    first_day = datetime.now(UTC).date() - timedelta(days=days + 1)
    pool = await db.create_pool(database_url, min_size=2, max_size=6)
    figures: dict[str, Any] = {"events": events, "days": days}
    try:
        started = time.perf_counter()
        loaded = await load(pool, events, days, first_day)
        print(f"== loaded {loaded} events in {time.perf_counter() - started:.1f} s", flush=True)
        store = open_object_store(f"file://{work / 'objects'}")
        settings = DayExportSettings(work_dir=work / "export-work")
        started = time.perf_counter()
        run = await export_pending_days(
            pool, store, settings, grace=timedelta(0), projects=[PROJECT]
        )
        seconds = time.perf_counter() - started
        assert not run.failures, run.failures
        figures["export"] = {
            "parts": run.parts,
            "rows": run.rows,
            "seconds": round(seconds, 2),
            "rows_per_s": round(run.rows / seconds),
            "bytes_per_event": round(run.bytes / run.rows, 1),
            "postgres_bytes_per_event": round(
                float(
                    await pool.fetchval(
                        "SELECT sum(pg_total_relation_size(inhrelid))"
                        " + pg_total_relation_size('event_pages')"
                        " + pg_total_relation_size('event_clients')"
                        " + pg_total_relation_size('event_sources') FROM pg_inherits"
                        " WHERE inhparent = 'event_rows'::regclass"
                    )
                )
                / loaded,
                1,
            ),
        }
        print(f"== export {figures['export']}", flush=True)

        window_end = datetime.combine(first_day + timedelta(days=days), datetime.min.time(), UTC)
        window_start = window_end - timedelta(days=30)
        names = [
            r["object_name"]
            for r in await pool.fetch(
                "SELECT object_name FROM day_files WHERE state = 'active' AND day >= $1",
                window_start.date(),
            )
        ]
        tables = []
        for number, name in enumerate(names):
            local = work / f"read-{number}.parquet"
            await store.get_to_file(name, local)
            tables.append(pq.read_table(local))
            local.unlink()
        print("== layouts over the 30-day window", flush=True)
        figures["layouts"] = layout_figures(tables, work)

        print("== open_scan over 30 days", flush=True)
        cache_dir = work / "cache"
        engine = ScanEngine(DayFileCache(cache_dir, 4 * 1024**3, store))
        cold = []
        for _ in range(3):
            shutil.rmtree(cache_dir, ignore_errors=True)
            engine.close()
            engine = ScanEngine(DayFileCache(cache_dir, 4 * 1024**3, store))
            cold.extend(await time_scans(pool, engine, window_start, window_end, 1))
        warm = await time_scans(pool, engine, window_start, window_end, 5)
        engine.close()
        hot_only = []  # a fresh engine each time: nothing cached between runs
        for _ in range(3):
            hot_only.extend(await time_scans(pool, ScanEngine(), window_start, window_end, 1))
        figures["open_scan_30_days"] = {
            "cold_cache": summary(cold),
            "warm_cache": summary(warm),
            "postgres_only": summary(hot_only),
        }
        print(f"== open_scan {figures['open_scan_30_days']}", flush=True)
        await store.close()
    finally:
        await pool.close()
    return figures


def run_benchmark(events: int = 500_000, days: int = 35) -> dict[str, Any]:
    """The figures, against DATABASE_URL or an embedded PostgreSQL started for the run."""
    configure_logging("bench", "console", "warning")
    with tempfile.TemporaryDirectory(prefix="strata-bench-days-") as tmp:
        work = Path(tmp)
        server = None
        url = os.environ.get("DATABASE_URL")
        if not url:
            from strata_dev.embedded import EmbeddedPostgres

            server = EmbeddedPostgres(work / "pg").start()
            url = server.url.rsplit("/", 1)[0] + "/strata_bench"
        try:
            asyncio.run(db.ensure_database(url))

            async def migrate() -> None:
                conn = await asyncpg.connect(url)
                try:
                    await db.migrate(conn)
                finally:
                    await conn.close()

            asyncio.run(migrate())
            return asyncio.run(run(url, events, days, work))
        finally:
            if server is not None:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args()
    figures = run_benchmark(args.events, args.days)
    print(json.dumps(figures, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
