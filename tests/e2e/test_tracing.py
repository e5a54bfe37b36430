"""OpenTelemetry across NATS: the trace a client starts at the ingest gateway continues in the
sessionizer and the aggregator, because the W3C context travels in NATS message headers."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from libs.common.subjects import Subjects
from tests.support.project import TestProject
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra


async def test_one_trace_spans_ingest_sessionizer_and_aggregator(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
) -> None:
    ports = {name: free_port() for name in ("ingest", "sessionizer", "aggregator")}
    env = service_env(database_url, nats_url, subjects.prefix, otel_exporter="console")
    extra = {
        "ingest": {"STRATA_INGEST_PORT": ports["ingest"]},
        "sessionizer": {"STRATA_HEALTH_PORT": ports["sessionizer"]},
        "aggregator": {"STRATA_HEALTH_PORT": ports["aggregator"]},
    }
    procs = {
        name: ServiceProcess(
            name, dict(env, **{k: str(v) for k, v in extra[name].items()}), tmp_path
        ).start()
        for name in ports
    }
    trace_id = uuid.uuid4().hex
    try:
        await asyncio.gather(*(asyncio.to_thread(procs[n].wait_http, ports[n]) for n in ports))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{ports['ingest']}/v1/track",
                json={"userId": "traced-user", "event": "traced", "messageId": "m-traced"},
                headers={
                    "Authorization": aiohttp.encode_basic_auth(project.write_key, ""),
                    "traceparent": f"00-{trace_id}-{'1' * 16}-01",
                },
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(300):
                if await conn.fetchval("SELECT count(*) FROM events WHERE event_id = 'm-traced'"):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the traced event was never stored")
        finally:
            await conn.close()
    finally:
        # A graceful stop flushes each process's batched spans to its console exporter.
        for proc in procs.values():
            proc.stop()
    for name, proc in procs.items():
        log = proc.log_path.read_text(errors="replace")
        assert f'"trace_id": "0x{trace_id}"' in log, f"{name} has no span of the trace"
