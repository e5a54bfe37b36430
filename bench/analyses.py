"""Analyses engine benchmark: funnels, retention and paths on a bench-size dataset
(default 5,000,000 events over 120 days, 200,000 persons) laid out as the day files the data
plane writes (one zstd Parquet part per UTC day, sorted by device then time), read through the
same `events_scan` view the query service builds (services/query/event_scan.py), warm, median
of several runs. Figures only.

    python -m bench.analyses [--events 5000000] [--persons 200000] [--days 120] [--runs 5]

The dataset is generated once into --data-dir (default /tmp/strata-bench-analyses) and reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import peers
from libs.common.day_files.layout import EVENT_FILE_SCHEMA, SORT_KEYS, TIE_ORDER, TIE_ORDER_KEY
from libs.common.settings import QuerySettings
from services.query.analyses.conditions import EventScope
from services.query.analyses.funnels import FunnelSpec, funnel_spec, run_funnel
from services.query.analyses.paths import paths_spec, run_paths
from services.query.analyses.requests import (
    Condition,
    EventMatch,
    FunnelRequest,
    FunnelStep,
    PathsRequest,
    RetentionRequest,
    WindowSpec,
)
from services.query.analyses.retention import retention_plan, retention_spec, run_retention
from services.query.column_cache import CACHED_VIEW_COLUMNS, CachedRows
from services.query.event_scan import _build_view, cached_columns, ties_by_position
from services.query.freed_memory import keep_freed_memory
from services.query.params import TimeWindow
from services.query.scan_engine import ScanEngine

FIRST_DAY = date(2025, 1, 1)
PAGES = np.array(["/", "/pricing", "/docs", "/blog", "/features", "/about", "/docs/install"])
CUSTOM = np.array(["signup", "add_to_cart", "purchase", "search"])


def _day_table(rng: np.random.Generator, day: date, persons: int, events: int) -> pa.Table:
    """One day's events: sessions of a few events each, by persons of skewed activity."""
    start = int(datetime.combine(day, datetime.min.time(), UTC).timestamp() * 1e6)
    # Heavy-tailed activity: a few persons produce many events, most a handful.
    weights = 1.0 / np.arange(1, persons + 1) ** 0.6
    weights /= weights.sum()
    sessions = max(1, events // 5)
    session_person = rng.choice(persons, sessions, p=weights)
    lengths = rng.integers(1, 10, sessions)
    total = int(lengths.sum())
    session_of = np.repeat(np.arange(sessions), lengths)
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    index_in_session = np.arange(total) - np.repeat(first, lengths)
    session_start = start + rng.integers(0, 86_400 * 10**6, sessions)
    ts = session_start[session_of] + index_in_session * rng.integers(5, 300, total) * 10**6
    ts = np.minimum(ts, start + 86_400 * 10**6 - 1)
    custom = (index_in_session > 0) & (rng.random(total) < 0.3)
    names = np.where(custom, CUSTOM[rng.integers(0, len(CUSTOM), total)], "$pageview")
    paths = pa.array(PAGES[np.minimum(index_in_session, rng.integers(0, 7, total))], mask=custom)
    person = session_person[session_of]
    distinct = np.char.add("d", person.astype(str))
    users = pa.array(np.char.add("u", person.astype(str)), mask=person % 3 != 0)
    amounts = rng.integers(1, 200, total)
    props = np.where(
        names == "purchase",
        np.char.add(np.char.add('{"amount": ', amounts.astype(str)), "}"),
        "{}",
    )
    n = total
    table = pa.table(
        {
            "project_id": pa.array(np.full(n, "bench")),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "event_id": pa.array(np.char.add(f"{day.isoformat()}-", np.arange(n).astype(str))),
            "name": pa.array(names),
            "type": pa.array(np.where(custom, "track", "page")),
            "distinct_id": pa.array(distinct),
            "user_id": users,
            "anonymous_id": pa.array(distinct),
            "session_id": pa.array(np.char.add(f"{day.isoformat()}-s", session_of.astype(str))),
            "path": paths,
            "country": pa.array(np.array(["DE", "US", "FR", "IN"])[rng.integers(0, 4, n)]),
            "is_bot": pa.array(np.zeros(n, bool)),
            "non_interactive": pa.array(np.zeros(n, bool)),
            "properties": pa.array(props),
            "received_at": pa.array(ts, pa.timestamp("us", tz="UTC")),
        }
    )
    # Person keys as the aggregator assigns them (person_keys): d<p> is 2p, u<p> 2p + 1.
    identified = person % 3 == 0
    table = table.append_column("person_key", pa.array(2 * person + identified))
    table = table.append_column("device_key", pa.array(2 * person, mask=~identified))
    for field in EVENT_FILE_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(n, field.type))
    table = table.select(EVENT_FILE_SCHEMA.names).cast(EVENT_FILE_SCHEMA)
    return table.sort_by([(name, order) for name, order in SORT_KEYS])


