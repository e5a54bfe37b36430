"""Benchmark: CPU per event of the aggregator writer's Python, stage by stage, without
PostgreSQL: the event tallies (rollup keys, counts and person sets), their sketches, the
session rows, persons and aliases, and the COPY records of `events` (building them; asyncpg's
binary encoding of them is in `--only aggregator`), on the writer benchmark's live traffic
(bench/aggregator_writer.py) with few and with many visitors.

    python -m bench.aggregator_stages [--events 20000] [--batch-size 4000] [--rounds 5]
                                      [--visitors 20,20000] [--callgrind-stage tallies]
                                      [--output figures.json]

Times are this process's CPU time per event (median of `--rounds`). `--callgrind-stage NAME`
runs that one stage once per batch and nothing else, for
`valgrind --tool=callgrind --toggle-collect=*run_stage* python -m bench.aggregator_stages ...`:
instruction counts, which other load on the machine does not move.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.aggregator_writer import live_traffic
from libs.common.rollup_rules import event_rollup_input, event_rollup_tallies
from libs.common.schemas.events_v1 import EventV1
from services.aggregator import writer
from services.aggregator.writer import alias_links, person_id_of, person_rows, session_batch_rows

# (project, distinct id or person id) -> its number, as the writer's person keys.
PersonKeys = dict[tuple[str, str], int]


def _keys(events: Sequence[EventV1]) -> PersonKeys:
    keys: PersonKeys = {}
    for ev in events:
        for person in (ev.distinct_id, person_id_of(ev)):
            keys.setdefault((ev.project_id, person), len(keys))
    return keys


def _tallies(batch: Sequence[EventV1], keys: PersonKeys) -> object:
    return event_rollup_tallies(event_rollup_input(ev) for ev in batch)


def _sketches(batch: Sequence[EventV1], keys: PersonKeys) -> object:
    return writer._batch_sketches(
        event_rollup_tallies(event_rollup_input(ev) for ev in batch).values()
    )


def _sessions(batch: Sequence[EventV1], keys: PersonKeys) -> object:
    return writer._json.encode(session_batch_rows(batch))


def _persons(batch: Sequence[EventV1], keys: PersonKeys) -> object:
    return alias_links(batch), person_rows(batch)


def _copy_records(batch: Sequence[EventV1], keys: PersonKeys) -> object:
    # Pages', clients' and sources' keys: one look-up each per event, as in the writer (which
    # computes each event's source entry once, with the keys).
    sources: dict[Any, int] = {}
    by_event = {id(ev): sources.get(writer._source_of(ev)) for ev in batch}
    return list(writer._event_records(batch, writer._Keys(keys, {}, {}, sources, by_event)))


Stage = Callable[[Sequence[EventV1], PersonKeys], object]

# name -> (stage, what it includes); "sketches" includes the tallies it needs (subtract them).
STAGES: dict[str, Stage] = {
    "tallies": _tallies,
    "tallies_and_sketches": _sketches,
    "sessions": _sessions,
    "persons_and_aliases": _persons,
    "copy_records": _copy_records,
}


def run_stage(stage: Stage, batches: Iterable[Sequence[EventV1]], keys: PersonKeys) -> None:
    for batch in batches:
        stage(batch, keys)


def _measure(batches: list[list[EventV1]], keys: PersonKeys, rounds: int) -> dict[str, float]:
    events = sum(len(b) for b in batches)
    figures: dict[str, float] = {}
    for name, stage in STAGES.items():
        times = []
        for _ in range(rounds):
            began = time.process_time()
            run_stage(stage, batches, keys)
            times.append(time.process_time() - began)
        figures[f"{name}_us_per_event"] = round(1e6 * statistics.median(times) / events, 2)
    figures["sketches_us_per_event"] = round(
        figures["tallies_and_sketches_us_per_event"] - figures["tallies_us_per_event"], 2
    )
    figures["python_us_per_event"] = round(
        figures["tallies_and_sketches_us_per_event"]
        + figures["sessions_us_per_event"]
        + figures["persons_and_aliases_us_per_event"]
        + figures["copy_records_us_per_event"],
        2,
    )
    return figures


def run_benchmark(
    events: int = 20_000,
    batch_size: int = 4000,
    rounds: int = 5,
    visitors: Sequence[int] = (20, 20_000),
) -> dict[str, Any]:
    """Per-stage CPU microseconds per event, per visitor count."""
    results: dict[str, Any] = {"events": events, "batch_size": batch_size, "rounds": rounds}
    for count in visitors:
        batches = live_traffic(events, batch_size, count)
        keys = _keys([ev for b in batches for ev in b])
        gc.collect()
        gc.freeze()  # as the aggregator's settled startup heap
        try:
            results[f"visitors_{count}"] = _measure(batches, keys, rounds)
        finally:
            gc.unfreeze()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--visitors", default="20,20000")
    parser.add_argument("--callgrind-stage", choices=sorted(STAGES))
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    visitors = [int(v) for v in args.visitors.split(",")]
    if args.callgrind_stage:
        for count in visitors:
            batches = live_traffic(args.events, args.batch_size, count)
            keys = _keys([ev for b in batches for ev in b])
            run_stage(STAGES[args.callgrind_stage], batches, keys)
        return
    report(run_benchmark(args.events, args.batch_size, args.rounds, visitors), args.output)


if __name__ == "__main__":
    main()
