"""The whole pipeline as Kubernetes runs it: ingest -> JetStream -> sessionizer -> aggregator ->
PostgreSQL -> query, each a real `python -m services.<name>` process. The sessionizer and the
aggregator are killed with SIGKILL while events flow; afterwards every event the gateway
acknowledged is stored exactly once and every aggregate equals a recomputation from raw rows."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from libs.common.subjects import Subjects
from tests.support.project import TestProject
from tests.support.recompute import assert_aggregates_match_events
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra

PAGES = ["/", "/pricing", "/docs", "/docs/install", "/blog/launch", "/signup"]
REFERRERS = ["", "https://www.google.com/", "https://news.ycombinator.com/item?id=1"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]


def visitor_traffic(seed: int, visitors: int, start: datetime) -> list[dict[str, Any]]:
    """Segment batch items: sessions of page views and custom events over about five days."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    for v in range(visitors):
        anon = f"anon-{seed}-{v}"
        agent = rng.choice(AGENTS)
        ts = start + timedelta(minutes=rng.randrange(0, 2 * 24 * 60))
        for _session in range(rng.randint(1, 3)):
            referrer = rng.choice(REFERRERS)
            for _ in range(rng.randint(1, 5)):
                page = rng.choice(PAGES)
                items.append(
                    {
                        "type": "page",
                        "anonymousId": anon,
                        "messageId": str(uuid.uuid4()),
                        "timestamp": ts.isoformat(),
                        "name": page,
                        "properties": {
                            "path": page,
                            "url": f"https://acme.test{page}",
                            "referrer": referrer,
                        },
                        "context": {
                            "userAgent": agent,
                            "page": {"path": page, "referrer": referrer},
                        },
                    }
                )
                ts += timedelta(seconds=rng.randint(5, 600))
            if rng.random() < 0.3:
                items.append(
                    {
                        "type": "track",
                        "anonymousId": anon,
                        "userId": f"user-{v}",
                        "messageId": str(uuid.uuid4()),
                        "event": "signup",
                        "timestamp": ts.isoformat(),
                        "properties": {"plan": rng.choice(["free", "pro"])},
                        "context": {"userAgent": agent},
                    }
                )
            ts += timedelta(hours=rng.randint(1, 20))
    return items


def batches(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def wait_ready(proc: ServiceProcess, port: int) -> None:
    await asyncio.to_thread(proc.wait_http, port)


async def post_batch(
    session: aiohttp.ClientSession, url: str, key: str, items: list[dict[str, Any]]
) -> int:
    """Send until accepted (a 503 during a restart is retried like an SDK would)."""
    for _ in range(100):
        async with session.post(
            f"{url}/v1/batch",
            json={"batch": items},
            headers={"Authorization": aiohttp.encode_basic_auth(key, "")},
        ) as resp:
            body = await resp.json()
            if resp.status == 200:
                assert body["rejected"] == [], body
                return int(body["accepted"])
            assert resp.status in (429, 503), (resp.status, body)
        await asyncio.sleep(0.2)
    raise AssertionError("ingest never accepted the batch")


async def test_kill_9_mid_stream_loses_nothing_and_counts_once(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
) -> None:
    ports = {name: free_port() for name in ("ingest", "sessionizer", "aggregator", "query")}
    base_env = service_env(database_url, nats_url, subjects.prefix, partitions=4)

    def spawn(name: str) -> ServiceProcess:
        extra = {
            "ingest": {"ingest_port": ports["ingest"]},
            "query": {"query_port": ports["query"]},
            "sessionizer": {"health_port": ports["sessionizer"], "checkpoint_interval_s": 1.0},
            "aggregator": {"health_port": ports["aggregator"], "fetch_batch": 20},
        }[name]
        env = dict(base_env, **{f"STRATA_{k.upper()}": str(v) for k, v in extra.items()})
        return ServiceProcess(name, env, tmp_path).start()

    procs = {name: spawn(name) for name in ports}
    try:
        await asyncio.gather(*(wait_ready(procs[n], ports[n]) for n in ports))
        ingest_url = f"http://127.0.0.1:{ports['ingest']}"
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=6)
        items = visitor_traffic(seed=11, visitors=150, start=start)
        chunks = list(batches(items, 25))
        accepted = 0
        async with aiohttp.ClientSession() as http:
            for i, chunk in enumerate(chunks):
                accepted += await post_batch(http, ingest_url, project.write_key, chunk)
                if i == len(chunks) // 3:
                    procs["sessionizer"].kill9()
                    procs["sessionizer"] = spawn("sessionizer")
                if i == len(chunks) // 2:
                    procs["aggregator"].kill9()
                    procs["aggregator"] = spawn("aggregator")
            # An SDK retrying a whole batch it already sent: counted once.
            accepted_again = await post_batch(http, ingest_url, project.write_key, chunks[0])
        assert accepted == len(items)
        assert accepted_again == len(chunks[0])

        conn = await asyncpg.connect(database_url)
        try:
            stored = 0
            for _ in range(600):
                stored = await conn.fetchval("SELECT count(*) FROM events")
                if stored >= len(items):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # anything extra (a double count) would land by now
            assert await conn.fetchval("SELECT count(*) FROM events") == len(items)
            ids = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM events")}
            assert ids == {item["messageId"] for item in items}
            assert await conn.fetchval("SELECT count(*) FROM events WHERE session_id IS NULL") == 0
            rows = await assert_aggregates_match_events(conn)
            pageviews = sum(1 for r in rows if r["name"] == "$pageview" and not r["is_bot"])
            sessions = await conn.fetchval("SELECT count(*) FROM sessions WHERE NOT is_bot")
        finally:
            await conn.close()

        # The query API serves the same numbers.
        query_url = f"http://127.0.0.1:{ports['query']}"
        params = {
            "metrics": "pageviews,sessions",
            "from": (start - timedelta(days=1)).date().isoformat(),
            "to": (datetime.now(UTC) + timedelta(days=1)).date().isoformat(),
        }
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{query_url}/api/v1/analytics/metrics",
                params=params,
                headers={"Authorization": f"Bearer {project.read_key}"},
            ) as resp,
        ):
            body = await resp.json()
            assert resp.status == 200, body
        assert body["totals"]["pageviews"] == pageviews
        assert body["totals"]["sessions"] == sessions
    finally:
        for proc in procs.values():
            proc.stop()
