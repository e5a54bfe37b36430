"""A bad event costs only itself, end to end: concurrent requests whose batches mix valid events
with ones storage cannot hold (coalesced by ingest into shared raw messages), through real
ingest, sessionizer and aggregator processes. Every valid event is stored exactly once; what
ingest can see is rejected there per item; what only the database refuses is dead-lettered
event by event with its reason, and stored by a replay once the cause is fixed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from libs.common.dead_letters import list_dead_letters, replay_dead_letters
from libs.common.schemas.events_v1 import EnrichedBatchV1
from libs.common.subjects import Subjects
from tests.support.project import TestProject
from tests.support.recompute import assert_aggregates_match_events
from tests.support.services import ServiceProcess, free_port, service_env

pytestmark = pytest.mark.infra

REQUESTS = 24
PER_REQUEST = 12

# What only the database can refuse: a policy trigger standing in for any storage-side fault
# (a constraint, a column limit) that ingest cannot foresee.
REFUSE_SOME = """
CREATE FUNCTION refuse_flagged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.event_id LIKE 'refused-%' THEN
    RAISE EXCEPTION 'event % refused by policy', NEW.event_id USING ERRCODE = '22023';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_flagged BEFORE INSERT ON event_rows
  FOR EACH ROW EXECUTE FUNCTION refuse_flagged();
"""


@pytest.fixture
def pipeline(
    tmp_path: Path, database_url: str, nats_url: str, subjects: Subjects
) -> Iterator[dict[str, Any]]:
    ports = {name: free_port() for name in ("ingest", "sessionizer", "aggregator")}
    base = service_env(database_url, nats_url, subjects.prefix, partitions=2)
    extra: dict[str, dict[str, Any]] = {
        # A longer linger, so concurrent requests surely share raw messages.
        "ingest": {"ingest_port": ports["ingest"], "publish_linger_s": 0.05},
        "sessionizer": {"health_port": ports["sessionizer"], "checkpoint_interval_s": 0.5},
        "aggregator": {
            "health_port": ports["aggregator"],
            "max_redeliveries": 2,
            "retry_backoff_max_s": 0.2,
            "fetch_timeout_s": 0.1,
        },
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
            proc.wait_http(ports[name], "/readyz", 60.0)
        yield {"ingest_url": f"http://127.0.0.1:{ports['ingest']}", "procs": procs}
    finally:
        for proc in procs.values():
            proc.stop()


def request_items(request: int) -> tuple[list[dict[str, Any]], set[str], set[str]]:
    """One request's batch: (items, ids that must be stored, ids only the database refuses).
    Several people, one of whom sends many events, and some of every kind of bad event."""
    items: list[dict[str, Any]] = []
    valid: set[str] = set()
    refused: set[str] = set()
    for n in range(PER_REQUEST):
        person = "heavy" if n % 2 else f"p{request}-{n % 3}"
        message_id = f"r{request}-{n}"
        item: dict[str, Any] = {
            "type": "track",
            "event": "clicked" if n % 3 else "viewed",
            "userId": person,
            "messageId": message_id,
            "properties": {"n": n},
            # Sent from a page, so every event belongs to a visit (server-side events need not).
            "context": {"page": {"path": f"/step/{n}"}},
        }
        if n == 4:
            item["properties"]["note"] = "a\u0000b"  # rejected at ingest
        elif n == 7 and request % 3 == 0:
            item["messageId"] = f"refused-{request}"
            refused.add(item["messageId"])
        else:
            valid.add(message_id)
        items.append(item)
    return items, valid, refused


async def send(http: aiohttp.ClientSession, url: str, key: str, items: list[dict[str, Any]]) -> Any:
    async with http.post(
        f"{url}/v1/batch",
        json={"batch": items},
        headers={"Authorization": aiohttp.encode_basic_auth(key, "")},
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def wait_for(what: str, check: Any, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_only_the_bad_events_are_lost_and_a_replay_after_the_fix_stores_them(
    pipeline: dict[str, Any],
    database_url: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    subjects: Subjects,
    project: TestProject,
) -> None:
    await pool.execute(REFUSE_SOME)
    batches = [request_items(r) for r in range(REQUESTS)]
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(
            *(send(http, pipeline["ingest_url"], project.write_key, b[0]) for b in batches)
        )
    valid = set().union(*(b[1] for b in batches))
    refused = set().union(*(b[2] for b in batches))
    for answer in answers:
        assert answer["accepted"] == PER_REQUEST - 1
        [rejection] = answer["rejected"]
        assert rejection["error"].startswith("properties.note: contains a NUL character")

    async def stored() -> set[str]:
        return {r["event_id"] for r in await pool.fetch("SELECT event_id FROM events")}

    async def dead_letters() -> list[Any]:
        return await list_dead_letters(js, subjects, limit=1000)

    await wait_for("every valid event stored", lambda: _equals(stored(), valid))
    await wait_for(
        "the refused events dead-lettered", lambda: _count_is(dead_letters(), len(refused))
    )
    letters = await dead_letters()
    assert {letter.event_id for letter in letters} == refused
    for letter in letters:
        assert letter.service == "aggregator"
        assert letter.reason.startswith(f"event {letter.event_id}: InvalidParameterValueError")
        assert f"event {letter.event_id} refused by policy" in letter.reason
        alone = msgspec.json.decode(
            (await js.get_msg(subjects.dlq_stream, letter.seq)).data, type=EnrichedBatchV1
        )
        assert [e.event_id for e in alone.events] == [letter.event_id]
    assert await pool.fetchval("SELECT count(*) FROM events") == len(valid)

    # The cause fixed, a replay stores them, once.
    await pool.execute("DROP TRIGGER refuse_flagged ON event_rows")
    assert await replay_dead_letters(js, subjects) == len(refused)
    await wait_for("the replayed events stored", lambda: _equals(stored(), valid | refused))
    await asyncio.sleep(0.5)
    assert await pool.fetchval("SELECT count(*) FROM events") == len(valid | refused)
    assert await dead_letters() == []
    async with pool.acquire() as conn:
        await assert_aggregates_match_events(conn)
    assert await pool.fetchval("SELECT count(*) FROM events WHERE session_id IS NULL") == 0


async def _equals(found: Any, expected: Any) -> bool:
    return bool(await found == expected)


async def _count_is(found: Any, count: int) -> bool:
    return len(await found) == count
