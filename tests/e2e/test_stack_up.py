"""`strata up --demo` end to end, as a newcomer runs it: the whole stack comes up on embedded
NATS and PostgreSQL, demo traffic shows in the metrics API, a service killed with SIGKILL is
restarted, the embedded NATS and PostgreSQL killed with SIGKILL under load are restarted too
(nothing acknowledged lost or counted twice), SIGTERM leaves no process behind, and a second
`up` on the same data directory serves the same data with the same URLs and keys.
(How long the servers' recovery takes is a benchmark figure: `python -m bench --only
recovery`.)"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from strata_dev.embedded import EmbeddedPostgres
from tests.support.recompute import assert_aggregates_match_events
from tests.support.services import free_port
from tests.support.stack_load import SteadyLoad

pytestmark = [pytest.mark.infra, pytest.mark.timeout(1200)]

STRATA = str(Path(sys.executable).parent / "strata")
ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, check: Callable[[], Any], timeout: float, log: Callable[[], str]) -> Any:
    """Poll `check` until it returns something truthy; fail with the stack's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout:.0f}s; stack log tail:\n{log()[-6000:]}")


class LocalStack:
    """One `strata up` subprocess and every process it is responsible for."""

    def __init__(
        self, data_dir: Path, env: dict[str, str], demo: bool, command: tuple[str, ...] = (STRATA,)
    ) -> None:
        self.data_dir = data_dir
        self.env = env
        self.demo = demo
        self.command = command
        self.log_path = data_dir.parent / f"up-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    def start(self) -> LocalStack:
        (self.data_dir / "dev.json").unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.command, "up", *(["--demo"] if self.demo else [])],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dev_json(self, timeout: float = 240) -> dict[str, str]:
        path = self.data_dir / "dev.json"

        def written() -> dict[str, str] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"strata up exited with {self.proc.returncode}:\n{self.log()[-6000:]}")
            return json.loads(path.read_text()) if path.exists() else None

        return wait_for("dev.json", written, timeout, self.log)  # type: ignore[no-any-return]

    def children(self, service: str) -> list[psutil.Process]:
        """The live processes of `service` the supervisor runs (normally exactly one)."""
        assert self.proc is not None
        found = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if f"services.{service}" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass  # exited between listing and looking
        return found

    def remember_processes(self) -> set[int]:
        """Every process this stack runs now: the supervisor's descendants (services, NATS)
        and the PostgreSQL postmaster (daemonized by pg_ctl, so not a descendant)."""
        assert self.proc is not None
        pids = {self.proc.pid}
        pids |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        pid_file = self.data_dir / "postgres" / "pgdata" / "postmaster.pid"
        if pid_file.exists():
            pids.add(int(pid_file.read_text().split()[0]))
        self.seen_pids |= pids
        return pids

    def sigterm(self, timeout: float = 120) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def ctrl_c(self, timeout: float = 120) -> int:
        """What Ctrl-C in a terminal does: SIGINT to the whole foreground process group."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def kill_everything(self) -> None:
        """Test cleanup whatever happened: nothing may outlive the test."""
        if self.proc is not None and self.proc.poll() is None:
            self.remember_processes()
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.seen_pids:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        if (self.data_dir / "postgres" / "pgdata" / "postmaster.pid").exists():
            EmbeddedPostgres(self.data_dir / "postgres").stop()


def alive(pids: set[int]) -> dict[int, str]:
    """The processes among `pids` still running, with their command lines."""
    running = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                running[pid] = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            pass
    return running


def http_json(url: str, headers: dict[str, str], body: bytes | None = None) -> Any:
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def basic_auth(write_key: str) -> str:
    """Segment's scheme: the write key as the Basic user name, no password."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def totals(dev: dict[str, str], since_days: int = 140, until_days: int = -2) -> dict[str, Any]:
    """The demo project's KPI totals over a window of days relative to today (UTC)."""
    today = datetime.now(UTC).date()
    query = (
        f"metrics=visitors,pageviews,events&interval=month"
        f"&from={today - timedelta(days=since_days)}&to={today - timedelta(days=until_days)}"
    )
    answer = http_json(
        f"{dev['query_url']}/api/v1/analytics/metrics?{query}",
        {"Authorization": f"Bearer {dev['read_key']}"},
    )
    return answer["totals"] if isinstance(answer, dict) and "totals" in answer else {}


def stable_totals(dev: dict[str, str], log: Callable[[], str], timeout: float) -> dict[str, Any]:
    """Totals once the pipeline has drained: the same answer three polls in a row."""
    seen: list[dict[str, Any]] = []

    def settled() -> dict[str, Any] | None:
        seen.append(totals(dev))
        time.sleep(1.5)
        recent = seen[-3:]
        if len(recent) == 3 and recent[0] and all(r == recent[0] for r in recent):
            return recent[0]
        return None

    return wait_for("stable totals", settled, timeout, log)  # type: ignore[no-any-return]


