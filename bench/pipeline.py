"""Benchmark: the whole pipeline on this machine — `strata up` (embedded NATS and PostgreSQL,
all five services) plus the load generator, everything sharing the same cores.

1. Saturation: once the stack is idle after its start (the query service's warm-up done), the
   loader offers as much as ingest accepts for `--seconds`; the figure is the rate at which
   events become stored (the slowest stage's rate), and the backlog (accepted - stored) at the
   start and end of the steady window.
2. Half load: the loader offers half the stored rate for `--seconds`, while marker events (one
   new event name each) are sent every 0.25 s; freshness is the time from the ingest's 2xx to
   the marker being counted by the metrics API (polled every 20 ms): p50 and p95.
3. Peak RSS of every service, NATS and PostgreSQL over both phases.
4. The drain: how fast the backlog left at the end of the saturation phase is stored once the
   loader stops (ingest idle), i.e. the downstream's rate with both cores to itself.
5. The raw ceiling, measured first in the same run (bench.raw_ceiling: the same requests
   through aiohttp, JetStream and COPY, without Strata's work), and the ratio of the
   pipeline's stored events/s to it.

    python -m bench.pipeline [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench import raw_ceiling, report, stack_env
from bench.ingest_gateway import batch_template

ROOT = Path(__file__).resolve().parents[1]
BATCH = 100


class RssSampler:
    """Peak resident memory and CPU time per stack component (services by module name, nats,
    postgres)."""

    def __init__(self, root_pid: int, data_dir: Path | None = None) -> None:
        self.root = psutil.Process(root_pid)
        # The embedded PostgreSQL daemonizes (pg_ctl): not a child of `strata up`, found by the
        # pid file under its data directory once started.
        self.postmaster_pid_file = (
            None if data_dir is None else data_dir / "postgres" / "pgdata" / "postmaster.pid"
        )
        self.postmaster: psutil.Process | None = None
        self.peak: dict[str, int] = {}
        # CPU seconds (user + system) last seen per process, and its component.
        self.cpu: dict[int, tuple[str, float]] = {}

    def _name(self, proc: psutil.Process) -> str | None:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            return None
        for service in ("ingest", "sessionizer", "aggregator", "tiering", "query"):
            if f"services.{service}" in cmd:
                return service
        if "nats-server" in cmd:
            return "nats"
        if "postgres" in cmd:
            return "postgres"
        return None

    def _processes(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = self.root.children(recursive=True)
        if self.postmaster is None and self.postmaster_pid_file is not None:
            try:
                self.postmaster = psutil.Process(
                    int(self.postmaster_pid_file.read_text().split()[0])
                )
            except (OSError, ValueError, IndexError, psutil.Error):
                self.postmaster = None
        if self.postmaster is not None:
            try:
                procs += [self.postmaster, *self.postmaster.children(recursive=True)]
            except psutil.Error:
                pass
        return procs

    def sample(self) -> None:
        totals: dict[str, int] = {}
        for proc in self._processes():
            name = self._name(proc)
            if name is None:
                continue
            try:
                totals[name] = totals.get(name, 0) + proc.memory_info().rss
                times = proc.cpu_times()
            except psutil.Error:
                continue
            self.cpu[proc.pid] = (name, times.user + times.system)
        for name, rss in totals.items():
            self.peak[name] = max(self.peak.get(name, 0), rss)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per component so far (a process's last sample; ended ones included)."""
        totals: dict[str, float] = {}
        for name, seconds in self.cpu.values():
            totals[name] = totals.get(name, 0.0) + seconds
        return totals


async def stored_events(conn: asyncpg.Connection, project: str) -> int:
    # Daily rollups of every event name hold the stored count cheaply (no scan of events).
    value = await conn.fetchval(
        "SELECT coalesce(sum(events), 0) FROM rollups WHERE project_id = $1 AND granularity = 'd'"
        " AND name = '*' AND dim = '' AND NOT bot",
        project,
    )
    return int(value)


