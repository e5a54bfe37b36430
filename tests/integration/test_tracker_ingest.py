"""Ingest's side of the browser tracker: GET /t.js (caching, versions, gzip) and the cookieless
id it derives for tracker events sent without any id."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import asyncpg
import pytest
from nats.js import JetStreamContext

from libs.common.subjects import Subjects
from services.ingest.cookieless import CookielessIds, DailySalts, salts_bucket
from services.ingest.tracker.script import TrackerScript
from tests.support.project import TestProject
from tests.support.tracker import RunningIngest, start_ingest

pytestmark = pytest.mark.infra

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
TRACKER_CONTEXT = {"library": {"name": "strata.js", "version": "1"}}


@pytest.fixture
async def ingest(
    nats_url: str, js: JetStreamContext, subjects: Subjects, pool: asyncpg.Pool
) -> AsyncIterator[RunningIngest]:
    running = await start_ingest(nats_url, js, subjects, pool)
    try:
        yield running
    finally:
        await running.close()
        try:
            await js.delete_key_value(salts_bucket(subjects))
        except Exception:
            pass


async def test_t_js_is_gzipped_cacheable_and_versioned(ingest: RunningIngest) -> None:
    script = TrackerScript.packaged()
    plain = await ingest.client.get("/t.js", headers={"Accept-Encoding": "identity"})
    assert plain.status == 200
    assert plain.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert "Content-Encoding" not in plain.headers
    assert await plain.read() == script.body
    assert plain.headers["Cache-Control"] == "public, max-age=3600"
    assert plain.headers["Vary"] == "Accept-Encoding"

    zipped = await ingest.client.get(
        "/t.js", headers={"Accept-Encoding": "gzip, br"}, auto_decompress=False
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await zipped.read()) == script.body
    assert zipped.headers["ETag"] != plain.headers["ETag"]

    versioned = await ingest.client.get(script.versioned_path)
    assert versioned.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    stale = await ingest.client.get("/t.js?v=0123456789ab")
    assert stale.headers["Cache-Control"] == "public, max-age=3600"
    assert await stale.read() == script.body

    revalidated = await ingest.client.get(
        "/t.js",
        headers={"If-None-Match": zipped.headers["ETag"], "Accept-Encoding": "gzip"},
    )
    assert revalidated.status == 304
    assert await revalidated.read() == b""


async def _post_batch(
    ingest: RunningIngest, project: TestProject, items: list[dict[str, object]], **extra: object
) -> tuple[int, dict[str, object]]:
    body = {"writeKey": project.write_key, "batch": items, **extra}
    # The tracker posts text/plain (a CORS-simple request) from a page on another origin.
    response = await ingest.client.post(
        "/v1/batch",
        data=json.dumps(body),
        headers={
            "Content-Type": "text/plain;charset=UTF-8",
            "Origin": "https://shop.example.com",
            "User-Agent": FIREFOX,
        },
    )
    return response.status, await response.json()


async def test_tracker_events_without_ids_get_todays_cookieless_id(
    ingest: RunningIngest, project: TestProject
) -> None:
    page = {"url": "https://shop.example.com/pricing", "path": "/pricing", "title": "Pricing"}
    items: list[dict[str, object]] = [
        {"type": "page", "messageId": "m-page", "context": {"page": page}},
        {"type": "track", "event": "Signup Click", "messageId": "m-click"},
    ]
    status, answer = await _post_batch(ingest, project, items, context=TRACKER_CONTEXT)
    assert (status, answer["accepted"]) == (200, 2)
    status, _ = await _post_batch(
        ingest,
        project,
        [{"type": "track", "event": "Later", "messageId": "m-later"}],
        context=TRACKER_CONTEXT,
    )
    assert status == 200

    events = await ingest.wait_for_events(lambda found: len(found) == 3)
    [visitor] = {event.distinct_id for event in events}
    assert visitor.startswith("cl-")
    assert all(event.anonymous_id == visitor and event.user_id is None for event in events)
    assert all(event.properties["$cookieless"] is True for event in events)
    # The same id as the salts store gives for this visitor today, from any replica.
    other_replica = CookielessIds(DailySalts(ingest.js, ingest.subjects))
    assert visitor == await other_replica.visitor_id("acme", "127.0.0.1", FIREFOX)


async def test_tracker_events_with_ids_keep_them(
    ingest: RunningIngest, project: TestProject
) -> None:
    items: list[dict[str, object]] = [
        {"type": "track", "event": "Saved", "messageId": "m-1", "anonymousId": "a-1"},
        {"type": "identify", "messageId": "m-2", "userId": "u-1", "traits": {"plan": "pro"}},
    ]
    status, _ = await _post_batch(ingest, project, items, context=TRACKER_CONTEXT)
    assert status == 200
    events = await ingest.wait_for_events(lambda found: len(found) == 2)
    by_id = {event.event_id: event for event in events}
    assert by_id["m-1"].distinct_id == "a-1"
    assert "$cookieless" not in by_id["m-1"].properties
    # Identified before consent: the user id, on today's cookieless device key.
    identified = by_id["m-2"]
    assert identified.user_id == "u-1" and identified.person_key == "u-1"
    assert identified.distinct_id.startswith("cl-")
    assert identified.anonymous_id == identified.distinct_id


async def test_other_sdks_still_need_an_id(ingest: RunningIngest, project: TestProject) -> None:
    items: list[dict[str, object]] = [{"type": "track", "event": "Saved", "messageId": "m-1"}]
    status, answer = await _post_batch(
        ingest, project, items, context={"library": {"name": "analytics.js"}}
    )
    assert status == 400
    assert answer["error"] == "userId or anonymousId is required"
    status, answer = await _post_batch(ingest, project, items)
    assert (status, answer["error"]) == (400, "userId or anonymousId is required")
    assert await ingest.raw_events() == []


async def test_one_salt_per_day_shared_by_replicas_and_kept_only_about_a_day(
    js: JetStreamContext, subjects: Subjects
) -> None:
    first, second = DailySalts(js, subjects), DailySalts(js, subjects)
    try:
        day = datetime.now(UTC).date()
        salt = await first.salt_for(day)
        assert await second.salt_for(day) == salt
        assert len(salt) == 32
        assert await first.salt_for(date(2030, 1, 2)) != salt
        status = await (await js.key_value(salts_bucket(subjects))).status()
        assert status.ttl is not None and status.ttl <= 25 * 3600
    finally:
        await js.delete_key_value(salts_bucket(subjects))
