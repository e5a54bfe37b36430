"""Benchmark: what the demo's backfill costs on this machine. `strata up --demo` on a fresh data
directory (embedded NATS and PostgreSQL, all services, no live traffic), then:

- backfill drain: seconds from the demo saying "backfill done" (every event accepted by
  ingest) until the last of them is stored (the sessionizer's and the aggregator's consumers
  have nothing pending and the stored count stops changing for 3 s), and the
  CPU seconds PostgreSQL and the services spent until then;
- write amplification: rollup and session-rollup rows per stored event, and PostgreSQL bytes
  (every table with its indexes and TOAST) per stored event, after a VACUUM;
- the data directory's size, with PostgreSQL's WAL and NATS's store apart, right after the
  drain and again after a CHECKPOINT (what an idle stack holds once its next checkpoint ran),
  the latter also as the disk holds it (`du`: WAL segments are sparse files), and the WAL
  PostgreSQL wrote;
- KPIs over the last year through the metrics API (daily series; and broken down by page),
  median of 10 warm requests, and which source answered;
- the same bytes per stored event and data directory once the indexes the backfill left loose
  are rebuilt (`strata tier compact`, what the next tiering pass does: docs/storage.md, "Index
  compaction"), and how long that took.

    python -m bench.demo_footprint [--days 130] [--visitors 100] [--root DIR] [--keep DIR]

`--root` runs another checkout's code (e.g. the main branch, for a before/after comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import psutil
from nats.js import JetStreamContext

from bench import report, stack_env
from libs.common.subjects import Subjects

ROOT = Path(__file__).resolve().parents[1]
QUIET_S = 3.0  # the stored count unchanged this long: the pipeline has drained
# Rows and bytes of every table of the public schema, partitions counted in their parent.
_TABLES = """
SELECT c.relname AS name, c.reltuples::bigint AS estimated_rows,
    pg_total_relation_size(c.oid)
    + coalesce((SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i
                WHERE i.inhparent = c.oid), 0)::bigint AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY bytes DESC
"""
# The same bytes apart: each table's heap (with its free-space and visibility maps), its TOAST
# (with the TOAST index), and each of its indexes, partitions summed into their parent.
_PARTS = """
SELECT coalesce(pg_partition_root(t.oid), t.oid)::regclass::text AS owner,
    CASE WHEN c.relkind = 'i' THEN coalesce(pg_partition_root(c.oid), c.oid)::regclass::text
         ELSE 'heap' END AS part,
    sum(CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid)
             ELSE pg_table_size(c.oid)
                  - coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) END)
        AS bytes,
    sum(coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)) AS toast
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index x ON x.indexrelid = c.oid
JOIN pg_class t ON t.oid = coalesce(x.indrelid, c.oid)
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')
GROUP BY 1, 2
"""


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its live descendants and the children it already reaped."""
    try:
        root = psutil.Process(pid)
        total = float(sum(root.cpu_times()[:4]))  # user, system, children_user, children_system
        for child in root.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        return 0.0
    return total


