"""Benchmark: CPU per event of ingest's event path in ONE process, without HTTP or NATS: the
microseconds each stage (services/ingest/stages) spends per event, and the whole path's
events/s (batch body decode, every stage, the partition split and JSON encoding of the
published messages), over realistic 100-event browser batches (bench/ingest_gateway.py's).

    python -m bench.ingest_stages [--batches 200] [--rounds 5] [--people-per-batch 1]

Times are this process's CPU time (best of `--rounds`), so other load on the machine moves them
less than it moves wall time. The end-to-end figure (HTTP, JetStream acks) of one ingest
process is `--only ingest` (bench/ingest_gateway.py).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from bench.ingest_gateway import batch_template
from libs.common.privacy_policy import PrivacyPolicy
from libs.common.storable_text import may_hold_nul
from services.ingest.collection import CollectionRules
from services.ingest.privacy import ProjectPrivacy
from services.ingest.publishing import encode_events, split_by_partition
from services.ingest.segment_payloads import SegmentContext, segment_batch_decoder
from services.ingest.stages.build import build
from services.ingest.stages.decode import decode
from services.ingest.stages.draft import RequestInfo
from services.ingest.stages.enrich import enrich
from services.ingest.stages.event_time import normalise_time
from services.ingest.stages.path import STAGES, item_event
from services.ingest.stages.policy import apply_policy
from services.ingest.stages.validate import validate
from services.ingest.validation import EventLimits

PARTITIONS = 64
LIMITS = EventLimits()


def _bodies(batches: int, people: int) -> list[bytes]:
    # Distinct message ids per body, as the load generator sends.
    return [
        batch_template(100, seed % 50, people).replace(b"@@", f"{seed}".encode())
        for seed in range(batches)
    ]


def _request(body_sent_at: datetime | None, context: SegmentContext | None) -> RequestInfo:
    return RequestInfo(
        project_id="bench",
        received_at=datetime.now(UTC),
        limits=LIMITS,
        sent_at=body_sent_at,
        context=context,
        client_ip="203.0.113.9",
        collection=CollectionRules(ProjectPrivacy(PrivacyPolicy(ip_policy="truncate"))),
    )


def _stage_times(bodies: list[bytes], rounds: int) -> dict[str, float]:
    """µs per event of each stage, each run over every item before the next (best round)."""
    batches = [segment_batch_decoder.decode(body) for body in bodies]
    work = [
        (batch, _request(batch.sentAt, batch.context), may_hold_nul(body))
        for body, batch in zip(bodies, batches, strict=True)
    ]
    events = sum(len(batch.batch or []) for batch in batches)
    best: dict[str, float] = {}
    for _ in range(rounds):
        spent = dict.fromkeys((name for name, _ in STAGES), 0.0)
        spent["publish_encode"] = 0.0
        for batch, request, nul_possible in work:
            items = batch.batch or []
            t0 = time.process_time()
            # As the app: the body's one NUL pre-check decides whether items are scanned.
            messages = [decode(raw, False, LIMITS, nul_possible) for raw in items]
            t1 = time.process_time()
            drafts = [validate(message, None, request) for message in messages]
            t2 = time.process_time()
            for draft in drafts:
                normalise_time(draft, request)
            t3 = time.process_time()
            for draft in drafts:
                enrich(draft, request)
            t4 = time.process_time()
            for draft in drafts:
                apply_policy(draft, request)
            t5 = time.process_time()
            built = [build(draft) for draft in drafts]
            t6 = time.process_time()
            for group in split_by_partition(built, PARTITIONS).values():
                encode_events(group)
            t7 = time.process_time()
            for name, seconds in zip(
                (*spent,),
                (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6),
                strict=True,
            ):
                spent[name] += seconds
        for name, seconds in spent.items():
            per_event = seconds / events * 1e6
            best[name] = min(best.get(name, per_event), per_event)
    return {name: round(value, 3) for name, value in best.items()}


def _whole_path(bodies: list[bytes], rounds: int) -> float:
    """Events/s of the whole path as the app runs it for a /v1/batch request (best round)."""
    best = 0.0
    for _ in range(rounds):
        events = 0
        started = time.process_time()
        for body in bodies:
            batch = segment_batch_decoder.decode(body)
            request = _request(batch.sentAt, batch.context)
            nul_possible = may_hold_nul(body)
            built = [item_event(raw, None, request, nul_possible) for raw in batch.batch or []]
            for group in split_by_partition(built, PARTITIONS).values():
                encode_events(group)
            events += len(built)
        best = max(best, events / (time.process_time() - started))
    return round(best)


def run_benchmark(batches: int = 200, rounds: int = 5, people_per_batch: int = 1) -> dict[str, Any]:
    bodies = _bodies(batches, people_per_batch)
    _whole_path(bodies, 1)  # warm the caches first
    stages = _stage_times(bodies, rounds)
    whole = _whole_path(bodies, rounds)
    result = {
        "events": batches * 100,
        "stage_us_per_event": stages,
        "stages_total_us_per_event": round(sum(stages.values()), 3),
        "path_events_per_s": whole,
    }
    for name, value in stages.items():
        print(f"  {name:15} {value:7.3f} µs/event", flush=True)
    print(f"  whole path: {whole:,} events/s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--people-per-batch", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run_benchmark(args.batches, args.rounds, args.people_per_batch), indent=2))


if __name__ == "__main__":
    main()
