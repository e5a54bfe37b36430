"""Benchmark: how long the local stack takes to heal. `strata up` (embedded NATS and
PostgreSQL, all five services) under a steady trickle of events; kill -9 of the NATS server,
then of the PostgreSQL postmaster, `--rounds` times each. The figure is the time from the kill
to the first batch ingest accepts after it (goal: <= 10 s); beside it, the time until the
server listens again (a new process) and until an event accepted after the kill is stored; and
whether every accepted event was stored exactly once.

    python -m bench.recovery [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench import stack_env
from tests.support.stack_load import SteadyLoad

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 10.0


def _nats_pid(up: subprocess.Popen[bytes]) -> int:
    for child in psutil.Process(up.pid).children(recursive=True):
        try:
            if "nats-server" in " ".join(child.cmdline()):
                pid: int = child.pid  # psutil has no type hints
                return pid
        except psutil.NoSuchProcess:
            continue
    raise RuntimeError("no nats-server under strata up")


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])


def _until(check: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {within_s:.0f}s")
        time.sleep(0.02)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def _count_stored(url: str, ids: list[str]) -> int:
    try:
        conn = await asyncpg.connect(url, timeout=1)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return 0
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE event_id = ANY($1)", ids))
    except asyncpg.PostgresError:
        return 0
    finally:
        await conn.close()


def _recovery(
    load: SteadyLoad,
    kill: Callable[[], None],
    port: int,
    pid_of: Callable[[], int],
    database_url: str,
) -> dict[str, float]:
    """Seconds from the kill to: ingest's first 2xx after it, the server listening again
    (a new process), and the first event accepted after the kill being stored."""
    _until(lambda: load.last_accepted_at > time.monotonic() - 0.5, 30, "a steady load")
    victim = pid_of()
    killed_at = time.monotonic()
    first_after = len(load.accepted)
    kill()
    marks: dict[str, float] = {}
    deadline = killed_at + 120
    while len(marks) < 3:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"no full recovery within 120 s: {marks}")
        if "ingest_2xx_s" not in marks and load.accepted_after(killed_at + 0.05):
            marks["ingest_2xx_s"] = load.last_accepted_at - killed_at
        if "server_back_s" not in marks and _port_open(port):
            with contextlib.suppress(OSError, ValueError, IndexError, RuntimeError):
                if pid_of() != victim:
                    marks["server_back_s"] = now - killed_at
        if "stored_again_s" not in marks and len(load.accepted) > first_after:
            probe = load.accepted[first_after : first_after + 10]
            if asyncio.run(_count_stored(database_url, probe)) > 0:
                marks["stored_again_s"] = time.monotonic() - killed_at
        time.sleep(0.05)
    return {k: round(v, 2) for k, v in marks.items()}


async def _stored(url: str, accepted: int) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT count(*) FROM events") >= accepted:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        total = await conn.fetchval("SELECT count(*) FROM events")
        distinct = await conn.fetchval("SELECT count(DISTINCT event_id) FROM events")
        return int(total), int(distinct)
    finally:
        await conn.close()


def run_benchmark(rounds: int = 2) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="strata-bench-recovery-") as tmp:
        data_dir = Path(tmp)
        env = stack_env(tmp, log_level="error")
        log = open(data_dir / "up.log", "wb")  # closed after the run, below
        up = subprocess.Popen(
            [sys.executable, "-m", "strata_cli", "up"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _until(lambda: (data_dir / "dev.json").exists() or up.poll() is not None, 240, "up")
            if up.poll() is not None:
                raise RuntimeError("strata up exited")
            info = json.loads((data_dir / "dev.json").read_text())
            load = SteadyLoad(info["ingest_url"], info["write_key"])
            sender = threading.Thread(target=load.run, daemon=True)
            sender.start()
            state = json.loads((data_dir / "stack.json").read_text())
            url = info["database_url"]
            rounds_of: dict[str, list[dict[str, float]]] = {"nats": [], "postgres": []}
            try:
                for _ in range(rounds):
                    rounds_of["nats"].append(
                        _recovery(
                            load,
                            lambda: os.kill(_nats_pid(up), signal.SIGKILL),
                            state["nats_port"],
                            lambda: _nats_pid(up),
                            url,
                        )
                    )
                    rounds_of["postgres"].append(
                        _recovery(
                            load,
                            lambda: os.kill(_postmaster_pid(data_dir), signal.SIGKILL),
                            state["postgres_port"],
                            lambda: _postmaster_pid(data_dir),
                            url,
                        )
                    )
            finally:
                load.stop()
                sender.join(30)
            total, distinct = asyncio.run(_stored(info["database_url"], len(load.accepted)))
        except BaseException:
            print((data_dir / "up.log").read_text(errors="replace")[-8000:], file=sys.stderr)
            raise
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
            log.close()
            if os.environ.get("STRATA_BENCH_KEEP_LOG"):
                print((data_dir / "up.log").read_text(errors="replace")[-5000:])
    figures: dict[str, Any] = {}
    for server, measured in rounds_of.items():
        for mark in ("ingest_2xx_s", "server_back_s", "stored_again_s"):
            values = [r[mark] for r in measured]
            figures[f"kill9_{server}_to_{mark}"] = {
                "rounds": values,
                "median": round(statistics.median(values), 2),
                "max": round(max(values), 2),
            }
        figures[f"kill9_{server}_to_ingest_2xx_s"]["goal"] = f"<= {GOAL_S:g}"
    figures["accepted_events"] = len(load.accepted)
    figures["stored_events"] = total
    figures["stored_twice"] = total - distinct
    figures["lost"] = len(load.accepted) - distinct
    figures["answers"] = {str(k): v for k, v in sorted(load.statuses.items())}
    figures["unanswered_requests"] = load.unanswered
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run_benchmark(args.rounds), indent=2))


if __name__ == "__main__":
    main()
