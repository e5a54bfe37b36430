"""Benchmark: what the sessionizer's checkpoints write on the demo's traffic, incremental (the
persons changed since the last checkpoint, the default) against the whole state rewritten at
every checkpoint (what the release before migration 0028 did).

The demo's backfill (`strata_dev.demo`, 130 days of 100 visitors a day by default) is turned
into events carrying what sessionizing reads (person, time, page, referrer, UTM tags; not
ingest's whole enrichment), split into 8 person partitions as ingest does, one raw message per
demo batch and partition, received over 45 s as the demo sends them (so nobody is pruned), and
sessionized with a checkpoint every `--messages-per-checkpoint` raw messages of a partition
(115: about the 180 checkpoints `bench.demo_footprint` counts on the demo).
An embedded PostgreSQL written by nothing else holds the checkpoints, so pg_current_wal_lsn
differences are their WAL. CPU is this process's (sessionizing and checkpointing).

    python -m bench.sessionizer_checkpoints [--mode incremental|whole] [--days 130]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from libs.common.db import migrate
from libs.common.schemas.events_v1 import EventV1
from libs.common.subjects import partition_of
from services.sessionizer import checkpoints
from services.sessionizer.checkpoints import PartitionCheckpoints
from services.sessionizer.session_window import (
    DEFAULT_RULES,
    PartitionSessions,
    sessionize_batch,
)
from strata_dev.demo import DemoPlan, iter_backfill
from strata_dev.embedded import EmbeddedPostgres

PARTITIONS = 8
SEND_S = 45.0


def _event(project: str, message: dict[str, Any], received: datetime) -> EventV1:
    context = message.get("context") or {}
    page = context.get("page") or {}
    campaign = context.get("campaign") or {}
    referrer = page.get("referrer") or None
    ts = datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))
    is_page = message["type"] == "page"
    return EventV1(
        event_id=message["messageId"],
        project_id=project,
        type=message["type"],
        name="$pageview" if is_page else str(message.get("event") or message["type"]),
        ts=min(ts, received),
        received_at=received,
        distinct_id=message.get("userId") or message["anonymousId"],
        user_id=message.get("userId"),
        url=page.get("url"),
        path=page.get("path"),
        referrer=referrer,
        referrer_domain=urlsplit(referrer).hostname if referrer else None,
        channel="referral" if referrer else None,
        utm_source=campaign.get("source"),
        utm_medium=campaign.get("medium"),
        utm_campaign=campaign.get("name"),
        browser="Chrome",
        device_type="desktop",
    )


def raw_messages(days: int, visitors: int) -> list[list[list[EventV1]]]:
    """Per partition, its raw messages in order (each a list of events)."""
    plan = DemoPlan(days=days, visitors_per_day=visitors, end=datetime(2026, 6, 1, tzinfo=UTC))
    batches = list(iter_backfill(plan))
    total = sum(len(b.messages) for b in batches)
    start = plan.end_time()
    out: list[list[list[EventV1]]] = [[] for _ in range(PARTITIONS)]
    sent = 0
    for batch in batches:
        groups: dict[int, list[EventV1]] = {}
        for message in batch.messages:
            received = start + timedelta(seconds=SEND_S * sent / total)
            sent += 1
            event = _event(batch.project, message, received)
            groups.setdefault(partition_of(event.distinct_id, PARTITIONS), []).append(event)
        for partition, events in groups.items():
            out[partition].append(events)
    return out


async def _run(
    pg_url: str, mode: str, per_checkpoint: int, days: int, visitors: int
) -> dict[str, Any]:
    partitions = raw_messages(days, visitors)
    events = sum(len(m) for p in partitions for m in p)
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
    if mode == "whole":
        checkpoints.MAX_CHANGES = 0  # every checkpoint rewrites the whole state
    wal = cpu_sessionize = cpu_save = 0.0
    saves = written = 0
    for partition, messages in enumerate(partitions):
        writer = PartitionCheckpoints(pool, "bench-raw", partition)
        state = PartitionSessions()
        changed: set[tuple[str, str]] | None = set() if mode == "incremental" else None
        for seq, batch in enumerate(messages, start=1):
            began = time.process_time()
            sessionize_batch(state, batch, seq, lambda _: DEFAULT_RULES, changed)
            cpu_sessionize += time.process_time() - began
            if seq % per_checkpoint == 0 or seq == len(messages):
                lsn = await pool.fetchval("SELECT pg_current_wal_lsn()")
                began = time.process_time()
                written += await writer.save(seq, state, changed or ())
                cpu_save += time.process_time() - began
                wal += int(await pool.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn))
                saves += 1
                if changed is not None:
                    changed = set()
    await pool.execute("VACUUM")
    table_bytes = await pool.fetchval(
        "SELECT pg_total_relation_size('sessionizer_checkpoints')"
        " + pg_total_relation_size('sessionizer_checkpoint_changes')"
    )
    await pool.close()
    return {
        "mode": mode,
        "events": events,
        "checkpoints": saves,
        "state_bytes_written_per_checkpoint": round(written / saves),
        "wal_bytes_per_checkpoint": round(float(wal) / saves),
        "wal_bytes_per_event": round(float(wal) / events, 1),
        "table_bytes_per_event_after_vacuum": round(table_bytes / events, 1),
        "cpu_us_per_event_sessionize": round(cpu_sessionize / events * 1e6, 2),
        "cpu_us_per_event_checkpoint": round(cpu_save / events * 1e6, 2),
    }


def run_benchmark(
    mode: str = "incremental", per_checkpoint: int = 115, days: int = 130, visitors: int = 100
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pg").start()
        try:
            max_changes = checkpoints.MAX_CHANGES
            try:
                result = asyncio.run(_run(postgres.url, mode, per_checkpoint, days, visitors))
            finally:
                checkpoints.MAX_CHANGES = max_changes
            print(f"  sessionizer checkpoints: {result}", flush=True)
            return result
        finally:
            postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["incremental", "whole"], default="incremental")
    parser.add_argument("--messages-per-checkpoint", type=int, default=115)
    parser.add_argument("--days", type=int, default=130)
    parser.add_argument("--visitors", type=int, default=100)
    args = parser.parse_args()
    run_benchmark(args.mode, args.messages_per_checkpoint, args.days, args.visitors)


if __name__ == "__main__":
    main()
