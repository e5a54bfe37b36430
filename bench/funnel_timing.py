"""Times only the analyses benchmark's 5-step funnels (30 and 120 days, `bench.analyses`'
data), wall and CPU time of the whole process (DuckDB's threads included), and with
`--clickhouse` the benchmark's ClickHouse SQL over the same files in the same process (chdb:
the `bench` dependency group, which `just bench` installs).

For comparing two versions of the code on a shared machine: run it from each checkout in turn
(`python -m bench.funnel_timing --scale 0.2`), several times, alternately."""

from __future__ import annotations

import argparse
import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from bench import peers
from bench.analyses import FIRST_DAY, _aliases, _cached_rows, _scan, _us, dataset
from bench.paths_timing import _times
from libs.common.settings import QuerySettings
from services.query.analyses.conditions import EventScope
from services.query.analyses.funnels import FunnelResult, FunnelSpec, funnel_spec, run_funnel
from services.query.analyses.requests import Condition, FunnelRequest, FunnelStep, WindowSpec
from services.query.freed_memory import keep_freed_memory
from services.query.scan_engine import ScanEngine


class BenchmarkFunnel(NamedTuple):
    files: list[Path]  # the day files of `bench.analyses`' dataset at the scale
    persons: int
    end: datetime  # the dataset's end: the funnels span the days before it
    spec: FunnelSpec  # the benchmark's 5-step ordered funnel, 14-day window


def benchmark_funnel(scale: float, data_dir: Path) -> BenchmarkFunnel:
    """The analyses benchmark's data at `scale` (generated on first use) and its funnel."""
    events, persons, days = int(5_000_000 * scale), int(200_000 * scale), 120
    files = dataset(data_dir, events, persons, days)
    end = datetime.combine(FIRST_DAY + timedelta(days=days), datetime.min.time(), UTC)
    page = FunnelStep("$pageview", [Condition("path", "eq", "/")])
    pricing = FunnelStep("$pageview", [Condition("path", "eq", "/pricing")])
    steps = [page, pricing, FunnelStep("signup"), FunnelStep("add_to_cart"), FunnelStep("purchase")]
    return BenchmarkFunnel(
        files, persons, end, funnel_spec(FunnelRequest(steps=steps, window=WindowSpec(14, "day")))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the analyses benchmark's funnels")
    parser.add_argument("--scale", type=float, default=1.0, help="as `just bench --scale`")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--spans", default="30,120", help="the funnels' days, comma-separated")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/strata-bench-analyses"))
    parser.add_argument(
        "--threads", type=int, default=2, help="STRATA_ANALYSIS_THREADS (1: never split)"
    )
    parser.add_argument("--clickhouse", action="store_true", help="time ClickHouse's SQL too")
    parser.add_argument(
        "--column-cache-mb",
        type=int,
        default=QuerySettings().column_cache_bytes // 1024**2,
        help="the decoded-column cache's budget (0: off)",
    )
    parser.add_argument(
        "--keep-freed-bytes",
        type=int,
        default=QuerySettings().query_keep_freed_bytes,
        help="STRATA_QUERY_KEEP_FREED_BYTES (0: glibc's defaults)",
    )
    args = parser.parse_args()
    # As the query service does at start (STRATA_QUERY_KEEP_FREED_BYTES; 0: glibc's defaults).
    keep_freed_memory(args.keep_freed_bytes)
    files, persons, end, spec = benchmark_funnel(args.scale, args.data_dir)
    # The query service's column cache (STRATA_COLUMN_CACHE_BYTES), filled before timing.
    engine = ScanEngine(column_cache_bytes=args.column_cache_mb * 1024**2)
    aliases = _aliases(persons)
    clickhouse = peers.ClickHousePeer() if args.clickhouse else None
    try:
        for span in (int(s) for s in args.spans.split(",")):
            start = end - timedelta(days=span)
            con, keyed, cached = _scan(engine, files, start, end, aliases)
            scope = EventScope(
                start,
                end,
                person_keys=keyed,
                cached_columns=cached,
                cached_rows=_cached_rows(engine, files, start, end),
                threads=args.threads,
            )
            stop = end - timedelta(seconds=1)

            def once() -> FunnelResult:
                return run_funnel(con, spec, scope, _us(start), _us(stop))  # noqa: B023

            result = once()
            # The same answer from two versions of the code gives the same digest.
            digest = hashlib.sha256(repr(result).encode()).hexdigest()[:12]
            counts = [s.count for s in result.total.steps]
            print(f"{span}d strata ({args.threads} threads): {_times(once, args.runs)}")
            print(f"  answer {digest}: {counts} (keyed: {keyed})")
            con.close()
            if clickhouse is not None:
                first = (start.date() - FIRST_DAY).days
                sql = peers.clickhouse_funnel_sql(files[first:], start, end, timedelta(days=14))
                print(f"{span}d clickhouse: {_times(lambda: clickhouse.query(sql), args.runs)}")  # noqa: B023
    finally:
        if clickhouse is not None:
            clickhouse.close()
        engine.close()
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