def _cpu_s(up_pid: int, pgdata: Path) -> dict[str, float]:
    """CPU seconds so far of PostgreSQL (postmaster and backends) and of the stack's services
    (`strata up` and its children: ingest, sessionizer, aggregator, tiering, query, NATS, the
    demo): a figure that a busy machine stretches less than wall time."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    return {
        "postgres": round(_tree_cpu_s(postmaster), 1),
        "services": round(_tree_cpu_s(up_pid), 1),
    }


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _disk_bytes(path: Path) -> int:
    """What the files take on disk (`du`): a WAL segment is created sparse and counts only its
    written blocks, where `_dir_bytes` counts its full 16 MB."""
    return sum(
        f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file() and not f.is_symlink()
    )


async def _stored(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM event_ids"))


async def _backlog(js: JetStreamContext) -> int:
    """Messages the sessionizer and the aggregator have not yet acknowledged."""
    subjects = Subjects()
    waiting = 0
    for stream in (subjects.raw_stream, subjects.enriched_stream):
        for consumer in await js.consumers_info(stream):
            pending, unacked = consumer.num_pending, consumer.num_ack_pending
            # nats-py types both optional; the server always sends them, and reading a
            # missing one as 0 would end the wait for a drained backlog early.
            if pending is None or unacked is None:
                raise RuntimeError(f"consumer info without pending counts: {consumer}")
            waiting += pending + unacked
    return waiting


async def _year_of_kpis(info: dict[str, Any]) -> dict[str, Any]:
    """Median ms of 10 warm metrics requests over the last 365 days, and the source."""
    today = datetime.now(UTC).date()
    base = {
        "project": info["project"],
        "from": (today - timedelta(days=364)).isoformat(),
        "to": today.isoformat(),
        "interval": "day",
    }
    headers = {"Authorization": f"Bearer {info['read_key']}"}
    figures: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        for label, extra in (("kpis_year_daily", {}), ("kpis_year_by_page", {"breakdown": "page"})):
            times, source = [], None
            for _ in range(11):
                started = time.perf_counter()
                async with http.get(
                    f"{info['query_url']}/api/v1/analytics/metrics",
                    params={**base, **extra},
                    headers=headers,
                ) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"metrics answered {resp.status}: {body}")
                times.append(time.perf_counter() - started)
                source = body["source"]
            figures[label] = {
                "warm_median_ms": round(1000 * statistics.median(times[1:]), 1),
                "source": source,
            }
    return figures


def _breakdown(
    parts: list[asyncpg.Record], tables: dict[str, int], events: int
) -> dict[str, dict[str, int]]:
    """Bytes per stored event of each table of at least 1 byte per event: its heap, TOAST and
    each index apart, largest table first."""
    rows: dict[str, dict[str, int]] = {}
    for r in parts:
        row = rows.setdefault(r["owner"], {})
        row[r["part"]] = round(int(r["bytes"]) / events)
        if r["toast"]:
            row["toast"] = round(int(r["toast"]) / events)
    ordered = sorted(rows.items(), key=lambda kv: -tables.get(kv[0], 0))
    return {
        table: dict(sorted(sizes.items(), key=lambda kv: -kv[1]))
        for table, sizes in ordered
        if sum(sizes.values()) >= 1
    }


async def _measure(info: dict[str, Any], data_dir: Path, up_pid: int) -> dict[str, Any]:
    conn = await asyncpg.connect(info["database_url"])
    nc = await nats.connect(info["nats_url"])
    js = nc.jetstream()
    try:
        state = data_dir / "stack.json"
        started = time.monotonic()
        while (
            not state.exists() or json.loads(state.read_text()).get("demo_backfilled_until") is None
        ):
            if time.monotonic() - started > 1800:
                raise RuntimeError("the demo backfill did not finish in 30 minutes")
            await asyncio.sleep(0.5)
        backfill_done = time.monotonic()
        backfill_s = backfill_done - started
        last, last_change = await _stored(conn), time.monotonic()
        # Drained: both consumers' backlogs empty and the stored count still (a large backfill
        # transaction on a busy machine can hold the count still for seconds on its own).
        while time.monotonic() - last_change < QUIET_S or await _backlog(js):
            await asyncio.sleep(0.25)
            now = await _stored(conn)
            if now != last:
                last, last_change = now, time.monotonic()
        drain_s = max(0.0, last_change - backfill_done)
        cpu = _cpu_s(up_pid, data_dir / "postgres" / "pgdata")
        wal_written = int(await conn.fetchval("SELECT wal_bytes FROM pg_stat_wal"))
        # Checkpoints the sessionizer wrote (each moves its partition's row once).
        checkpoints_written = int(
            await conn.fetchval(
                "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables"
                " WHERE relname = 'sessionizer_checkpoints'"
            )
        )
        await conn.execute("VACUUM ANALYZE")
        counts = {
            table: int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            for table in ("events", "rollups", "session_rollups", "sessions")
        }
        tables = {r["name"]: int(r["bytes"]) for r in await conn.fetch(_TABLES)}
        parts = await conn.fetch(_PARTS)
    finally:
        await conn.close()
        await nc.close()
    kpis = await _year_of_kpis(info)
    events = max(1, counts["events"])
    pgdata = data_dir / "postgres" / "pgdata"
    data_dir_bytes = _dir_bytes(data_dir)
    pg_wal_bytes = _dir_bytes(pgdata / "pg_wal")
    # What the disk holds once the next checkpoint has run (at most checkpoint_timeout later
    # on an idle stack): the WAL a checkpoint no longer needs is removed or kept for reuse.
    conn = await asyncpg.connect(info["database_url"])
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return {
        "stored_events": counts["events"],
        "backfill_send_seconds": round(backfill_s, 1),
        "backfill_drain_seconds_after_done": round(drain_s, 1),
        "cpu_seconds_until_drained": cpu,
        "rows": counts,
        "rollup_rows_per_stored_event": round(
            (counts["rollups"] + counts["session_rollups"]) / events, 2
        ),
        "pg_bytes_per_stored_event": round(sum(tables.values()) / events),
        "largest_tables_mb": {
            name: round(size / 2**20, 1) for name, size in list(tables.items())[:8]
        },
        "bytes_per_stored_event": _breakdown(parts, tables, events),
        "wal_written_mb": round(wal_written / 2**20, 1),
        "sessionizer_checkpoints_written": checkpoints_written,
        "data_dir_mb": round(data_dir_bytes / 2**20, 1),
        "pg_wal_mb": round(pg_wal_bytes / 2**20, 1),
        "data_dir_mb_after_checkpoint": round(_dir_bytes(data_dir) / 2**20, 1),
        "data_dir_disk_mb_after_checkpoint": round(_disk_bytes(data_dir) / 2**20, 1),
        "pg_wal_mb_after_checkpoint": round(_dir_bytes(pgdata / "pg_wal") / 2**20, 1),
        "pg_wal_disk_mb_after_checkpoint": round(_disk_bytes(pgdata / "pg_wal") / 2**20, 1),
        "nats_mb": round(_dir_bytes(data_dir / "nats") / 2**20, 1),
        **kpis,
    }


def _after_compaction(
    info: dict[str, Any], data_dir: Path, root: Path, env: dict[str, str]
) -> dict[str, Any] | None:
    """Rebuild the loose indexes as the next tiering pass would, with the checkout's own CLI
    (None when that checkout has no `strata tier compact`), and measure again."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "strata_cli", "tier", "compact"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"no index compaction: {done.stderr.strip()[-200:]}", file=sys.stderr)
        return None
    seconds = time.monotonic() - started

    async def measure() -> dict[str, Any]:
        conn = await asyncpg.connect(info["database_url"])
        try:
            events = max(1, int(await conn.fetchval("SELECT count(*) FROM events")))
            tables = {r["name"]: int(r["bytes"]) for r in await conn.fetch(_TABLES)}
            parts = await conn.fetch(_PARTS)
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()
        return {
            "seconds": round(seconds, 1),
            "cli_output": done.stdout.strip().splitlines()[-1:],
            "pg_bytes_per_stored_event": round(sum(tables.values()) / events),
            "bytes_per_stored_event": _breakdown(parts, tables, events),
            "data_dir_mb_after_checkpoint": round(_dir_bytes(data_dir) / 2**20, 1),
            "data_dir_disk_mb_after_checkpoint": round(_disk_bytes(data_dir) / 2**20, 1),
        }

    return asyncio.run(measure())