async def offer_load(
    http: aiohttp.ClientSession,
    url: str,
    auth: str,
    seconds: float,
    rate: float | None,
    connections: int,
) -> tuple[int, int]:
    """Send 100-event batches for `seconds`: as fast as accepted (rate None) or paced."""
    template = batch_template(BATCH, seed=int(time.time()) % 1000, people=20)
    today = datetime.now(UTC).replace(microsecond=0)
    # Events of the last hour, so they land in today's partition like live traffic.
    template = template.replace(
        b"2026-01-15T10:00:00.000Z", (today - timedelta(minutes=5)).isoformat().encode()
    ).replace(b"2026-01-15T10:00:01.000Z", today.isoformat().encode())
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    prefix = uuid.uuid4().hex[:8]
    accepted = failed = 0
    counter = 0
    start = time.monotonic()
    deadline = start + seconds
    interval = (BATCH / rate) * connections if rate else 0.0

    async def worker(n: int) -> None:
        nonlocal accepted, failed, counter
        next_at = start + (interval * n / connections if interval else 0.0)
        while time.monotonic() < deadline:
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            counter += 1
            body = template.replace(b"@@", f"{prefix}-{counter}".encode())
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    accepted += BATCH
                else:
                    failed += 1

    await asyncio.gather(*(worker(n) for n in range(connections)))
    return accepted, failed


async def measure_freshness(
    http: aiohttp.ClientSession,
    ingest_url: str,
    query_url: str,
    write_auth: str,
    read_key: str,
    seconds: float,
) -> list[float]:
    """Seconds from a marker's 2xx to its count in the metrics API, for one marker per 0.25 s."""
    delays: list[float] = []
    day = datetime.now(UTC).date()
    params_base = {
        "from": (day - timedelta(days=1)).isoformat(),
        "to": (day + timedelta(days=1)).isoformat(),
    }

    async def one(n: int) -> None:
        name = f"bench_marker_{uuid.uuid4().hex[:10]}_{n}"
        body = {"userId": f"marker-{n}", "event": name, "timestamp": datetime.now(UTC).isoformat()}
        async with http.post(
            f"{ingest_url}/v1/track", json=body, headers={"Authorization": write_auth}
        ) as resp:
            await resp.read()
            if resp.status != 200:
                return
        acked = time.monotonic()
        params = dict(params_base, metrics=f"event:{name}")
        while time.monotonic() - acked < 60:
            async with http.get(
                f"{query_url}/api/v1/analytics/metrics",
                params=params,
                headers={"Authorization": f"Bearer {read_key}"},
            ) as resp:
                body2 = await resp.json()
            if resp.status == 200 and body2["totals"].get(f"event:{name}", 0) >= 1:
                delays.append(time.monotonic() - acked)
                return
            await asyncio.sleep(0.02)

    tasks = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        tasks.append(asyncio.create_task(one(n)))
        n += 1
        await asyncio.sleep(0.25)
    await asyncio.gather(*tasks)
    return delays


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


async def wait_until_idle(
    sampler: RssSampler, *, quiet_cpu_s: float = 0.1, period_s: float = 1.0, limit_s: float = 60.0
) -> float:
    """Seconds until the stack spent under `quiet_cpu_s` of CPU over `period_s`, twice in a row
    (at most `limit_s`). Measured from the stack's readiness, the query service still warms its
    caches (the funnel kernel, SciPy, the hot rows): a load started then shares the cores with
    that one-time work, and the saturation figure would count it."""
    started = time.monotonic()
    await asyncio.to_thread(sampler.sample)
    before = sum(sampler.cpu_seconds().values())
    quiet = 0
    while quiet < 2 and time.monotonic() - started < limit_s:
        await asyncio.sleep(period_s)
        await asyncio.to_thread(sampler.sample)
        now = sum(sampler.cpu_seconds().values())
        quiet = quiet + 1 if now - before < quiet_cpu_s else 0
        before = now
    return time.monotonic() - started


