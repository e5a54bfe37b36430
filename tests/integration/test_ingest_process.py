"""`python -m services.ingest` as Kubernetes runs it: configured by environment variables, and
on SIGTERM it stops accepting, finishes the requests in flight and exits 0."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from libs.common.subjects import Subjects
from tests.support.project import TestProject
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra


async def _http(port: int, head: bytes, body_parts: list[bytes], between: float = 0.0) -> bytes:
    """A raw HTTP/1.1 exchange, so a body can be held back mid-request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    for part in body_parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(between)
    response = await reader.read()
    writer.close()
    return response


def _request(key: str, body: bytes) -> bytes:
    auth = base64.b64encode(f"{key}:".encode()).decode()
    return (
        f"POST /v1/batch HTTP/1.1\r\nHost: ingest\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def test_the_service_process_serves_and_drains_on_sigterm(
    tmp_path: Path,
    nats_url: str,
    database_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
) -> None:
    port = free_port()
    env = service_env(
        database_url, nats_url, subjects.prefix, ingest_port=port, host="127.0.0.1", partitions=4
    )
    ingest = ServiceProcess("ingest", env, tmp_path).start()
    try:
        await asyncio.to_thread(ingest.wait_http, port)
        body = json.dumps(
            {
                "batch": [
                    {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"m{i}"}
                    for i in range(10)
                ]
            }
        ).encode()
        first = await _http(port, _request(project.write_key, body), [body])
        assert first.startswith(b"HTTP/1.1 200")

        # A request whose body is still arriving when SIGTERM comes is finished, not dropped.
        other = json.dumps(
            {"batch": [{"type": "track", "userId": "late", "event": "E", "messageId": "late"}]}
        ).encode()
        in_flight = asyncio.create_task(
            _http(port, _request(project.write_key, other), [other[:10], other[10:]], between=1.0)
        )
        await asyncio.sleep(0.5)
        assert ingest.proc is not None
        ingest.proc.send_signal(signal.SIGTERM)
        response = await in_flight
        assert response.startswith(b"HTTP/1.1 200"), response
        assert await asyncio.to_thread(ingest.stop) == 0
    finally:
        ingest.stop()
    info = await js.stream_info(subjects.raw_stream)
    events = 0
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.raw_stream, seq)
        assert msg.data is not None
        events += len(json.loads(msg.data)["events"])
    assert events == 11
