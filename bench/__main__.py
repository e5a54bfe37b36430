"""`just bench`: run every benchmark, print the figures, and write them to
bench/results/latest.json (and a timestamped copy). Figures only: nothing here passes or fails.

    python -m bench [--only ingest,ingest_stages,aggregator,aggregator_stages,pipeline,demo,
                            day_files,analyses,tiers,dashboard,recovery,raw_stream,
                            sessionizer_backlog,sessionizer_checkpoints]
                    [--seconds 20] [--scale 1.0]

--scale multiplies the analyses/tiers dataset (5,000,000 events, 200,000 persons; always 120
days) for quick runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import (
    aggregator_stages,
    aggregator_writer,
    analyses,
    dashboard,
    day_files,
    demo_footprint,
    ingest_gateway,
    ingest_stages,
    pipeline,
    raw_stream,
    recovery,
    sessionizer_backlog,
    sessionizer_checkpoints,
    tiers,
)

RESULTS = Path(__file__).resolve().parent / "results"

# Targets from the issues, printed beside each figure.
TARGETS = {
    "ingest.ingest_events_per_s": ">= 100000",
    "pipeline.pipeline_saturation.stored_events_per_s": ">= 50000",
    "pipeline.pipeline_half_load.freshness_p95_s": "< 1",
    "pipeline.stored_to_raw_ceiling_ratio": "aim >= 0.5 (same run)",
    "demo.rollup_rows_per_stored_event": "<= 1",
    "demo.pg_bytes_per_stored_event": "<= 600",
    "demo.data_dir_mb": "<= 250",
    "demo.after_compaction.pg_bytes_per_stored_event": "<= 600",
    "demo.after_compaction.data_dir_disk_mb_after_checkpoint": "<= 250",
    "demo.backfill_drain_seconds_after_done": "<= 20",
    "analyses.funnel_5_steps_30d.warm_median_ms": "<= 100 (at --scale 1)",
    "analyses.funnel_5_steps_120d.warm_median_ms": "<= 250 (at --scale 1)",
    "analyses.retention_daily_30d.warm_median_ms": "<= 400",
    "analyses.paths_5_steps_30d.warm_median_ms": "<= 1000",
    "tiers.metrics_year_from_rollups.warm_median_ms": "<= 30",
    "dashboard.interactive_median_ms": "<= 1000",
    "recovery.kill9_nats_to_ingest_2xx_s.max": "<= 10",
    "recovery.kill9_postgres_to_ingest_2xx_s.max": "<= 10",
    # The 120-day funnel target, across tiers: every tier answers as one store to the user.
    "tiers.funnel_5_steps_120d.hot_90_with_day_files_cold_30.total_median_ms": "<= 300",
    "tiers.funnel_5_steps_120d.all_cold_warm_cache.total_median_ms": "<= 300",
    "tiers.funnel_5_steps_120d.hot_90_without_day_files_cold_30.total_median_ms": "<= 1000",
}
# The peers' times measured on this machine when the analyses' targets were set (DESIGN.md,
# "Query engine"), printed beside this run's.
for _label, _postgres, _clickhouse in (
    ("funnel_5_steps_30d", 519, 52),
    ("funnel_5_steps_120d", 1063, 119),
    ("retention_daily_30d", 5075, 187),
    ("paths_5_steps_30d", 3699, 1213),
):
    TARGETS[f"analyses.{_label}_peers.postgres_warm_median_ms"] = f"measured before {_postgres}"
    TARGETS[f"analyses.{_label}_peers.clickhouse_warm_median_ms"] = f"measured before {_clickhouse}"
    TARGETS[f"analyses.{_label}_peers.strata_to_clickhouse_ratio"] = "aim <= 1"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = value


def main() -> None:
    parser = argparse.ArgumentParser(description="Strata benchmarks")
    parser.add_argument(
        "--only",
        default="ingest,ingest_stages,aggregator,aggregator_stages,pipeline,demo,day_files,analyses,"
        "tiers,dashboard,recovery,raw_stream,sessionizer_backlog,sessionizer_checkpoints",
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="analyses/tiers dataset size, 1.0 = 5M events"
    )
    args = parser.parse_args()
    selected = {s.strip() for s in args.only.split(",") if s.strip()}
    events, persons = round(5_000_000 * args.scale), round(200_000 * args.scale)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        },
    }
    started = time.monotonic()
    if "ingest" in selected:
        print("== ingest: one process, 100-event batches", flush=True)
        results["ingest"] = {
            "worst_case_100_people_per_batch": ingest_gateway.run_benchmark(args.seconds),
            "browser_like_1_person_per_batch": ingest_gateway.run_benchmark(
                args.seconds, people_per_batch=1
            ),
        }
        results["ingest"]["ingest_events_per_s"] = results["ingest"][
            "browser_like_1_person_per_batch"
        ]["ingest_events_per_s"]
    if "ingest_stages" in selected:
        print("== ingest stages: CPU per event of the event path, one process, no I/O", flush=True)
        results["ingest_stages"] = ingest_stages.run_benchmark()
    if "aggregator" in selected:
        print("== aggregator: write_events alone, 4,000-event batches, 2 writers", flush=True)
        results["aggregator"] = {
            "many_visitors": aggregator_writer.run_benchmark(120_000, 4000, 2, 20_000),
            "few_visitors_like_the_pipeline_load": aggregator_writer.run_benchmark(
                120_000, 4000, 2, 20
            ),
        }
    if "aggregator_stages" in selected:
        print("== aggregator stages: CPU per event of the writer's Python, no I/O", flush=True)
        results["aggregator_stages"] = aggregator_stages.run_benchmark()
    if "pipeline" in selected:
        print(
            "== pipeline: the raw ceiling (aiohttp, JetStream, COPY), then strata up + load",
            flush=True,
        )
        results["pipeline"] = pipeline.run_benchmark(args.seconds)
    if "demo" in selected:
        print("== demo: strata up --demo, 130 days x 3 projects: drain and footprint", flush=True)
        results["demo"] = demo_footprint.run_benchmark()
    if "day_files" in selected:
        print("== day files: export, Parquet layout, open_scan over 30 days", flush=True)
        results["day_files"] = day_files.run_benchmark()
    if "analyses" in selected:
        print(
            f"== analyses: funnels, retention, paths over {events} events in day files,"
            " beside PostgreSQL (Umami's SQL) and ClickHouse (chdb)",
            flush=True,
        )
        results["analyses"] = analyses.run_benchmark(events=events, persons=persons)
    if "tiers" in selected:
        print("== tiers: hot vs cold bytes, cold move, funnels across tiers, erasure", flush=True)
        results["tiers"] = tiers.run_benchmark(events=events, persons=persons)
    if "dashboard" in selected:
        print("== dashboard: the demo project's overview, cold cache, Chromium", flush=True)
        results["dashboard"] = dashboard.run_benchmark()
    if "raw_stream" in selected:
        print("== raw stream: NATS CPU per message with and without S2", flush=True)
        results["raw_stream"] = raw_stream.run_benchmark()
    if "sessionizer_backlog" in selected:
        print("== sessionizer backlog: sessionizer and NATS CPU per event", flush=True)
        results["sessionizer_backlog"] = sessionizer_backlog.run_benchmark()
    if "sessionizer_checkpoints" in selected:
        print("== sessionizer checkpoints: WAL and CPU, whole state vs changes", flush=True)
        results["sessionizer_checkpoints"] = {
            mode: sessionizer_checkpoints.run_benchmark(mode) for mode in ("whole", "incremental")
        }
    if "recovery" in selected:
        print("== recovery: strata up under load, kill -9 of NATS and of PostgreSQL", flush=True)
        results["recovery"] = recovery.run_benchmark()
    results["seconds"] = round(time.monotonic() - started, 1)

    flat: dict[str, Any] = {}
    _flatten("", {k: v for k, v in results.items() if k not in ("machine",)}, flat)
    print("\n== figures")
    for key, value in flat.items():
        target = TARGETS.get(key)
        print(f"{key:75} {value}" + (f"   (target {target})" if target else ""))
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (RESULTS / "latest.json").write_text(text + "\n")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"bench-{stamp}.json").write_text(text + "\n")
    print(f"\nwritten to {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