def dataset(data_dir: Path, events: int, persons: int, days: int) -> list[Path]:
    """Day files of the bench dataset (generated on first use)."""
    # "-k": files with person keys, sorted by them; "t": claiming the tie order, as parts
    # written by the export do (files of earlier layouts stay beside them).
    folder = data_dir / f"e{events}-p{persons}-d{days}-kt"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    files = []
    for i in range(days):
        day = FIRST_DAY + timedelta(days=i)
        path = folder / f"dt={day.isoformat()}.parquet"
        if not path.exists():
            table = _day_table(rng, day, persons, events // days)
            # Sorted by Arrow (ids by code point): the order the footer claims.
            table = table.replace_schema_metadata({TIE_ORDER_KEY: TIE_ORDER})
            pq.write_table(table, path, compression="zstd", row_group_size=131_072)
        files.append(path)
    return files


def _aliases(persons: int) -> pa.Table:
    """Every third person's device is linked to their user id, as identify calls do."""
    linked = np.arange(0, persons, 3)
    return pa.table(
        {
            "distinct_id": pa.array(np.char.add("d", linked.astype(str))),
            "person_id": pa.array(np.char.add("u", linked.astype(str))),
            "device_key": pa.array(2 * linked),
            "person_key": pa.array(2 * linked + 1),
        }
    )


def _scan(
    engine: ScanEngine, files: list[Path], start: datetime, end: datetime, aliases: pa.Table
) -> tuple[duckdb.DuckDBPyConnection, bool, frozenset[str]]:
    """A connection holding the scan's views, whether `events_scan_keyed` is one and the
    columns of its views over cached columns (EventScope.cached_columns). As
    the query service's scans (event_scan.open_scan): with the engine's column cache on, the
    files it can hold are decoded first (a warm cache; the service fills it after a scan)."""
    con = engine.connection()
    paths = _scan_paths(files, start, end)
    engine.columns.fill(cached_columns(engine, paths)[1])
    # Pinned for the bench's life; its engine is closed at the end.
    cached, _ = cached_columns(engine, paths)
    keyed = _build_view(
        con,
        paths=paths,
        hot=[],  # every day in files
        aliases=aliases,
        persons=None,
        start=start,
        end=end,
        include_bots=False,
        unkeyed_paths=engine.file_columns.unkeyed(paths),
        file_columns=engine.file_columns,
        cached=cached.tables,
    )
    return con, keyed, CACHED_VIEW_COLUMNS if cached.tables else frozenset()


def _cached_rows(
    engine: ScanEngine, files: list[Path], start: datetime, end: datetime
) -> CachedRows | None:
    """Every row of `_scan`'s views as the column cache's tables, as the service's scans give
    them (EventScan.cached_rows) when every file is cached (no rows from PostgreSQL here)."""
    paths = _scan_paths(files, start, end)
    found, missing = cached_columns(engine, paths)
    if missing or not engine.columns.enabled:
        return None
    return CachedRows(tuple(found.tables[p] for p in paths), start, end, False)


def _scan_paths(files: list[Path], start: datetime, end: datetime) -> list[str]:
    first = (start.date() - FIRST_DAY).days
    last = (end.date() - FIRST_DAY).days
    return [str(p) for p in files[max(0, first) : last + 1]]


def _positioned(engine: ScanEngine, files: list[Path], start: datetime, end: datetime) -> bool:
    """Whether every row of `_scan`'s views has a position (event_scan.ties_by_position)."""
    return ties_by_position([], _scan_paths(files, start, end), engine.file_columns)


def _timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    cold_started = time.perf_counter()
    fn()
    cold = (time.perf_counter() - cold_started) * 1000
    warm = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        warm.append((time.perf_counter() - started) * 1000)
    return {"first_ms": round(cold, 1), "warm_median_ms": round(statistics.median(warm), 1)}


def _us(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000


FUNNEL_THREADS = 2


def _timed_funnel(
    con: duckdb.DuckDBPyConnection,
    funnel: FunnelSpec,
    start: datetime,
    end: datetime,
    runs: int,
    keyed: bool,
    cached: frozenset[str] = frozenset(),
    cached_rows: CachedRows | None = None,
) -> dict[str, Any]:
    """Attempts start in [start, end - 1 s); their steps may follow until `end`."""
    counts: list[int] = []
    # Split over threads by person as the service does by default (STRATA_ANALYSIS_THREADS).
    scope = EventScope(
        start,
        end,
        person_keys=keyed,
        cached_columns=cached,
        cached_rows=cached_rows,
        threads=FUNNEL_THREADS,
    )

    def once() -> None:
        stop = end - timedelta(seconds=1)
        result = run_funnel(con, funnel, scope, _us(start), _us(stop))
        counts[:] = [s.count for s in result.total.steps]

    return {**_timed(once, runs), "persons_per_step": counts, "threads": FUNNEL_THREADS}


def run_benchmark(
    events: int = 5_000_000,
    persons: int = 200_000,
    days: int = 120,
    runs: int = 5,
    data_dir: Path = Path("/tmp/strata-bench-analyses"),
    with_peers: bool = True,
) -> dict[str, Any]:
    """Time each analysis (first run, then the median of `runs` warm runs), and with
    `with_peers` the same questions asked of PostgreSQL and ClickHouse (bench/peers.py)."""
    started = time.perf_counter()
    # As the query service does at start (STRATA_QUERY_KEEP_FREED_BYTES).
    keep_freed_memory(QuerySettings().query_keep_freed_bytes)
    files = dataset(data_dir, events, persons, days)
    results: dict[str, Any] = {
        "dataset": {
            "events": events,
            "persons": persons,
            "days": days,
            "prepare_s": round(time.perf_counter() - started, 1),
        }
    }
    results.update(_strata_figures(files, persons, days, runs))
    if with_peers:
        results.update(_peer_figures(files, days, runs, results))
    return results


def _strata_figures(files: list[Path], persons: int, days: int, runs: int) -> dict[str, Any]:
    """Strata's engine over the day files, as the query service runs it."""
    results: dict[str, Any] = {}
    # The query service's column cache (STRATA_COLUMN_CACHE_BYTES), filled before timing.
    engine = ScanEngine(column_cache_bytes=QuerySettings().column_cache_bytes)
    aliases = _aliases(persons)
    end = datetime.combine(FIRST_DAY + timedelta(days=days), datetime.min.time(), UTC)

    page = FunnelStep("$pageview", [Condition("path", "eq", "/")])
    pricing = FunnelStep("$pageview", [Condition("path", "eq", "/pricing")])
    steps = [page, pricing, FunnelStep("signup"), FunnelStep("add_to_cart"), FunnelStep("purchase")]
    funnel = funnel_spec(FunnelRequest(steps=steps, window=WindowSpec(14, "day")))
    for label, span in (("funnel_5_steps_30d", 30), ("funnel_5_steps_120d", 120)):
        start = end - timedelta(days=min(span, days))
        con, keyed, cached = _scan(engine, files, start, end, aliases)
        results[label] = {
            **_timed_funnel(
                con,
                funnel,
                start,
                end,
                runs,
                keyed,
                cached,
                _cached_rows(engine, files, start, end),
            ),
            "keyed": keyed,
        }
        con.close()

    retention = retention_spec(
        RetentionRequest(
            start_event=EventMatch("$pageview"), return_event=EventMatch("$pageview"), intervals=7
        )
    )
    window = TimeWindow(end - timedelta(days=37), end - timedelta(days=7), ZoneInfo("UTC"))
    plan = retention_plan(retention, window)
    con, _, cached = _scan(engine, files, plan.starts[0], plan.scan_end, aliases)
    scope = EventScope(plan.starts[0], plan.scan_end, cached_columns=cached)
    now = datetime.now(UTC)
    results["retention_daily_30d"] = _timed(
        lambda: run_retention(con, retention, plan, scope, now), runs
    )
    con.close()

    paths = paths_spec(PathsRequest(event_types=["pageview", "custom"], steps=5))
    start, stop, session = end - timedelta(days=31), end - timedelta(days=1), timedelta(days=1)
    con, keyed, cached = _scan(engine, files, start - session, end, aliases)
    # Person keys when the files have them, as the service's scope gives them (runner.py).
    positioned = _positioned(engine, files, start - session, end)
    scope = EventScope(
        start - session,
        end,
        person_keys=keyed,
        ties_by_position=positioned,
        cached_columns=cached,
    )
    results["paths_5_steps_30d"] = _timed(
        lambda: run_paths(con, paths, scope, start, stop, session), runs
    )
    con.close()
    engine.close()
    return results


def _ranges(days: int) -> dict[str, Any]:
    """The windows Strata's analyses above are asked about, for the peers to ask the same."""
    end = datetime.combine(FIRST_DAY + timedelta(days=days), datetime.min.time(), UTC)
    return {
        "end": end,
        "funnels": {f"funnel_5_steps_{n}d": end - timedelta(days=min(n, days)) for n in (30, 120)},
        "retention_first_cohort": end - timedelta(days=37),
        "paths": (end - timedelta(days=31), end - timedelta(days=1)),
    }


def _peer_figures(
    files: list[Path], days: int, runs: int, strata: dict[str, Any]
) -> dict[str, Any]:
    """The same questions to PostgreSQL (Umami's SQL shape) and ClickHouse (chdb), with
    Strata's warm time as a ratio to each."""
    ranges = _ranges(days)
    end: datetime = ranges["end"]
    window = timedelta(days=14)
    peer_runs = max(1, min(runs, 3))  # the PostgreSQL queries take seconds each
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="strata-bench-peers-") as tmp:
        print("   loading the events into PostgreSQL for the peer queries", flush=True)
        postgres = peers.PostgresPeer(Path(tmp))
        clickhouse = peers.ClickHousePeer()
        try:
            rows = postgres.load(files)
            figures["peers_dataset"] = {
                "postgres_rows": rows,
                "postgres_load_s": round(postgres.load_s, 1),
                "postgres_bytes_per_event": round(postgres.table_bytes / max(rows, 1), 1),
            }
            questions: dict[str, tuple[str, str]] = {}
            for label, start in ranges["funnels"].items():
                first = (start.date() - FIRST_DAY).days
                span = files[max(0, first) :]
                questions[label] = (
                    peers.postgres_funnel_sql(start, end, window),
                    peers.clickhouse_funnel_sql(span, start, end, window),
                )
            first_cohort: datetime = ranges["retention_first_cohort"]
            first = (first_cohort.date() - FIRST_DAY).days
            questions["retention_daily_30d"] = (
                peers.postgres_retention_sql(first_cohort, 30, 7),
                peers.clickhouse_retention_sql(files[first : first + 37], first_cohort, 30, 7),
            )
            start, stop = ranges["paths"]
            first = (start.date() - FIRST_DAY).days
            questions["paths_5_steps_30d"] = (
                peers.postgres_paths_sql(start, stop, 5),
                peers.clickhouse_paths_sql(files[first : first + 30], start, stop, 5),
            )
            for label, (postgres_sql, clickhouse_sql) in questions.items():
                strata_ms = strata[label]["warm_median_ms"]
                on_postgres = peers.time_postgres(postgres, postgres_sql, peer_runs)
                on_clickhouse = peers.timed(partial(clickhouse.query, clickhouse_sql), runs)
                figures[label + "_peers"] = {
                    "postgres_warm_median_ms": on_postgres["warm_median_ms"],
                    "clickhouse_warm_median_ms": on_clickhouse["warm_median_ms"],
                    "strata_to_postgres_ratio": peers.ratio(
                        strata_ms, on_postgres["warm_median_ms"]
                    ),
                    "strata_to_clickhouse_ratio": peers.ratio(
                        strata_ms, on_clickhouse["warm_median_ms"]
                    ),
                    "postgres_rows": len(on_postgres.get("answer", [])),
                    "clickhouse_rows": len(on_clickhouse["answer"]),
                }
                if label.startswith("funnel"):
                    # Persons reaching at least each step (windowFunnel gives the furthest).
                    figures[label + "_peers"]["postgres_persons_per_step"] = [
                        int(r[1]) for r in on_postgres.get("answer", [])
                    ]
                    at_level = {int(r[0]): int(r[1]) for r in on_clickhouse["answer"]}
                    figures[label + "_peers"]["clickhouse_persons_per_step"] = [
                        sum(n for level, n in at_level.items() if level >= step)
                        for step in range(1, len(peers.FUNNEL_STEPS) + 1)
                    ]
                print(f"   {label}: {figures[label + '_peers']}", flush=True)
        finally:
            clickhouse.close()
            postgres.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="Analyses engine benchmark")
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/strata-bench-analyses"))
    parser.add_argument("--no-peers", action="store_true", help="time Strata only")
    args = parser.parse_args()
    figures = run_benchmark(
        args.events, args.persons, args.days, args.runs, args.data_dir, not args.no_peers
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
