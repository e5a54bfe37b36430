"""Demo traffic goes through the real ingest gateway whole: every generated event is accepted
(none rejected by validation) and lands on the raw stream exactly once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from nats.js import JetStreamContext

from libs.common import keys
from libs.common.schemas.events_v1 import raw_batch_decoder
from libs.common.subjects import Subjects
from strata_dev.demo import (
    DEMO_PROJECTS,
    DemoError,
    DemoPlan,
    IngestClient,
    IngestTarget,
    SendStats,
    iter_backfill,
    send_backfill,
)
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra


async def test_demo_backfill_is_accepted_whole_and_published_once(
    database_url: str,
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    write_keys = {}
    async with pool.acquire() as conn:
        for project in DEMO_PROJECTS:
            await keys.ensure_project(conn, project)
            _, write_keys[project] = await keys.create_key(conn, project, "write")
    port = free_port()
    ingest = ServiceProcess(
        "ingest",
        service_env(database_url, nats_url, subjects.prefix, ingest_port=port, host="127.0.0.1"),
        tmp_path,
    ).start()
    try:
        await asyncio.to_thread(ingest.wait_http, port, "/readyz", 30.0)
        url = f"http://127.0.0.1:{port}"
        plan = DemoPlan(days=4, visitors_per_day=15, seed=3, end=datetime.now(UTC))
        generated = {m["messageId"] for b in iter_backfill(plan) for m in b.messages}
        progress: list[str] = []
        async with aiohttp.ClientSession() as http:
            client = IngestClient(
                http, {p: IngestTarget(url, k) for p, k in write_keys.items()}, SendStats()
            )
            stats = await send_backfill(
                iter_backfill(plan, 50), client, concurrency=4, progress=progress.append
            )

            # A wrong key stops the demo with a clear reason instead of retrying forever.
            bad = IngestClient(http, {"demo": IngestTarget(url, "sk_w_nope")}, SendStats())
            with pytest.raises(
                DemoError, match="refused the write key of project 'demo' \\(401\\)"
            ):
                # Two days: a one-day plan just after midnight UTC holds no visits.
                await send_backfill(iter_backfill(DemoPlan(days=2, projects=("demo",))), bad)
    finally:
        ingest.stop()

    assert stats.rejected == 0, stats.first_rejection
    assert stats.accepted + stats.skipped == len(generated)
    assert progress[-1].endswith(" done")

    info = await js.stream_info(subjects.raw_stream)
    published: list[str] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(subjects.raw_stream, seq)
        assert message.data is not None
        published += [e.event_id for e in raw_batch_decoder.decode(message.data).events]
    assert len(published) == len(set(published)) == stats.accepted
    assert set(published) <= generated


async def test_strata_demo_streams_live_traffic_until_sigterm(
    database_url: str,
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    async with pool.acquire() as conn:
        await keys.ensure_project(conn, "web")
        _, write_key = await keys.create_key(conn, "web", "write")
    port = free_port()
    ingest = ServiceProcess(
        "ingest",
        service_env(database_url, nats_url, subjects.prefix, ingest_port=port, host="127.0.0.1"),
        tmp_path,
    ).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env["STRATA_DATA_DIR"] = str(tmp_path / "no-stack")
    try:
        await asyncio.to_thread(ingest.wait_http, port, "/readyz", 30.0)
        demo = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "strata"),
            *("demo", "--ingest-url", f"http://127.0.0.1:{port}", "--write-key", write_key),
            *("--project", "web", "--days", "2", "--visitors", "5", "--live-rate", "600"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert demo.stderr is not None
        lines: list[str] = []
        while not any("live traffic" in line for line in lines):
            line = await asyncio.wait_for(demo.stderr.readline(), timeout=60)
            assert line, "strata demo ended early:\n" + "".join(lines)
            lines.append(line.decode())
        # Let some live sessions start and send their first events.
        info = await js.stream_info(subjects.raw_stream)
        for _ in range(100):
            await asyncio.sleep(0.1)
            if (await js.stream_info(subjects.raw_stream)).state.messages > info.state.messages:
                break
        demo.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(demo.stderr.read(), timeout=30)
        code = await demo.wait()
    finally:
        ingest.stop()
    output = "".join(lines) + rest.decode()
    assert code == 0, output
    assert "Traceback" not in output
    assert re.search(r"demo: stopped \([\d,]+ events accepted\)", output), output
    grown = await js.stream_info(subjects.raw_stream)
    assert grown.state.messages > info.state.messages  # live events were published
