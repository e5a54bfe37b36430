"""The query API in-process over the test's real PostgreSQL and NATS, behind aiohttp's test
client, plus helpers to call it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from libs.common.nats_io import connect
from libs.common.settings import QuerySettings
from libs.common.subjects import Subjects
from services.query.app import build_app
from services.query.dependencies import QueryDeps


@asynccontextmanager
async def query_client(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, **settings: Any
) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    nc = await connect(nats_url, "query-tests")
    app = build_app(
        QuerySettings(nats_prefix=subjects.prefix, **settings),
        QueryDeps(pool=pool, nc=nc, subjects=subjects),
    )
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
