"""Benchmark: accepted events/s of ONE ingest process (`python -m services.ingest`) with
100-event `/v1/batch` requests of realistic browser events, against a real NATS JetStream
(every request answered only after JetStream acked) and PostgreSQL (key lookups).

    python -m bench.ingest_gateway [--seconds 20] [--connections 64] [--loaders 1]
        [--people-per-batch 0] [--linger-s 0.002]

Traffic shapes (`--people-per-batch`, see `batch_template`): 1 is browser-like, a batch of
one visitor with one user agent, as a browser's tracker sends it; 0 (the default) is the worst
case, every event a different person with its own user agent, as a server SDK forwarding
many people's events sends it. `just bench --only ingest` runs both.

Uses NATS_URL / DATABASE_URL when set, else starts embedded servers in a temporary directory.
Load generators run in their own processes; on a 2-core machine they compete with ingest and
NATS for CPU, so the figure is a floor for what a dedicated ingest core does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench import report

ROOT = Path(__file__).resolve().parents[1]

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.{v} Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/{v}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
]
REFERRERS = [
    "https://www.google.com/",
    "https://t.co/abc",
    "https://news.ycombinator.com/",
    "",
    "https://www.bing.com/search?q=analytics",
]
PATHS = ["/", "/pricing", "/docs", "/docs/install", "/blog/launch", "/signup", "/features"]


def _user_agent(rng: random.Random) -> str:
    return rng.choice(USER_AGENTS).format(v=rng.randrange(100, 130))


def batch_template(batch_size: int, seed: int, people: int = 0) -> bytes:
    """A /v1/batch body whose messageIds contain the placeholder @@ (replaced per request so
    every request carries new events, as real traffic does).

    `people` > 0 draws the events from that many visitors, each with one user agent for all
    its events, as a browser sends them (`people=1`, a browser's batch, is the browser-like
    shape). 0 gives every event its own visitor and its own user agent (a server SDK
    forwarding many people's events, the worst case: every request touches every person
    partition and every event's user agent differs from the previous one's)."""
    rng = random.Random(seed)
    events = []
    visitors = [(f"anon-{rng.randrange(50_000)}", _user_agent(rng)) for _ in range(people)]
    for i in range(batch_size):
        visitor, user_agent = (
            rng.choice(visitors)
            if visitors
            else (f"anon-{rng.randrange(50_000)}", _user_agent(rng))
        )
        path = rng.choice(PATHS)
        is_page = rng.random() < 0.6
        event: dict[str, Any] = {
            "type": "page" if is_page else "track",
            "messageId": f"bench-@@-{i}",
            "anonymousId": visitor,
            "timestamp": "2026-01-15T10:00:00.000Z",
            "context": {
                "userAgent": user_agent,
                "locale": "en-US",
                "page": {
                    "path": path,
                    "url": f"https://www.example.com{path}",
                    "referrer": rng.choice(REFERRERS),
                    "title": "Example",
                },
            },
        }
        if is_page:
            event["properties"] = {"path": path, "url": f"https://www.example.com{path}"}
        else:
            event["event"] = rng.choice(["Clicked CTA", "Scrolled", "Signed Up"])
            event["properties"] = {"button": "primary", "position": rng.randrange(10)}
        events.append(event)
    return json.dumps({"batch": events, "sentAt": "2026-01-15T10:00:01.000Z"}).encode()


def _loader(
    url: str,
    key: str,
    seconds: float,
    connections: int,
    batch_size: int,
    seed: int,
    out: Any,
    people: int = 0,
) -> None:
    import aiohttp
    import uvloop

    async def run() -> tuple[int, int, int]:
        template = batch_template(batch_size, seed, people)
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        ok = failed = 0
        counter = 0
        deadline = time.monotonic() + seconds
        prefix = f"{seed}-{uuid.uuid4().hex[:6]}"
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                nonlocal ok, failed, counter
                while time.monotonic() < deadline:
                    counter += 1
                    body = template.replace(b"@@", f"{prefix}-{counter}".encode())
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status == 200:
                            ok += 1
                        else:
                            failed += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
        return ok, failed, counter

    ok, failed, _ = uvloop.run(run())
    out.put((ok, failed))


def _raw_messages(port: int) -> tuple[float, float]:
    """(raw messages acknowledged, events in them) from the ingest process's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for field in found:
            if line.startswith(f"strata_ingest_raw_message_events_{field} "):
                found[field] = float(line.split()[1])
    return found["count"], found["sum"]


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("ingest exited before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("ingest not ready")


async def _prepare_database(database_url: str) -> str:
    import asyncpg

    from libs.common import db, keys

    await db.ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await db.migrate(conn)
        await keys.ensure_project(conn, "bench", "Benchmark")
        # The benchmark measures throughput, not the limiter: lift the project's limit.
        await conn.execute("UPDATE projects SET rate_limit_per_s = 1e9 WHERE id = 'bench'")
        _, secret = await keys.create_key(conn, "bench", "write", "ingest benchmark")
        return secret
    finally:
        await conn.close()


def run_benchmark(
    seconds: float = 20.0,
    connections: int = 64,
    loaders: int = 1,
    batch_size: int = 100,
    people_per_batch: int = 0,
    linger_s: float | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the figures (events/s accepted, requests, errors, RSS)."""
    import psutil

    from strata_dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port

    with tempfile.TemporaryDirectory(prefix="strata-bench-ingest-") as tmp:
        servers: list[Any] = []
        nats_url = os.environ.get("NATS_URL")
        database_url = os.environ.get("DATABASE_URL")
        if not nats_url:
            servers.append(EmbeddedNats(Path(tmp) / "nats").start())
            nats_url = servers[-1].url
        if not database_url:
            servers.append(EmbeddedPostgres(Path(tmp) / "pg").start())
            database_url = servers[-1].url
        try:
            key = asyncio.run(_prepare_database(database_url))
            port = free_port()
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
            env.update(
                NATS_URL=nats_url,
                DATABASE_URL=database_url,
                STRATA_NATS_PREFIX=prefix,
                STRATA_INGEST_PORT=str(port),
                STRATA_HOST="127.0.0.1",
                STRATA_LOG_LEVEL="warning",
            )
            if linger_s is not None:
                env["STRATA_PUBLISH_LINGER_S"] = str(linger_s)
            ingest = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=ROOT, env=env)
            try:
                _wait_ready(port, ingest)
                process = psutil.Process(ingest.pid)
                url = f"http://127.0.0.1:{port}/v1/batch"
                queue: multiprocessing.Queue[tuple[int, int]] = multiprocessing.Queue()
                workers = [
                    multiprocessing.Process(
                        target=_loader,
                        args=(
                            url,
                            key,
                            seconds,
                            connections // loaders,
                            batch_size,
                            n,
                            queue,
                            people_per_batch,
                        ),
                    )
                    for n in range(loaders)
                ]
                cpu_before = process.cpu_times()
                messages_before = _raw_messages(port)
                started = time.monotonic()
                for worker in workers:
                    worker.start()
                peak_rss = 0
                while any(w.is_alive() for w in workers):
                    peak_rss = max(peak_rss, process.memory_info().rss)
                    time.sleep(0.25)
                elapsed = time.monotonic() - started
                cpu_after = process.cpu_times()
                messages_after = _raw_messages(port)
                ok = failed = 0
                for _ in workers:
                    a, b = queue.get()
                    ok, failed = ok + a, failed + b
            finally:
                ingest.terminate()
                ingest.wait(30)
        finally:
            for server in servers:
                server.stop()
    ingest_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    raw_messages = messages_after[0] - messages_before[0]
    raw_events = messages_after[1] - messages_before[1]
    return {
        "ingest_events_per_s": round(ok * batch_size / elapsed),
        "ingest_requests_per_s": round(ok / elapsed),
        "ingest_failed_requests": failed,
        "ingest_batch_size": batch_size,
        "ingest_people_per_batch": people_per_batch or batch_size,
        "ingest_cpu_share": round(ingest_cpu / elapsed, 2),
        # What one fully available core would accept: the figure that does not depend on how
        # much of the machine the load generator and NATS took.
        "ingest_events_per_cpu_s": round(ok * batch_size / ingest_cpu) if ingest_cpu else 0,
        "ingest_peak_rss_mb": round(peak_rss / 2**20, 1),
        # Cross-request coalescing at work: JetStream messages per request and their size.
        "ingest_raw_messages_per_s": round(raw_messages / elapsed),
        "ingest_raw_messages_per_request": round(raw_messages / ok, 2) if ok else 0,
        "ingest_events_per_raw_message": round(raw_events / raw_messages, 1) if raw_messages else 0,
        "seconds": round(elapsed, 1),
        "connections": connections,
        "loaders": loaders,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--loaders", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--people-per-batch",
        type=int,
        default=0,
        help="visitors a batch's events come from (0: every event its own, the worst case)",
    )
    parser.add_argument(
        "--linger-s",
        type=float,
        default=None,
        help="STRATA_PUBLISH_LINGER_S of the ingest process (default: the service's default)",
    )
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    figures = run_benchmark(
        args.seconds,
        args.connections,
        args.loaders,
        args.batch_size,
        args.people_per_batch,
        args.linger_s,
    )
    report(figures, args.output)


if __name__ == "__main__":
    main()
