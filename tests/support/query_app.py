"""The query API in-process over the test's real PostgreSQL and NATS, behind aiohttp's test
client, plus helpers to call it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from libs.common.nats_io import connect
from libs.common.settings import QuerySettings
from libs.common.subjects import Subjects
from services.query.app import build_app
from services.query.dependencies import QueryDeps
from services.query.scan_engine import ScanEngine

# Dashboard passwords in tests: argon2id at its cheapest (a hash records its own parameters, so
# sign-in verifies these like production ones, in a millisecond instead of a third of a second).
FAST_PASSWORD_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@asynccontextmanager
async def query_client(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    *,
    scan_engine: ScanEngine | None = None,
    **settings: Any,
) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    """`scan_engine`: the event scans' day files and DuckDB (a tier layout's engine, see
    tests/support/tier_layouts.py); by default every day is read from PostgreSQL."""
    nc = await connect(nats_url, "query-tests")
    deps = QueryDeps(pool=pool, nc=nc, subjects=subjects, password_hasher=FAST_PASSWORD_HASHER)
    if scan_engine is not None:
        deps.scan_engine = scan_engine
    app = build_app(QuerySettings(nats_prefix=subjects.prefix, **settings), deps)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await nc.close()


async def get_json(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    key: str | None,
    params: list[tuple[str, str]] | dict[str, str] | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with client.get(path, params=params or {}, headers=headers) as resp:
        return resp.status, await resp.json()
