"""`just bench`: run every benchmark, print the figures, and write them to
bench/results/latest.json (and a timestamped copy). Figures only: nothing here passes or fails.

    python -m bench [--only ingest,pipeline,day_files,analyses] [--seconds 20]
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

from bench import analyses, day_files, ingest_gateway, pipeline

RESULTS = Path(__file__).resolve().parent / "results"

# Targets from the issues, printed beside each figure.
TARGETS = {
    "ingest.ingest_events_per_s": ">= 200000",
    "pipeline.pipeline_saturation.stored_events_per_s": ">= 50000",
    "pipeline.pipeline_half_load.freshness_p95_s": "< 2",
    "analyses.funnel_5_steps_30d.warm_median_ms": "<= 150",
    "analyses.funnel_5_steps_120d.warm_median_ms": "<= 300",
    "analyses.retention_daily_30d.warm_median_ms": "<= 400",
    "analyses.paths_5_steps_30d.warm_median_ms": "<= 1000",
}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = value


def main() -> None:
    parser = argparse.ArgumentParser(description="Strata benchmarks")
    parser.add_argument("--only", default="ingest,pipeline,day_files,analyses")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    selected = {s.strip() for s in args.only.split(",") if s.strip()}
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
    if "pipeline" in selected:
        print("== pipeline: strata up + load on this machine", flush=True)
        results["pipeline"] = pipeline.run_benchmark(args.seconds)
    if "day_files" in selected:
        print("== day files: export, Parquet layout, open_scan over 30 days", flush=True)
        results["day_files"] = day_files.run_benchmark()
    if "analyses" in selected:
        print("== analyses: funnels, retention, paths over 5M events in day files", flush=True)
        results["analyses"] = analyses.run_benchmark()
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
