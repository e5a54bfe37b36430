"""Times only the attempts kernel of `bench.funnel_timing`'s 5-step funnels (one thread, the
whole stream in one piece): the funnel runs once to capture its sorted `EventStream`, then
`attempts` and `best_attempts` run `--runs` times on fresh copies of it (the stream's cached
look-up arrays are part of the work). Prints CPU medians of the attempts and the best-attempt
passes, the counts of attempts and persons, and a digest of the best attempts (equal from two
versions of the code when they agree).

For callgrind, the slope between two `--runs` counts is the instructions per kernel run:
    valgrind --tool=callgrind python -m bench.funnel_attempts --scale 0.2 --spans 120 --runs 1
    valgrind --tool=callgrind python -m bench.funnel_attempts --scale 0.2 --spans 120 --runs 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from bench.analyses import _aliases, _scan, _us
from bench.funnel_timing import benchmark_funnel
from services.query.analyses.conditions import EventScope
from services.query.analyses.funnel_orders import (
    ORDER_STRATEGIES,
    Attempts,
    EventStream,
    Flags,
    FunnelOrder,
    FunnelShape,
    best_attempts,
)
from services.query.analyses.funnels import run_funnel
from services.query.scan_engine import ScanEngine


class _Capture(FunnelOrder):
    """The ordered strategy, keeping the arguments of its last call."""

    def __init__(self, inner: FunnelOrder) -> None:
        self.inner = inner
        self.args: tuple[EventStream, FunnelShape, Flags] | None = None

    def attempts(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> Attempts:
        self.args = (stream, shape, starts)
        return self.inner.attempts(stream, shape, starts)


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the benchmark funnel's attempts kernel")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--spans", default="30,120")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/strata-bench-analyses"))
    args = parser.parse_args()
    files, persons, end, spec = benchmark_funnel(args.scale, args.data_dir)
    engine = ScanEngine()
    aliases = _aliases(persons)
    capture = _Capture(ORDER_STRATEGIES["ordered"])
    # The funnels module's strategy table is this same dict (imported, not copied).
    ORDER_STRATEGIES["ordered"] = capture
    try:
        for span in (int(s) for s in args.spans.split(",")):
            start = end - timedelta(days=span)
            con, keyed, _ = _scan(engine, files, start, end, aliases)
            scope = EventScope(start, end, person_keys=keyed, threads=1)
            run_funnel(con, spec, scope, _us(start), _us(end - timedelta(seconds=1)))
            con.close()
            assert capture.args is not None
            stream, shape, starts = capture.args
            chain, best_cpu = [], []
            for _ in range(args.runs):
                fresh = EventStream(stream.events)
                used = time.process_time()
                attempts = capture.inner.attempts(fresh, shape, starts)
                middle = time.process_time()
                best = best_attempts(fresh, shape, attempts)
                chain.append((time.process_time() - used) * 1000)
                best_cpu.append((time.process_time() - middle) * 1000)
                chain[-1] -= best_cpu[-1]
            digest = hashlib.sha256()
            for array in (best.first, best.reached, best.times):
                digest.update(np.ascontiguousarray(array).tobytes())
            print(
                f"{span}d: {stream.size} events, {attempts.first.size} attempts, "
                f"{best.first.size} persons; attempts CPU median "
                f"{statistics.median(chain):.1f} ms (min {min(chain):.1f}), best attempt "
                f"{statistics.median(best_cpu):.1f} ms; digest {digest.hexdigest()[:12]}"
            )
    finally:
        engine.close()
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