@pytest.fixture
def stack_env() -> Iterator[tuple[Path, dict[str, str]]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STRATA_") and k not in ("DATABASE_URL", "NATS_URL")
    }
    # Not under pytest's tmp_path: each new pytest session makes /tmp/pytest-of-<user> private
    # again, which would lock the unprivileged PostgreSQL user (used when running as root) out
    # of its data directory mid-test.
    root = Path(tempfile.mkdtemp(prefix="strata-e2e-"))
    data_dir = root / "strata-data"
    env.update(
        STRATA_DATA_DIR=str(data_dir),
        STRATA_INGEST_PORT=str(free_port()),
        STRATA_QUERY_PORT=str(free_port()),
        STRATA_DEMO_DAYS="125",
        STRATA_DEMO_VISITORS="6",
        STRATA_DEMO_LIVE="false",  # a fixed history, so counts can be compared across runs
        STRATA_LOG_LEVEL="warning",
        STRATA_READY_TIMEOUT_S="180",
    )
    try:
        yield data_dir, env
    finally:
        shutil.rmtree(root, ignore_errors=True)


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


def heal_servers_under_load(stack: LocalStack, data_dir: Path, dev: dict[str, str]) -> None:
    """Kill -9 NATS, then PostgreSQL, while events flow: the supervisor restarts each and says
    so, ingest accepts again, and every event it acknowledged is stored exactly once."""
    load = SteadyLoad(dev["ingest_url"], dev["write_key"])
    sender = threading.Thread(target=load.run, daemon=True)
    sender.start()
    try:
        wait_for("accepted batches", lambda: len(load.accepted) >= 50, 60, stack.log)
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
            assert f"strata: {name} died; restart #1 in 0.5s" in stack.log()
            assert pid_of() != victim
            wait_for(
                f"ingest accepting again after {name}",
                lambda killed_at=killed_at: load.accepted_after(killed_at + 0.5),
                60,
                stack.log,
            )
    finally:
        load.stop()
        sender.join(30)
    assert load.unanswered == 0  # ingest always answered, if only with 503 for a moment
    assert set(load.statuses) <= {200, 503}, load.statuses
    asyncio.run(_stored_exactly_once(dev["database_url"], set(load.accepted)))


