"""Benchmark: the sessionizer's per-message steps alone, without NATS or PostgreSQL: decode a
raw message, sessionize it, build its enriched batches and session updates. Deterministic, for
callgrind: the slope between two `--messages` counts is the instructions per event with
start-up cancelled out, e.g.

    valgrind --tool=callgrind python -m bench.sessionizer_steps --messages 40
    valgrind --tool=callgrind python -m bench.sessionizer_steps --messages 160

`--internal-share 0.8` leaves 4 events in 5 without acquisition fields (internal navigation:
their session's source is stamped onto them). Prints the CPU time per event of each step
and a digest of every message built, which must not change when only speed should.

    python -m bench.sessionizer_steps [--messages 2000] [--internal-share 0.0]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import Any

import msgspec

from bench.raw_stream import EVENTS_PER_MESSAGE, raw_message
from libs.common.schemas.events_v1 import raw_batch_decoder, raw_batch_encoder
from libs.common.subjects import Subjects
from services.sessionizer.enriched_messages import build_messages
from services.sessionizer.partition_worker import decode_raw_events
from services.sessionizer.session_window import DEFAULT_RULES, PartitionSessions, sessionize_batch


def _internal_navigation(data: bytes, share: float) -> bytes:
    batch = raw_batch_decoder.decode(data)
    every = round(1 / (1 - share)) if share < 1 else 0
    events = [
        event
        if every and index % every == 0
        else msgspec.structs.replace(
            event, referrer="https://shop.example.com/", referrer_domain=None, channel=None
        )
        for index, event in enumerate(batch.events)
    ]
    return raw_batch_encoder.encode(msgspec.structs.replace(batch, events=events))


def run_benchmark(messages: int = 2000, internal_share: float = 0.0) -> dict[str, Any]:
    payloads = [raw_message(i) for i in range(200)]
    if internal_share:
        payloads = [_internal_navigation(p, internal_share) for p in payloads]
    subjects = Subjects("bench")
    state = PartitionSessions()
    changed: set[tuple[str, str]] = set()
    digest = hashlib.sha256()
    spent = {"decode": 0.0, "sessionize": 0.0, "build": 0.0}
    for seq in range(1, messages + 1):
        data = payloads[seq % len(payloads)]
        started = time.process_time()
        batch, _ = decode_raw_events(data)
        decoded = time.process_time()
        sessionized = sessionize_batch(state, batch.events, seq, lambda _: DEFAULT_RULES, changed)
        sessionized_at = time.process_time()
        built = build_messages(subjects, seq, sessionized, 1024 * 1024)
        done = time.process_time()
        spent["decode"] += decoded - started
        spent["sessionize"] += sessionized_at - decoded
        spent["build"] += done - sessionized_at
        if seq % 200 == 0:
            changed = set()  # as a checkpoint would
        for message in built:
            digest.update(message.subject.encode() + message.msg_id.encode() + message.payload)
    events = messages * EVENTS_PER_MESSAGE
    result: dict[str, Any] = {
        f"{step}_cpu_us_per_event": round(seconds / events * 1e6, 2)
        for step, seconds in spent.items()
    }
    result["digest"] = digest.hexdigest()[:16]
    print(f"  sessionizer steps: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--internal-share", type=float, default=0.0)
    args = parser.parse_args()
    run_benchmark(args.messages, args.internal_share)


if __name__ == "__main__":
    main()
