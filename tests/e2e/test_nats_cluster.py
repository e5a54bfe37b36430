"""The pipeline on a real 3-node NATS JetStream cluster with R3 streams: ingest, sessionizer and
aggregator processes keep running while the raw stream's leader is killed with SIGKILL, brought
back, and then another server is killed. Every event a client was told is accepted is stored
exactly once; clients see nothing worse than a short 503 with Retry-After."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from libs.common.nats_io import connect, ensure_streams
from libs.common.subjects import Subjects
from tests.support.nats_cluster import NatsCluster
from tests.support.project import TestProject
from tests.support.recompute import assert_aggregates_match_events
from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.sessionizer_streams import read_subject

pytestmark = [pytest.mark.infra, pytest.mark.timeout(300)]

SENDERS = 3
BATCH = 20


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    # Not under pytest's tmp_path, whose permissions change between sessions.
    root = Path(tempfile.mkdtemp(prefix="strata-cluster-"))
    nats = NatsCluster(root).start()
    try:
        yield nats
    finally:
        nats.stop()
        shutil.rmtree(root, ignore_errors=True)


class Load:
    """Senders posting batches until stopped, retrying a batch on 503 as an SDK does."""

    def __init__(self, url: str, write_key: str) -> None:
        self.url = url
        self.auth = aiohttp.encode_basic_auth(write_key, "")
        self.accepted: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.without_retry_after = 0
        self.longest_outage_s = 0.0
        self.stopping = asyncio.Event()

    async def sender(self, http: aiohttp.ClientSession, n: int) -> None:
        batch_no = 0
        while not self.stopping.is_set():
            ids = [f"s{n}-b{batch_no}-{i}" for i in range(BATCH)]
            items = [
                {"type": "track", "event": "tick", "userId": f"u{n}-{i % 4}", "messageId": m}
                for i, m in enumerate(ids)
            ]
            failing_since: float | None = None
            while True:  # the same batch until accepted: it must be stored once
                status, retry_after = await self.post(http, items)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.accepted.update(ids)
                    if failing_since is not None:
                        outage = time.monotonic() - failing_since
                        self.longest_outage_s = max(self.longest_outage_s, outage)
                    break
                failing_since = failing_since or time.monotonic()
                if retry_after is None:
                    self.without_retry_after += 1
                await asyncio.sleep(min(float(retry_after or 1), 1.0))
            batch_no += 1
            await asyncio.sleep(0.02)

    async def post(
        self, http: aiohttp.ClientSession, items: list[dict[str, Any]]
    ) -> tuple[int, str | None]:
        try:
            async with http.post(
                f"{self.url}/v1/batch",
                json={"batch": items},
                headers={"Authorization": self.auth},
                timeout=aiohttp.ClientTimeout(total=15),
            ) as response:
                body = await response.json()
                if response.status == 200:
                    assert body["rejected"] == [], body
                return response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError):
            return 0, None  # no answer at all: counted, and must never happen

    async def run_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def stream_leader(
    nc: Any, stream: str, within_s: float = 30.0, other_than: str | None = None
) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            info = await nc.jetstream().stream_info(stream)
            leader = info.cluster.leader if info.cluster is not None else None
            if leader and leader != other_than:
                return str(leader)
        except Exception:  # no leader yet: elections take a moment
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{stream} has no leader")


async def test_r3_streams_survive_leader_and_server_loss_storing_each_event_once(
    cluster: NatsCluster,
    database_url: str,
    pool: asyncpg.Pool,
    project: TestProject,
    tmp_path: Path,
) -> None:
    subjects = Subjects(prefix=f"c{uuid.uuid4().hex[:8]}")
    admin = await connect(cluster.url, "cluster-test")
    try:
        await _wait_jetstream(admin)
        # What a first deploy does: the services create the streams as R3.
        await ensure_streams(admin.jetstream(), subjects, replicas=3)
        # A service configured without replicas (default 1) must not shrink them.
        await ensure_streams(admin.jetstream(), subjects, replicas=1)
        for stream in (subjects.raw_stream, subjects.enriched_stream, subjects.dlq_stream):
            info = await admin.jetstream().stream_info(stream)
            assert info.config.num_replicas == 3, stream

        ports = {name: free_port() for name in ("ingest", "sessionizer", "aggregator")}
        base = service_env(
            database_url, cluster.url, subjects.prefix, partitions=2, stream_replicas=3
        )
        extra: dict[str, dict[str, Any]] = {
            "ingest": {"ingest_port": ports["ingest"], "publish_timeout_s": 2},
            "sessionizer": {"health_port": ports["sessionizer"], "checkpoint_interval_s": 0.5},
            "aggregator": {"health_port": ports["aggregator"], "ack_wait_s": 10},
        }
        procs = {
            name: ServiceProcess(
                name,
                dict(base, **{f"STRATA_{k.upper()}": str(v) for k, v in extra[name].items()}),
                tmp_path,
            ).start()
            for name in ports
        }
        try:
            for name, proc in procs.items():
                await asyncio.to_thread(proc.wait_http, ports[name], "/readyz", 60.0)
            load = Load(f"http://127.0.0.1:{ports['ingest']}", project.write_key)
            async with aiohttp.ClientSession() as http:
                senders = [asyncio.create_task(load.sender(http, n)) for n in range(SENDERS)]
                await load.run_for(1.0)
                started_at = time.monotonic()

                first = await stream_leader(admin, subjects.raw_stream)
                cluster.node(first).kill9()
                # The leader the others elect (on a busy machine the election can outlast the
                # load step, and a restarted server may win the next one).
                second = await stream_leader(admin, subjects.raw_stream, other_than=first)
                await load.run_for(2.5)
                cluster.restart(first)
                await load.run_for(2.5)

                # Then that other server goes too.
                cluster.node(second).kill9()
                await load.run_for(2.5)
                load.stopping.set()
                await asyncio.gather(*senders)
                load_s = time.monotonic() - started_at

            # Every acknowledged event stored, once.
            deadline = time.monotonic() + 120
            stored: set[str] = set()
            while time.monotonic() < deadline:
                stored = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM events")}
                if stored >= load.accepted:
                    break
                await asyncio.sleep(0.5)
            drained_s = time.monotonic() - started_at - load_s
            await asyncio.sleep(1.0)  # anything counted twice would land by now
            count = await pool.fetchval("SELECT count(*) FROM events")
            logs = {name: proc.log() for name, proc in procs.items()}
            missing = load.accepted - stored
            if missing:
                where = await locate(admin.jetstream(), subjects, missing)
                notable = {
                    name: [line for line in text.splitlines() if _NOTABLE.search(line)][-20:]
                    for name, text in logs.items()
                }
                pytest.fail(
                    f"{len(missing)} accepted events not stored: {sorted(missing)[:10]}; "
                    f"found on {where}; service warnings and errors: "
                    + json.dumps(notable, indent=1)
                )
            assert stored == load.accepted and count == len(load.accepted)
            async with pool.acquire() as conn:
                await assert_aggregates_match_events(conn)
            # Clients saw answers only: accepted, or a 503 saying when to retry.
            assert set(load.statuses) <= {200, 503}, load.statuses
            assert load.without_retry_after == 0
            assert len(load.accepted) >= 20 * BATCH
            import os

            if os.environ.get("DUMP_LOGS"):
                for name, text in logs.items():
                    print(f"==== {name}\n{text}")
            print(
                f"cluster: {len(load.accepted)} events accepted, statuses {load.statuses}, "
                f"longest client-visible outage {load.longest_outage_s:.1f}s; load {load_s:.1f}s,"
                f" drained {drained_s:.1f}s later"
            )
        finally:
            for proc in procs.values():
                proc.stop()
    finally:
        await admin.close()


class _EventId(msgspec.Struct):
    event_id: str


class _EventIds(msgspec.Struct):
    """Just the ids of a raw or enriched batch's events."""

    events: list[_EventId]


_NOTABLE = re.compile(r"\[(warning|error|critical) *\]")


async def locate(js: Any, subjects: Subjects, event_ids: set[str]) -> dict[str, list[str]]:
    """Which stream still holds each of `event_ids` (the raw stream only until its partition's
    checkpoint purged it): tells a loss in ingest or JetStream from one in a service."""
    found: dict[str, list[str]] = {}
    for stream, subject in (
        (subjects.raw_stream, subjects.raw_all),
        (subjects.enriched_stream, subjects.enriched_all),
    ):
        try:
            messages = await read_subject(js, stream, subject)
        except Exception as exc:  # a diagnosis must not hide the failure it explains
            found[stream] = [f"unreadable: {exc!r}"]
            continue
        held = {
            event.event_id
            for msg in messages
            for event in msgspec.json.decode(msg.data, type=_EventIds).events
        }
        found[stream] = sorted(event_ids & held)[:10]
    return found


async def _wait_jetstream(nc: Any, within_s: float = 30.0) -> None:
    """Until the cluster elected its JetStream meta leader (a few seconds after start)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await nc.jetstream().account_info()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
