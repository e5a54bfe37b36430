"""The decoded-column cache (services/query/column_cache.py) on the analyses benchmark's
questions (`bench.analyses`' data): the 5-step funnels over 30 and 120 days, retention and
paths, each timed warm with the cache off and on, alternately in one process (CPU of the whole
process, DuckDB's threads included, and wall), their answers compared, and the bytes the cache
holds for each question's days.

    python -m bench.column_cache --scale 1 --runs 7

For callgrind, one side alone (`--mode off` or `on`), at two `--runs` counts: the slope is
the instructions of a warm run, start-up and filling cancelled out, e.g.

    valgrind --tool=callgrind python -m bench.column_cache --scale 0.2 --mode on --runs 1
    valgrind --tool=callgrind python -m bench.column_cache --scale 0.2 --mode on --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from bench.analyses import FIRST_DAY, _aliases, _cached_rows, _positioned, _scan, _us, dataset
from libs.common.settings import QuerySettings
from services.query.analyses.conditions import EventScope
from services.query.analyses.funnels import funnel_spec, run_funnel
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
from services.query.params import TimeWindow
from services.query.scan_engine import ScanEngine

# A question: its scan's range, and the analysis run on a scan's connection with its scope.
Question = tuple[
    datetime, datetime, Callable[[duckdb.DuckDBPyConnection, EventScope], object], dict[str, Any]
]


def _questions(days: int) -> dict[str, Question]:
    end = datetime.combine(FIRST_DAY + timedelta(days=days), datetime.min.time(), UTC)
    page = FunnelStep("$pageview", [Condition("path", "eq", "/")])
    pricing = FunnelStep("$pageview", [Condition("path", "eq", "/pricing")])
    steps = [page, pricing, FunnelStep("signup"), FunnelStep("add_to_cart"), FunnelStep("purchase")]
    funnel = funnel_spec(FunnelRequest(steps=steps, window=WindowSpec(14, "day")))
    questions: dict[str, Question] = {}
    for span in (30, 120):
        start = end - timedelta(days=span)

        def funnel_run(
            con: duckdb.DuckDBPyConnection, scope: EventScope, start: datetime = start
        ) -> object:
            stop = end - timedelta(seconds=1)
            return run_funnel(con, funnel, scope, _us(start), _us(stop)).total

        questions[f"funnel_{span}d"] = (start, end, funnel_run, {"threads": 2})
    retention = retention_spec(
        RetentionRequest(
            start_event=EventMatch("$pageview"), return_event=EventMatch("$pageview"), intervals=7
        )
    )
    window = TimeWindow(end - timedelta(days=37), end - timedelta(days=7), ZoneInfo("UTC"))
    plan = retention_plan(retention, window)
    now = datetime.now(UTC)
    questions["retention_30d"] = (
        plan.starts[0],
        plan.scan_end,
        lambda con, scope: run_retention(con, retention, plan, scope, now).rows,
        {},
    )
    paths = paths_spec(PathsRequest(event_types=["pageview", "custom"], steps=5))
    start, stop, session = end - timedelta(days=31), end - timedelta(days=1), timedelta(days=1)
    questions["paths_30d"] = (
        start - session,
        end,
        lambda con, scope: run_paths(con, paths, scope, start, stop, session),
        {"keyed_ties": True},
    )
    return questions


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description="The column cache off and on, alternately")
    parser.add_argument("--scale", type=float, default=1.0, help="as `just bench --scale`")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", default="", help="questions, comma-separated (default: all)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/strata-bench-analyses"))
    parser.add_argument(
        "--cache-mb", type=int, default=QuerySettings().column_cache_bytes // 1024**2
    )
    parser.add_argument("--mode", choices=("both", "off", "on"), default="both")
    args = parser.parse_args()
    events, persons, days = int(5_000_000 * args.scale), int(200_000 * args.scale), 120
    files = dataset(args.data_dir, events, persons, days)
    aliases = _aliases(persons)
    engines = {"off": ScanEngine(), "on": ScanEngine(column_cache_bytes=args.cache_mb * 1024**2)}
    if args.mode != "both":
        engines.pop("on" if args.mode == "off" else "off").close()
    try:
        for name, (start, end, run, options) in _questions(days).items():
            if args.only and name not in args.only.split(","):
                continue
            runs = {}
            for label, engine in engines.items():
                con, keyed, cached = _scan(engine, files, start, end, aliases)
                scope = EventScope(
                    start,
                    end,
                    person_keys=keyed,
                    ties_by_position=options.get("keyed_ties", False)
                    and _positioned(engine, files, start, end),
                    cached_columns=cached,
                    cached_rows=_cached_rows(engine, files, start, end),
                    threads=options.get("threads", 1),
                )
                runs[label] = (con, scope, run(con, scope))  # warm-up, and the answer
            answers = {repr(answer) for _con, _scope, answer in runs.values()}
            assert len(answers) == 1, f"{name}: answers differ"
            cpu: dict[str, list[float]] = {label: [] for label in runs}
            wall: dict[str, list[float]] = {label: [] for label in runs}
            for _ in range(args.runs):
                for label, (con, scope, _answer) in runs.items():
                    started, used = time.perf_counter(), time.process_time()
                    run(con, scope)
                    wall[label].append((time.perf_counter() - started) * 1000)
                    cpu[label].append((time.process_time() - used) * 1000)
            timed = "; ".join(
                f"{label}: cpu median {_median(cpu[label])} ms, wall median {_median(wall[label])}"
                for label in runs
            )
            held = engines["on"].columns if "on" in engines else None
            cache = f"cache {held.nbytes / 1e6:.1f} MB in {len(held)} files; " if held else ""
            print(f"{name}: {timed}; {cache}same answer; load {os.getloadavg()[0]:.2f}")
            for con, _scope, _answer in runs.values():
                con.close()
    finally:
        for engine in engines.values():
            engine.close()


if __name__ == "__main__":
    main()
