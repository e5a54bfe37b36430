"""`strata up` heals its own servers: under a steady load, kill -9 of the embedded NATS and then
of the embedded PostgreSQL; the supervisor notices, restarts each (same port, same store) and
says so, ingest answers 2xx again, and every event it acknowledged is stored exactly once.
(How long the recovery takes is a benchmark figure: `python -m bench --only recovery`.)"""

# ruff: noqa: F811  (the stack_env fixture is imported from test_stack_up)
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from tests.e2e.test_stack_up import (  # noqa: F401
    LocalStack,
    alive,
    stack_env,
    wait_for,
)
from tests.support.stack_load import SteadyLoad

pytestmark = [pytest.mark.infra, pytest.mark.timeout(600)]


def nats_pid(stack: LocalStack) -> int:
    assert stack.proc is not None
    for child in psutil.Process(stack.proc.pid).children(recursive=True):
        try:
            if "nats-server" in " ".join(child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            pass
    raise AssertionError("no nats-server under the supervisor")


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])


def test_up_restarts_a_killed_nats_and_postgres_losing_nothing(
    stack_env: tuple[Path, dict[str, str]],
) -> None:
    data_dir, env = stack_env
    stack = LocalStack(data_dir, dict(env, STRATA_LOG_LEVEL="error"), demo=False).start()
    try:
        dev = stack.dev_json()
        load = SteadyLoad(dev["ingest_url"], dev["write_key"])
        sender = threading.Thread(target=load.run, daemon=True)
        sender.start()
        try:
            wait_for("the first accepted batches", lambda: len(load.accepted) >= 100, 60, stack.log)
            for name, pid_of in (
                ("NATS", lambda: nats_pid(stack)),
                ("PostgreSQL", lambda: postmaster_pid(data_dir)),
            ):
                victim = pid_of()
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                wait_for(
                    f"{name} restarted",
                    lambda name=name: f"strata: {name} is running again" in stack.log(),
                    60,
                    stack.log,
                )
                assert pid_of() != victim
                wait_for(
                    f"ingest accepting again after {name}",
                    lambda killed_at=killed_at: load.accepted_after(killed_at + 0.5),
                    60,
                    stack.log,
                )
                assert f"strata: {name} died; restart #1 in 0.5s" in stack.log()
        finally:
            load.stop()
            sender.join(30)
        assert load.unanswered == 0  # ingest always answered, if only with 503 for a moment
        assert set(load.statuses) <= {200, 503}, load.statuses
        stored = asyncio.run(_stored_ids(dev["database_url"], set(load.accepted), stack.log))
        assert stored == set(load.accepted)

        started = stack.remember_processes()
        assert stack.sigterm() == 0, stack.log()[-6000:]
        wait_for("no process left", lambda: not alive(started), 30, lambda: str(alive(started)))
    finally:
        stack.kill_everything()


async def _stored_ids(url: str, accepted: set[str], log: Callable[[], str]) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 120
        rows: list[Any] = []
        while time.monotonic() < deadline:
            rows = await conn.fetch("SELECT event_id FROM events")
            if len(rows) >= len(accepted):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # anything counted twice would land by now
        rows = await conn.fetch("SELECT event_id FROM events")
        ids = [r["event_id"] for r in rows]
        assert len(ids) == len(set(ids)), "an event was stored twice"
        return set(ids)
    finally:
        await conn.close()