def run_benchmark(
    days: int = 130, visitors: int = 100, root: Path = ROOT, keep: Path | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="strata-bench-demo-") as scratch:
        tmp = str(keep) if keep is not None else scratch
        data_dir = Path(tmp)
        env = stack_env(
            tmp,
            log_level="warning",
            demo_days=str(days),
            demo_visitors=str(visitors),
            demo_live="false",
        )
        up = subprocess.Popen(
            [sys.executable, "-m", "strata_cli", "up", "--demo"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            dev_json = data_dir / "dev.json"
            deadline = time.monotonic() + 240
            while not dev_json.exists():
                if up.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("strata up did not become ready")
                time.sleep(0.5)
            info = json.loads(dev_json.read_text())
            figures = asyncio.run(_measure(info, data_dir, up.pid))
            figures["after_compaction"] = _after_compaction(info, data_dir, root, env)
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
    return {"days": days, "visitors_per_day": visitors, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=130)
    parser.add_argument("--visitors", type=int, default=100)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose code runs")
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--keep", type=Path, help="an empty directory to run in and keep, for inspection"
    )
    args = parser.parse_args()
    keep = args.keep.resolve() if args.keep else None
    figures = run_benchmark(args.days, args.visitors, args.root.resolve(), keep)
    report(figures, args.output)


if __name__ == "__main__":
    main()