async def _stored_exactly_once(url: str, accepted: set[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 120
        stored: set[str] = set()
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT event_id FROM events WHERE event_id = ANY($1)", list(accepted)
            )
            stored = {r["event_id"] for r in rows}
            if stored == accepted:
                break
            await asyncio.sleep(0.5)
        assert stored == accepted, f"{len(accepted - stored)} acknowledged events not stored"
        # Counted once: every rollup equals a recomputation from the stored rows.
        await assert_aggregates_match_events(conn)
    finally:
        await conn.close()


def test_up_demo_restart_stop_and_up_again(stack_env: tuple[Path, dict[str, str]]) -> None:
    data_dir, env = stack_env
    first = LocalStack(data_dir, env, demo=True).start()
    # The second run as the README says it, through ./just, stopped with Ctrl-C.
    second = LocalStack(data_dir, env, demo=False, command=(str(ROOT / "just"),))
    try:
        dev = first.dev_json()
        assert dev["project"] == "demo"
        assert dev["ingest_url"] == f"http://127.0.0.1:{env['STRATA_INGEST_PORT']}"
        assert dev["query_url"] == f"http://127.0.0.1:{env['STRATA_QUERY_PORT']}"
        assert {"write_key", "read_key", "admin_key", "database_url", "nats_url"} <= set(dev)
        # The dashboard: its URL and the demo admin's login, printed and in dev.json, sign in.
        assert dev["dashboard_url"] == f"http://127.0.0.1:{env['STRATA_QUERY_PORT']}/"
        assert f"dashboard: {dev['dashboard_url']} (sign in as {dev['dashboard_email']}" in (
            first.log()
        )
        login = {"email": dev["dashboard_email"], "password": dev["dashboard_password"]}
        signed_in = http_json(
            f"{dev['dashboard_url']}api/v1/auth/login",
            {"Content-Type": "application/json"},
            json.dumps(login).encode(),
        )
        assert signed_in is not None, first.log()[-3000:]
        assert {(p["id"], p["role"]) for p in signed_in["projects"]} >= {("demo", "admin")}

        # Demo traffic shows in the metrics API, including months-old history.
        wait_for(
            "visitors and pageviews",
            lambda: (t := totals(dev)) and t["visitors"] > 0 and t["pageviews"] > 0,
            300,
            first.log,
        )
        wait_for(
            "demo backfill done",
            lambda: re.search(r"demo: backfill .* done", first.log()),
            600,
            first.log,
        )
        settled = stable_totals(dev, first.log, 300)
        assert totals(dev, since_days=124, until_days=100)["pageviews"] > 0

        # The admin key reads every demo project; each endpoint has something to show.
        admin = {"Authorization": f"Bearer {dev['admin_key']}"}
        analytics = f"{dev['query_url']}/api/v1/analytics"
        assert dev["projects"] == "demo,shop,docs"
        for project in ("demo", "shop", "docs"):
            answer = http_json(f"{analytics}/metrics?project={project}&period=30d", admin)
            assert answer["totals"]["pageviews"] > 0, (project, answer)
            # A visitor is a device: never more visitors than visits.
            assert answer["totals"]["visitors"] <= answer["totals"]["sessions"], answer
        vitals = http_json(f"{analytics}/performance?project=shop&period=30d", admin)
        assert vitals["overall"]["lcp"]["samples"] > 0, vitals
        experiment = http_json(
            f"{analytics}/experiments/analyze?project=shop",
            {**admin, "Content-Type": "application/json"},
            json.dumps(
                {
                    "date_range": "30d",
                    "experiment": "new-checkout",
                    "goal": {"funnel": {"steps": [{"event": "$pageview"}, {"event": "purchase"}]}},
                }
            ).encode(),
        )
        assert {v["variant"] for v in experiment["variants"]} == {"control", "treatment"}
        assert all(v["exposures"] > 0 for v in experiment["variants"]), experiment
        # As a web-analytics user reads the sources: the site is never its own referrer, and
        # every visit has a channel (navigation inside the site carries the visit's source).
        referrers = http_json(
            f"{analytics}/sources?project=demo&period=30d&by=referrer_domain", admin
        )
        assert not [r for r in referrers["results"] if "strata-demo.example" in r["value"]]
        channels = http_json(f"{analytics}/sources?project=demo&period=30d&by=channel", admin)
        assert "(none)" not in {r["value"] for r in channels["results"]}, channels

        # kill -9 a service: the supervisor restarts it and it becomes ready again.
        health_ports = json.loads((data_dir / "stack.json").read_text())["health_ports"]
        [victim] = first.children("aggregator")
        victim.kill()
        wait_for(
            "aggregator restarted",
            lambda: [p for p in first.children("aggregator") if p.pid != victim.pid],
            60,
            first.log,
        )
        wait_for(
            "aggregator ready again",
            lambda: ready(f"http://127.0.0.1:{health_ports['aggregator']}/readyz"),
            120,
            first.log,
        )
        assert f"aggregator (pid {victim.pid}) exited with code -9" in first.log()

        # ... and the pipeline flows through the restarted service.
        sent = http_json(
            f"{dev['ingest_url']}/v1/track",
            {"Authorization": basic_auth(dev["write_key"]), "Content-Type": "application/json"},
            json.dumps(
                {"userId": "e2e-user", "event": "e2e_check", "messageId": uuid.uuid4().hex}
            ).encode(),
        )
        assert sent is not None and sent.get("success") is True, sent
        wait_for(
            "the event sent after the restart",
            lambda: totals(dev).get("events") == settled["events"] + 1,
            120,
            first.log,
        )
        # kill -9 of the embedded NATS, then of PostgreSQL, under a steady load.
        heal_servers_under_load(first, data_dir, dev)
        before_stop = stable_totals(dev, first.log, 120)

        # SIGTERM: everything started exits, gracefully.
        started = first.remember_processes()
        assert len(started) >= 8  # supervisor, NATS, PostgreSQL, five services
        assert first.sigterm() == 0, first.log()[-6000:]
        wait_for("no process left", lambda: not alive(started), 30, lambda: str(alive(started)))
        assert not (data_dir / "postgres" / "pgdata" / "postmaster.pid").exists()

        # A second `up` on the same data dir: same URLs and keys, the same data.
        second.start()
        again = second.dev_json()
        assert again == dev
        wait_for("the same totals", lambda: totals(again) == before_stop, 180, second.log)
        second.remember_processes()
        assert second.ctrl_c() == 0, second.log()[-6000:]
        # What a newcomer reads: progress lines and service logs, nothing alarming.
        for noise in ("Traceback", "Warning:", "error:", 'strata up "$@"', "terminated by"):
            assert noise not in second.log(), second.log()[-6000:]
        assert second.log().rstrip().endswith("strata: stopped")
    finally:
        first.kill_everything()
        second.kill_everything()