async def run_phases(info: dict[str, str], sampler: RssSampler, seconds: float) -> dict[str, Any]:
    auth = "Basic " + base64.b64encode(f"{info['write_key']}:".encode()).decode()
    conn = await asyncpg.connect(info["database_url"])
    await conn.execute("UPDATE projects SET rate_limit_per_s = 1e9")
    project = info["project"]
    figures: dict[str, Any] = {}

    async def sample_forever() -> None:
        while True:
            await asyncio.to_thread(sampler.sample)
            await asyncio.sleep(0.5)

    sampling = asyncio.create_task(sample_forever())
    connector = aiohttp.TCPConnector(limit=64)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            url = f"{info['ingest_url']}/v1/batch"
            idle_after_s = await wait_until_idle(sampler)
            # Phase 1: saturation.
            before = await stored_events(conn, project)
            await asyncio.to_thread(sampler.sample)
            cpu_before = sampler.cpu_seconds()
            cpu_before["loader"] = time.process_time()
            t0 = time.monotonic()
            load = asyncio.create_task(offer_load(http, url, auth, seconds, None, 32))
            marks: list[tuple[float, int]] = []
            while not load.done():
                await asyncio.sleep(1.0)
                marks.append((time.monotonic() - t0, await stored_events(conn, project) - before))
            accepted, failed = load.result()
            # Steady window: the second half of the run (start-up effects excluded).
            half = [m for m in marks if m[0] >= seconds / 2]
            if len(half) >= 2:
                stored_rate = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0])
            else:
                stored_rate = marks[-1][1] / marks[-1][0]
            accepted_rate = accepted / seconds
            backlog_mid = accepted_rate * half[0][0] - half[0][1] if half else 0.0
            backlog_end = accepted - marks[-1][1]
            # The drain: the backlog stored once ingest and the loader are idle, i.e. what the
            # sessionizer, the aggregator, NATS and PostgreSQL reach with both cores to
            # themselves (as behind an ingest on other machines).
            drain_start = time.monotonic()
            left_at_end = accepted - (await stored_events(conn, project) - before)
            while await stored_events(conn, project) - before < accepted:
                if time.monotonic() - drain_start > 600:
                    break
                await asyncio.sleep(0.1)
            drained_at = time.monotonic()
            await asyncio.to_thread(sampler.sample)
            cpu_after = sampler.cpu_seconds()
            cpu_after["loader"] = time.process_time()
            stored_total = max(1, await stored_events(conn, project) - before)
            figures["pipeline_saturation"] = {
                "offered_accepted_events_per_s": round(accepted_rate),
                "stored_events_per_s": round(stored_rate),
                "failed_requests": failed,
                "backlog_events_mid_run": round(backlog_mid),
                "backlog_events_end_of_load": round(backlog_end),
                "drain_seconds_after_load": round(time.monotonic() - drain_start, 1),
                "drain_events_per_s": round(left_at_end / max(0.1, drained_at - drain_start))
                if left_at_end > 0
                else None,
                "stack_idle_seconds_before_load": round(idle_after_s, 1),
                # CPU of each component over the load and its drain, per stored event: where
                # the two cores go (the loader is this process: load generator and sampler).
                "cpu_us_per_stored_event": {
                    name: round(
                        1e6 * (cpu_after[name] - cpu_before.get(name, 0.0)) / stored_total, 1
                    )
                    for name in sorted(cpu_after)
                },
            }
            print(json.dumps(figures["pipeline_saturation"]), flush=True)

            # Phase 2: half the stored rate, with freshness markers.
            half_rate = max(stored_rate / 2, BATCH)
            before2 = await stored_events(conn, project)
            load2 = asyncio.create_task(offer_load(http, url, auth, seconds, half_rate, 8))
            delays = await measure_freshness(
                http, info["ingest_url"], info["query_url"], auth, info["read_key"], seconds - 2
            )
            accepted2, failed2 = await load2
            lag_end = accepted2 + len(delays) - (await stored_events(conn, project) - before2)
            figures["pipeline_half_load"] = {
                "offered_events_per_s": round(half_rate),
                "accepted_events_per_s": round(accepted2 / seconds),
                "failed_requests": failed2,
                "backlog_events_at_end": max(0, round(lag_end)),
                "freshness_samples": len(delays),
                "freshness_p50_s": round(percentile(delays, 50), 3),
                "freshness_p95_s": round(percentile(delays, 95), 3),
            }
            print(json.dumps(figures["pipeline_half_load"]), flush=True)
    finally:
        sampling.cancel()
        await conn.close()
    figures["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in sorted(sampler.peak.items())}
    return figures


def run_benchmark(seconds: float = 30.0) -> dict[str, Any]:
    raw = raw_ceiling.run_benchmark(seconds)
    print(json.dumps({"raw_ceiling": raw}), flush=True)
    figures = _run_pipeline(seconds)
    figures["raw_ceiling"] = raw
    figures["stored_to_raw_ceiling_ratio"] = round(
        figures["pipeline_saturation"]["stored_events_per_s"] / raw["stored_events_per_s"], 3
    )
    return figures


def _run_pipeline(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="strata-bench-pipeline-") as tmp:
        env = stack_env(tmp, log_level="warning")
        up = subprocess.Popen(
            [sys.executable, "-m", "strata_cli", "up"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            dev_json = Path(tmp) / "dev.json"
            deadline = time.monotonic() + 240
            while not dev_json.exists():
                if up.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("strata up did not become ready")
                time.sleep(0.5)
            info = json.loads(dev_json.read_text())
            return asyncio.run(run_phases(info, RssSampler(up.pid, Path(tmp)), seconds))
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    figures = run_benchmark(args.seconds)
    report(figures, args.output)


if __name__ == "__main__":
    main()
