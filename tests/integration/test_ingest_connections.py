"""The ingest process against connection floods: idle and half-sent connections no longer use up
its file descriptors, and past its connection bound the longest-idle ones make room, so a real
client is still served."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from nats.js import JetStreamContext

from libs.common.subjects import Subjects
from tests.support.project import TestProject
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra


@contextmanager
def ingest_process(
    database_url: str, nats_url: str, subjects: Subjects, log_dir: Path, **settings: object
) -> Iterator[tuple[str, ServiceProcess]]:
    port = free_port()
    env = service_env(
        database_url, nats_url, subjects.prefix, ingest_port=port, host="127.0.0.1", **settings
    )
    process = ServiceProcess("ingest", env, log_dir).start(open_file_limit=1024)
    try:
        process.wait_http(port, "/readyz", 30.0)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.stop()


def open_connections(url: str, count: int, half_request: bool) -> list[socket.socket]:
    """`count` connections that never complete a request (half of them send part of one)."""
    host, port = url.removeprefix("http://").split(":")
    opened = []
    for index in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        if half_request and index % 2:
            sock.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Len")
        opened.append(sock)
    return opened


async def send_event(url: str, write_key: str, message_id: str) -> int:
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/track",
            data=json.dumps({"userId": "u", "event": "e", "messageId": message_id}),
            headers={"Authorization": auth},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response,
    ):
        return response.status


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except ConnectionError:
        return True


async def test_1100_idle_connections_do_not_shut_out_a_client(
    database_url: str,
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    # Started with the common soft limit of 1024 open files, which ingest raises at start.
    with ingest_process(database_url, nats_url, subjects, tmp_path) as (url, process):
        idle = await asyncio.to_thread(open_connections, url, 1100, True)
        try:
            assert await send_event(url, project.write_key, "after-1100") == 200
        finally:
            for sock in idle:
                sock.close()
        assert "Too many open files" not in process.log()
    assert (await js.stream_info(subjects.raw_stream)).state.messages == 1


async def test_past_the_connection_bound_the_longest_idle_make_room(
    database_url: str,
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    with ingest_process(database_url, nats_url, subjects, tmp_path, max_connections=50) as (
        url,
        _,
    ):
        idle = await asyncio.to_thread(open_connections, url, 80, True)
        try:
            assert await send_event(url, project.write_key, "past-the-bound") == 200
            # The oldest idle connections were closed to admit the newer ones; the newest
            # are still open.
            assert await asyncio.to_thread(closed_by_server, idle[0])
            assert not await asyncio.to_thread(closed_by_server, idle[-1])
        finally:
            for sock in idle:
                sock.close()
