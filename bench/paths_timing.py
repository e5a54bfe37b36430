"""Times only the analyses benchmark's paths question (5 steps, 30 days, `bench.analyses`'
data), wall and CPU time of the whole process (DuckDB's threads included), and with
`--clickhouse` the benchmark's ClickHouse SQL over the same files in the same process (chdb:
the `bench` dependency group, which `just bench` installs).

For comparing two versions of the code on a shared machine: run it from each checkout in turn
(`python -m bench.paths_timing --scale 0.2`), several times, alternately."""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import peers
from bench.analyses import FIRST_DAY, _aliases, _positioned, _ranges, _scan, dataset
from libs.common.settings import QuerySettings
from services.query.analyses.conditions import EventScope
from services.query.analyses.paths import paths_spec, run_paths
from services.query.analyses.requests import PathsRequest
from services.query.scan_engine import ScanEngine


def _times(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    """Warm wall and CPU (process) times of `fn`, in ms, after one untimed run."""
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        started, used = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - used) * 1000)
    return {
        "wall_min_ms": round(min(wall), 1),
        "wall_median_ms": round(statistics.median(wall), 1),
        "cpu_min_ms": round(min(cpu), 1),
        "cpu_median_ms": round(statistics.median(cpu), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the analyses benchmark's paths question")
    parser.add_argument("--scale", type=float, default=1.0, help="as `just bench --scale`")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/strata-bench-analyses"))
    parser.add_argument("--clickhouse", action="store_true", help="time ClickHouse's SQL too")
    parser.add_argument(
        "--column-cache-mb",
        type=int,
        default=QuerySettings().column_cache_bytes // 1024**2,
        help="the decoded-column cache's budget (0: off)",
    )
    args = parser.parse_args()
    events, persons, days = int(5_000_000 * args.scale), int(200_000 * args.scale), 120
    files = dataset(args.data_dir, events, persons, days)
    start, stop = _ranges(days)["paths"]
    session = timedelta(days=1)
    end = datetime.combine(FIRST_DAY + timedelta(days=days), datetime.min.time(), UTC)
    # The query service's column cache (STRATA_COLUMN_CACHE_BYTES), filled before timing.
    engine = ScanEngine(column_cache_bytes=args.column_cache_mb * 1024**2)
    con, keyed, cached = _scan(engine, files, start - session, end, _aliases(persons))
    spec = paths_spec(PathsRequest(event_types=["pageview", "custom"], steps=5))
    positioned = _positioned(engine, files, start - session, end)
    scope = EventScope(
        start - session,
        end,
        person_keys=keyed,
        ties_by_position=positioned,
        cached_columns=cached,
    )
    result = run_paths(con, spec, scope, start, stop, session)
    # The same answer from two versions of the code gives the same digest.
    digest = hashlib.sha256(repr(result).encode()).hexdigest()[:12]
    print(f"strata: {_times(lambda: run_paths(con, spec, scope, start, stop, session), args.runs)}")
    print(f"  answer {digest}: {result.paths} paths, {result.persons} persons")
    con.close()
    engine.close()
    if args.clickhouse:
        first = (start.date() - FIRST_DAY).days
        sql = peers.clickhouse_paths_sql(files[first : first + 30], start, stop, 5)
        clickhouse = peers.ClickHousePeer()
        try:
            print(f"clickhouse: {_times(lambda: clickhouse.query(sql), args.runs)}")
        finally:
            clickhouse.close()
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
