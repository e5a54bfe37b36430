"""The ingest gateway in-process (aiohttp test server) against real NATS JetStream and
PostgreSQL: every route's answers to good and bad input, and exactly what reached the raw
stream."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.common import keys
from libs.common.nats_io import connect
from libs.common.schemas.events_v1 import EventV1, RawBatchV1, raw_batch_decoder
from libs.common.settings import IngestSettings
from libs.common.subjects import Subjects, partition_of
from services.ingest.app import INGEST_API, IngestApi, IngestDeps, build_app
from tests.support.project import TestProject

pytestmark = pytest.mark.infra

CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SEGMENT_ROUTES = [
    "/v1/track",
    "/v1/page",
    "/v1/screen",
    "/v1/identify",
    "/v1/group",
    "/v1/alias",
    "/v1/batch",
]
ALL_ROUTES = [*SEGMENT_ROUTES, "/api/v1/analytics/events", "/api/v1/analytics/events/batch"]


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def now_iso(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def valid_body(route: str) -> dict[str, Any]:
    """A minimal valid payload for each route."""
    one: dict[str, Any] = {"userId": "u1", "messageId": str(uuid.uuid4())}
    if route == "/v1/track":
        one["event"] = "Signed Up"
    elif route == "/v1/group":
        one["groupId"] = "g1"
    elif route == "/v1/alias":
        one["previousId"] = "anon-1"
    elif route == "/v1/batch":
        return {"batch": [{**one, "type": "track", "event": "Signed Up"}]}
    elif route == "/api/v1/analytics/events":
        return {"eventType": "click", "eventId": str(uuid.uuid4()), "userId": "u1"}
    elif route == "/api/v1/analytics/events/batch":
        return {"events": [{"eventType": "click", "eventId": str(uuid.uuid4()), "userId": "u1"}]}
    return one


@dataclass
class Ingest:
    client: TestClient[Any, Any]
    js: JetStreamContext
    subjects: Subjects
    project: TestProject
    settings: IngestSettings
    registry: CollectorRegistry
    api: IngestApi

    async def post(
        self, path: str, body: Any, key: str | None = None, **kwargs: Any
    ) -> ClientResponse:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.update(basic(key))
        data = (
            body
            if isinstance(body, bytes | str) or hasattr(body, "__aiter__")
            else (json.dumps(body))
        )
        return await self.client.post(path, data=data, headers=headers, **kwargs)

    async def raw_messages(self) -> list[tuple[str, dict[str, str], RawBatchV1]]:
        """Every message on the raw stream: (subject, headers, batch)."""
        info = await self.js.stream_info(self.subjects.raw_stream)
        found: list[tuple[str, dict[str, str], RawBatchV1]] = []
        if info.state.messages == 0:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(self.subjects.raw_stream, seq)
            assert msg.subject is not None and msg.data is not None
            headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
            found.append((msg.subject, headers, raw_batch_decoder.decode(msg.data)))
        return found

    async def raw_events(self) -> list[EventV1]:
        return [event for _, _, batch in await self.raw_messages() for event in batch.events]

    async def message_count(self) -> int:
        info = await self.js.stream_info(self.subjects.raw_stream)
        return int(info.state.messages)


MakeIngest = Callable[..., Awaitable[Ingest]]


@pytest.fixture
async def make_ingest(
    nats_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    pool: asyncpg.Pool,
    project: TestProject,
) -> AsyncIterator[MakeIngest]:
    """Starts an ingest app with settings overrides; `publish_prefix` publishes elsewhere."""
    started: list[tuple[TestClient[Any, Any], NATS]] = []

    async def start(publish_prefix: str | None = None, **overrides: Any) -> Ingest:
        settings = IngestSettings(
            nats_prefix=publish_prefix or subjects.prefix,
            partitions=4,
            key_cache_ttl_s=overrides.pop("key_cache_ttl_s", 0.3),
            publish_timeout_s=overrides.pop("publish_timeout_s", 2.0),
            **overrides,
        )
        nc = await connect(nats_url, "ingest-test")
        registry = CollectorRegistry()
        deps = IngestDeps(nc, pool, Subjects(settings.nats_prefix), registry)
        app = build_app(settings, deps)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        started.append((client, nc))
        return Ingest(client, js, subjects, project, settings, registry, app[INGEST_API])

    yield start
    for client, nc in started:
        await client.close()
        await nc.close()


@pytest.fixture
async def ingest(make_ingest: MakeIngest) -> Ingest:
    return await make_ingest()


# -- happy paths and mapping ------------------------------------------------------------------


async def test_own_domains_are_navigation_and_listed_referrer_spam_is_bot_traffic(
    make_ingest: MakeIngest, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    spam = tmp_path / "spammers.txt"
    spam.write_text("# Matomo's format\nbest-seo-offer.example\nfree-traffic.test\n")
    await pool.execute("UPDATE projects SET own_domains = '{docs.acme.test}' WHERE id = 'acme'")
    ingest = await make_ingest(referrer_spam_list=str(spam))

    def page(message_id: str, referrer: str) -> dict[str, Any]:
        return {
            "type": "page",
            "anonymousId": "anon-1",
            "messageId": message_id,
            "context": {"page": {"url": "https://shop.example/pricing", "referrer": referrer}},
        }

    body = {
        "batch": [
            page("own", "https://api.docs.acme.test/guide"),  # a subdomain of an own domain
            page("sub", "https://blog.shop.example/post"),  # the page's own site
            page("spam", "https://www.best-seo-offer.example/"),
            page("other", "https://news.example/story"),
        ]
    }
    response = await ingest.post("/v1/batch", body, ingest.project.write_key)
    assert response.status == 200, await response.text()
    events = {e.event_id: e for e in await ingest.raw_events()}
    for internal in ("own", "sub"):
        assert (events[internal].referrer_domain, events[internal].channel) == (None, None)
        assert not events[internal].is_bot
    assert events["spam"].is_bot
    other = events["other"]
    assert (other.referrer_domain, other.channel) == ("news.example", "referral")
    assert not other.is_bot


async def test_track_is_acknowledged_only_once_on_the_stream_with_enrichment(
    ingest: Ingest,
) -> None:
    body = {
        "userId": "u-42",
        "anonymousId": "anon-42",
        "event": "Signed Up",
        "messageId": "m-1",
        "properties": {"plan": "pro"},
        "context": {
            "userAgent": CHROME_MAC,
            "ip": "203.0.113.9",
            "locale": "en-GB",
            "page": {
                "url": "https://shop.example.com/pricing?utm_source=google&utm_medium=cpc"
                "&utm_campaign=spring",
                "referrer": "https://www.google.com/search?q=shop",
                "title": "Pricing",
            },
        },
    }
    response = await ingest.post("/v1/track", body, ingest.project.write_key)
    assert response.status == 200
    assert await response.json() == {"success": True, "accepted": 1, "rejected": []}
    assert response.headers["Access-Control-Allow-Origin"] == "*"

    [(subject, headers, batch)] = await ingest.raw_messages()
    [event] = batch.events
    assert subject == ingest.subjects.raw(partition_of("anon-42", 4))
    assert headers["Nats-Msg-Id"] == batch.batch_id
    assert event.event_id == "m-1"
    assert event.project_id == "acme"
    assert (event.type, event.name) == ("track", "Signed Up")
    assert (event.distinct_id, event.user_id, event.anonymous_id) == ("anon-42", "u-42", "anon-42")
    assert event.properties == {"plan": "pro", "$search_engine": "Google"}
    assert (event.path, event.title, event.referrer_domain) == ("/pricing", "Pricing", "google.com")
    assert (event.utm_source, event.utm_medium, event.utm_campaign) == ("google", "cpc", "spring")
    assert event.channel == "paid_search"
    assert (event.browser, event.os, event.device_type) == ("Chrome", "Mac OS X", "desktop")
    assert event.locale == "en-GB"
    assert event.is_bot is False
    assert event.ip is None  # the IP is never put on the event
    assert b"203.0.113.9" not in msgspec.json.encode(batch)


async def test_every_segment_call_maps_to_its_canonical_event(ingest: Ingest) -> None:
    key = ingest.project.write_key
    calls = {
        "/v1/track": {"anonymousId": "a1", "event": "Clicked", "properties": {"x": 1}},
        "/v1/page": {
            "anonymousId": "a1",
            "name": "Home",
            "properties": {"path": "/", "url": "https://acme.test/", "title": "Acme"},
        },
        "/v1/screen": {"anonymousId": "a1", "name": "Settings"},
        "/v1/identify": {"anonymousId": "a1", "userId": "u1", "traits": {"plan": "pro"}},
        "/v1/group": {"userId": "u1", "groupId": "org-9", "traits": {"size": 10}},
        "/v1/alias": {"userId": "u1", "previousId": "a1"},
    }
    for path, body in calls.items():
        response = await ingest.post(path, body, key)
        assert response.status == 200, (path, await response.text())
    events = {event.type: event for event in await ingest.raw_events()}
    assert events["track"].name == "Clicked"
    assert events["page"].name == "$pageview"
    assert (events["page"].path, events["page"].title) == ("/", "Acme")
    assert events["page"].properties["name"] == "Home"
    assert events["page"].channel == "direct"
    assert events["screen"].name == "$screen"
    assert events["screen"].properties == {"name": "Settings"}
    assert events["identify"].name == "$identify"
    assert events["identify"].traits == {"plan": "pro"}
    assert (events["identify"].distinct_id, events["identify"].user_id) == ("a1", "u1")
    assert (events["group"].name, events["group"].group_id) == ("$group", "org-9")
    assert events["group"].distinct_id == "u1"
    assert (events["alias"].name, events["alias"].previous_id) == ("$alias", "a1")
    assert events["alias"].user_id == "u1"


async def test_batch_with_types_context_and_sent_at_correction(ingest: Ingest) -> None:
    # The device clock is 1 hour fast: its sentAt and timestamps are both skewed by +1 h.
    skew = timedelta(hours=1)
    device_now = datetime.now(UTC) + skew
    body = {
        "sentAt": device_now.isoformat(),
        "context": {"userAgent": GOOGLEBOT},
        "batch": [
            {
                "type": "track",
                "event": "Viewed",
                "anonymousId": "a1",
                "messageId": "b1",
                "timestamp": (device_now - timedelta(minutes=10)).isoformat(),
            },
            {"type": "page", "anonymousId": "a1", "messageId": "b2"},
        ],
    }
    before = datetime.now(UTC)
    response = await ingest.post("/v1/batch", body, ingest.project.write_key)
    after = datetime.now(UTC)
    assert response.status == 200
    assert (await response.json())["accepted"] == 2
    events = {event.event_id: event for event in await ingest.raw_events()}
    corrected = events["b1"].ts
    assert before - timedelta(minutes=10, seconds=1) <= corrected <= after - timedelta(minutes=10)
    assert events["b2"].ts == events["b2"].received_at
    # The batch-level context reached every item: both are flagged as bot traffic.
    assert events["b1"].is_bot and events["b2"].is_bot


async def test_write_key_in_the_body_and_as_bearer_token(ingest: Ingest) -> None:
    key = ingest.project.write_key
    in_body = await ingest.post("/v1/track", {"writeKey": key, "userId": "u", "event": "E"})
    batch_body = await ingest.post(
        "/v1/batch", {"writeKey": key, "batch": [{"type": "track", "userId": "u", "event": "E"}]}
    )
    bearer = await ingest.post(
        "/api/v1/analytics/events",
        {"eventType": "click", "userId": "u"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert [in_body.status, batch_body.status, bearer.status] == [200, 200, 200]
    assert len(await ingest.raw_events()) == 3


async def test_message_id_is_generated_when_absent(ingest: Ingest) -> None:
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"}] * 2}
    assert (await ingest.post("/v1/batch", body, ingest.project.write_key)).status == 200
    ids = [event.event_id for event in await ingest.raw_events()]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(len(i) == 36 for i in ids)


async def test_segment_python_sdk_is_accepted(ingest: Ingest) -> None:
    import segment.analytics as analytics

    server = ingest.client.server
    client = analytics.Client(
        write_key=ingest.project.write_key,
        host=f"http://{server.host}:{server.port}",
        sync_mode=True,
        gzip=True,
    )
    await asyncio.to_thread(client.track, "user-7", "Order Completed", {"revenue": 10.5})
    await asyncio.to_thread(client.identify, "user-7", {"email": "u7@example.com"})
    await asyncio.to_thread(client.page, "user-7", "Docs", "Intro", {"path": "/docs"})
    events = await ingest.raw_events()
    assert sorted(e.name for e in events) == ["$identify", "$pageview", "Order Completed"]
    order = next(e for e in events if e.name == "Order Completed")
    assert order.properties == {"revenue": 10.5}
    assert order.user_id == order.distinct_id == "user-7"
    assert abs(order.ts - order.received_at) < timedelta(seconds=5)


async def test_gzip_request_bodies_are_decompressed(ingest: Ingest) -> None:
    body = gzip.compress(json.dumps({"userId": "u", "event": "Zipped"}).encode())
    response = await ingest.post(
        "/v1/track", body, ingest.project.write_key, headers={"Content-Encoding": "gzip"}
    )
    assert response.status == 200
    assert [e.name for e in await ingest.raw_events()] == ["Zipped"]


# -- auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ALL_ROUTES)
async def test_missing_or_unknown_key_is_401_and_nothing_is_published(
    ingest: Ingest, route: str
) -> None:
    missing = await ingest.post(route, valid_body(route))
    assert missing.status == 401
    assert (await missing.json())["error"].startswith("missing write key: send it as the HTTP")
    unknown = await ingest.post(route, valid_body(route), "sk_w_not-a-key")
    assert unknown.status == 401
    assert await unknown.json() == {"success": False, "error": "invalid write key"}
    assert await ingest.message_count() == 0


async def test_read_and_admin_keys_are_403(ingest: Ingest) -> None:
    for key, role in ((ingest.project.read_key, "a read"), (ingest.project.admin_key, "an admin")):
        response = await ingest.post("/v1/track", valid_body("/v1/track"), key)
        assert response.status == 403
        assert (await response.json())["error"] == (
            f"{role} key cannot send events; use the project's write key"
        )
    assert await ingest.message_count() == 0


async def test_a_revoked_key_stops_working_within_the_cache_ttl(
    ingest: Ingest, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        api_key, secret = await keys.create_key(conn, "acme", "write", "to revoke")
    assert (await ingest.post("/v1/track", valid_body("/v1/track"), secret)).status == 200
    async with pool.acquire() as conn:
        assert await keys.revoke_key(conn, api_key.id)
    await asyncio.sleep(ingest.settings.key_cache_ttl_s + 0.1)
    response = await ingest.post("/v1/track", valid_body("/v1/track"), secret)
    assert response.status == 401
    assert await ingest.message_count() == 1


# -- malformed input, wrong types, limits --------------------------------------------------


@pytest.mark.parametrize("route", ALL_ROUTES)
async def test_malformed_json_is_400_naming_the_problem(ingest: Ingest, route: str) -> None:
    response = await ingest.post(route, b'{"userId": "u1", "event": ', ingest.project.write_key)
    assert response.status == 400
    assert await response.json() == {
        "success": False,
        "error": "malformed JSON: Input data was truncated",
    }
    not_json = await ingest.post(route, b"userId=u1", ingest.project.write_key)
    assert not_json.status == 400
    assert (await not_json.json())["error"].startswith("malformed JSON: JSON is malformed")
    empty = await ingest.post(route, b"", ingest.project.write_key)
    assert (empty.status, (await empty.json())["error"]) == (
        400,
        "request body is empty: expected JSON",
    )
    assert await ingest.message_count() == 0


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"userId": "u1", "event": 42}, "event: expected `str`, got `int`"),
        (
            {"userId": "u1", "event": "E", "properties": ["a"]},
            "properties: expected `object`, got `array`",
        ),
        ({"userId": True, "event": "E"}, "userId: expected `int | str`, got `bool`"),
        (
            {"userId": "u1", "event": "E", "context": {"page": {"url": 5}}},
            "context.page.url: expected `str`, got `int`",
        ),
        (
            {"userId": "u1", "event": "E", "timestamp": "yesterday"},
            "timestamp: invalid RFC3339 encoded datetime (expected an ISO-8601 time such as"
            " 2024-05-01T12:00:00.000Z)",
        ),
        ({"event": "E"}, "userId or anonymousId is required"),
        ({"userId": "", "anonymousId": "  ", "event": "E"}, "userId or anonymousId is required"),
        ({"userId": "u1"}, "event is required"),
        ({"userId": "u1", "event": "x" * 201}, "event: is 201 characters; the limit is 200"),
        (
            {"userId": "u1", "event": "E", "properties": {"a": {"b": {"c": {"d": {"e": {}}}}}}},
            "properties: nested deeper than 5 levels",
        ),
        (
            {"userId": "u1", "event": "E", "properties": {f"k{i}": i for i in range(201)}},
            "properties: has 201 keys; the limit is 200 (nested keys count)",
        ),
        ([1, 2], "an event must be a JSON object, not `array`"),
    ],
)
async def test_an_invalid_track_call_is_400_naming_the_field(
    ingest: Ingest, body: Any, error: str
) -> None:
    response = await ingest.post("/v1/track", body, ingest.project.write_key)
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == error
    assert await ingest.message_count() == 0


@pytest.mark.parametrize(
    ("route", "body", "error"),
    [
        ("/v1/alias", {"userId": "u1"}, "previousId is required for alias"),
        ("/v1/alias", {"anonymousId": "a1", "previousId": "a0"}, "userId is required for alias"),
        ("/v1/group", {"userId": "u1"}, "groupId is required for group"),
        ("/v1/page", {"name": "Home"}, "userId or anonymousId is required"),
        ("/v1/identify", {"userId": "u1", "traits": "vip"}, "traits: expected `object`, got `str`"),
        ("/v1/batch", {"batch": {"type": "track"}}, "batch: expected `array`, got `object`"),
        ("/v1/batch", {"events": []}, "batch is required: an array of events"),
        ("/v1/batch", {"batch": []}, "the batch holds no events"),
        ("/api/v1/analytics/events", {"userId": "u1"}, "eventType is required"),
        (
            "/api/v1/analytics/events",
            {"eventType": "click", "userId": "u1", "timestamp": "x"},
            "timestamp: invalid RFC3339 encoded datetime (expected Unix time in milliseconds or"
            " an ISO-8601 time such as 2024-05-01T12:00:00.000Z)",
        ),
        ("/api/v1/analytics/events/batch", {"evts": []}, "events is required: an array of events"),
    ],
)
async def test_route_specific_requirements(
    ingest: Ingest, route: str, body: Any, error: str
) -> None:
    response = await ingest.post(route, body, ingest.project.write_key)
    assert response.status == 400
    assert (await response.json())["error"] == error
    assert await ingest.message_count() == 0


@pytest.mark.parametrize("route", ALL_ROUTES)
async def test_a_body_over_500_kb_is_413(ingest: Ingest, route: str) -> None:
    big = json.dumps({**valid_body(route), "pad": "x" * (500 * 1024)}).encode()
    response = await ingest.post(route, big, ingest.project.write_key)
    assert response.status == 413
    assert (await response.json())["error"] == (
        f"request body is {len(big)} bytes; the limit is 512000 bytes (500 KB)"
    )

    # Without Content-Length (chunked), the bytes actually read are checked.
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    chunked = await ingest.post(route, chunks(), ingest.project.write_key)
    assert chunked.status == 413
    assert (await chunked.json())["error"] == (
        "request body is too large; the limit is 512000 bytes (500 KB)"
    )
    assert await ingest.message_count() == 0


async def test_an_event_over_32_kb_is_rejected_by_itself(ingest: Ingest) -> None:
    big = {
        "type": "track",
        "userId": "u",
        "event": "Big",
        "messageId": "big",
        "properties": {"blob": "x" * 33_000},
    }
    small = {"type": "track", "userId": "u", "event": "Small", "messageId": "small"}
    response = await ingest.post("/v1/batch", {"batch": [big, small]}, ingest.project.write_key)
    assert response.status == 200
    payload = await response.json()
    assert payload["accepted"] == 1
    [rejection] = payload["rejected"]
    assert rejection["index"] == 0 and rejection["messageId"] == "big"
    assert rejection["error"].endswith("bytes; the limit is 32768 bytes per event")
    assert [e.event_id for e in await ingest.raw_events()] == ["small"]

    single = await ingest.post("/v1/track", big, ingest.project.write_key)
    assert single.status == 400
    assert (await single.json())["error"].startswith("event is ")


async def test_a_batch_larger_than_32_kb_rejects_only_its_event_over_32_kb(ingest: Ingest) -> None:
    """Many small events make a body over the per-event limit: read in one pass, they are all
    accepted, and one event over the limit among them is still the only one rejected."""
    small = [
        {
            "type": "track",
            "userId": "u",
            "event": "Small",
            "messageId": f"s-{i}",
            "properties": {"pad": "y" * 400},
        }
        for i in range(100)
    ]
    whole = await ingest.post("/v1/batch", {"batch": small}, ingest.project.write_key)
    assert whole.status == 200
    assert (await whole.json()) == {"success": True, "accepted": 100, "rejected": []}
    just_over = {
        "type": "track",
        "userId": "u",
        "event": "Big",
        "messageId": "big",
        "properties": {"blob": "x" * 32_700},
    }
    response = await ingest.post(
        "/v1/batch", {"batch": [*small[:50], just_over, *small[50:]]}, ingest.project.write_key
    )
    assert response.status == 200
    payload = await response.json()
    assert payload["accepted"] == 100
    [rejection] = payload["rejected"]
    assert rejection["index"] == 50 and rejection["messageId"] == "big"
    assert rejection["error"].endswith("bytes; the limit is 32768 bytes per event")


async def test_future_timestamps_are_rejected_and_backfills_accepted(ingest: Ingest) -> None:
    key = ingest.project.write_key
    future = await ingest.post(
        "/v1/track",
        {"userId": "u", "event": "E", "timestamp": now_iso(timedelta(hours=25))},
        key,
    )
    assert future.status == 400
    error = (await future.json())["error"]
    assert error.startswith("timestamp: ") and "is more than 24 h in the future" in error
    # A device whose clock is 30 h fast is corrected by sentAt, so its event is fine.
    fast_clock = await ingest.post(
        "/v1/track",
        {
            "userId": "u",
            "event": "Skewed",
            "timestamp": now_iso(timedelta(hours=30)),
            "sentAt": now_iso(timedelta(hours=30)),
        },
        key,
    )
    assert fast_clock.status == 200
    backfill = await ingest.post(
        "/v1/track", {"userId": "u", "event": "Old", "timestamp": "2021-03-04T05:06:07Z"}, key
    )
    assert backfill.status == 200
    events = {e.name: e for e in await ingest.raw_events()}
    assert set(events) == {"Skewed", "Old"}
    assert events["Old"].ts == datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert abs(events["Skewed"].ts - events["Skewed"].received_at) < timedelta(seconds=5)

    api_future = await ingest.post(
        "/api/v1/analytics/events",
        {
            "eventType": "x",
            "userId": "u",
            "timestamp": (datetime.now(UTC) + timedelta(days=2)).timestamp() * 1000,
        },
        key,
    )
    assert api_future.status == 400
    assert "in the future" in (await api_future.json())["error"]
    assert await ingest.message_count() == 2


# -- partial batches, idempotency ------------------------------------------------------------


async def test_a_partial_batch_accepts_the_good_items_and_lists_the_bad(ingest: Ingest) -> None:
    batch = [
        {"type": "track", "userId": "u1", "event": "Good", "messageId": "g1"},
        {"type": "track", "event": "No id", "messageId": "bad-1"},
        {"type": "launch", "userId": "u1", "messageId": "bad-2"},
        {"type": "page", "anonymousId": "a1", "messageId": "g2"},
        "not an object",
        {"type": "track", "userId": "u1", "event": 7, "messageId": "bad-3"},
        {"userId": "u1", "event": "typeless"},
    ]
    response = await ingest.post("/v1/batch", {"batch": batch}, ingest.project.write_key)
    assert response.status == 200
    assert await response.json() == {
        "success": True,
        "accepted": 2,
        "rejected": [
            {"index": 1, "messageId": "bad-1", "error": "userId or anonymousId is required"},
            {
                "index": 2,
                "messageId": "bad-2",
                "error": "type: 'launch' is not one of track, page, screen, identify, group, alias",
            },
            {"index": 4, "messageId": None, "error": "an event must be a JSON object, not `str`"},
            {"index": 5, "messageId": "bad-3", "error": "event: expected `str`, got `int`"},
            {
                "index": 6,
                "messageId": None,
                "error": "type is required (one of track, page, screen, identify, group, alias)",
            },
        ],
    }
    assert sorted(e.event_id for e in await ingest.raw_events()) == ["g1", "g2"]


async def test_a_batch_with_only_bad_items_is_400_and_publishes_nothing(ingest: Ingest) -> None:
    batch = [{"type": "track", "event": "E", "messageId": f"m{i}"} for i in range(3)]
    response = await ingest.post("/v1/batch", {"batch": batch}, ingest.project.write_key)
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == "all 3 events were rejected"
    assert [r["index"] for r in payload["rejected"]] == [0, 1, 2]
    assert await ingest.message_count() == 0


async def test_the_same_batch_sent_twice_is_stored_once(ingest: Ingest) -> None:
    batch = {
        "batch": [
            {"type": "track", "anonymousId": f"a{i}", "event": "E", "messageId": f"m{i}"}
            for i in range(20)
        ]
    }
    first = await ingest.post("/v1/batch", batch, ingest.project.write_key)
    stored = await ingest.message_count()
    # The same events in another order are the same messages to JetStream.
    batch["batch"].reverse()
    second = await ingest.post("/v1/batch", batch, ingest.project.write_key)
    assert (first.status, second.status) == (200, 200)
    assert (await second.json())["accepted"] == 20
    assert await ingest.message_count() == stored
    events = await ingest.raw_events()
    assert sorted(e.event_id for e in events) == sorted(f"m{i}" for i in range(20))


async def test_partitions_split_one_message_each_and_keep_a_person_together(
    ingest: Ingest,
) -> None:
    people = [f"person-{i}" for i in range(12)]
    batch = [
        {
            "type": "track",
            "anonymousId": person,
            "event": f"step-{step}",
            "messageId": f"{person}-{step}",
        }
        for step in range(3)
        for person in people
    ]
    response = await ingest.post("/v1/batch", {"batch": batch}, ingest.project.write_key)
    assert response.status == 200
    messages = await ingest.raw_messages()
    partitions = {partition_of(person, 4) for person in people}
    assert len(messages) == len(partitions)  # one message per partition the request touched
    for subject, headers, raw in messages:
        assert subject == ingest.subjects.raw(raw.partition)
        assert headers["Nats-Msg-Id"] == raw.batch_id
        assert {partition_of(e.distinct_id, 4) for e in raw.events} == {raw.partition}
        by_person: dict[str, list[str]] = {}
        for event in raw.events:
            by_person.setdefault(event.distinct_id, []).append(event.name)
        # Every event of a person is in this one message, in the order sent.
        for steps in by_person.values():
            assert steps == ["step-0", "step-1", "step-2"]
    assert sum(len(raw.events) for _, _, raw in messages) == 36


# -- rate limits and back-pressure --------------------------------------------------------------


async def test_past_the_rate_limit_requests_get_429_with_retry_after(
    make_ingest: MakeIngest,
) -> None:
    ingest = await make_ingest(rate_limit_per_s=5.0, rate_limit_burst=10.0)
    key = ingest.project.write_key
    ten = {"batch": [{"type": "track", "userId": "u", "event": "E"}] * 10}
    assert (await ingest.post("/v1/batch", ten, key)).status == 200
    limited = await ingest.post("/v1/batch", ten, key)
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "2"  # 10 tokens at 5/s
    assert limited.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert (await limited.json())["error"] == (
        "rate limit of 5 events/s for this write key exceeded; retry after 2 s"
    )
    assert len(await ingest.raw_events()) == 10


async def test_a_projects_own_rate_limit_overrides_the_default(
    make_ingest: MakeIngest, pool: asyncpg.Pool
) -> None:
    await pool.execute("UPDATE projects SET rate_limit_per_s = 1 WHERE id = 'acme'")
    ingest = await make_ingest()  # default 5000/s, burst 4 s of traffic
    key = ingest.project.write_key
    four = {"batch": [{"type": "track", "userId": "u", "event": "E"}] * 4}
    assert (await ingest.post("/v1/batch", four, key)).status == 200
    limited = await ingest.post("/v1/track", valid_body("/v1/track"), key)
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "1"


async def test_503_with_retry_after_when_jetstream_cannot_ack(make_ingest: MakeIngest) -> None:
    # A prefix without streams: nothing can acknowledge the publish.
    ingest = await make_ingest(publish_prefix=f"nostream{uuid.uuid4().hex[:8]}")
    response = await ingest.post("/v1/track", valid_body("/v1/track"), ingest.project.write_key)
    assert response.status == 503
    assert response.headers["Retry-After"] == "2"
    assert await response.json() == {
        "success": False,
        "error": "events not accepted: no JetStream stream accepts the raw subjects; retry later",
    }


async def test_overload_and_ack_timeout_answer_503_without_queueing(
    make_ingest: MakeIngest, nats_url: str
) -> None:
    # A subscriber that never answers stands in for a JetStream that does not ack.
    prefix = f"silent{uuid.uuid4().hex[:8]}"
    silent = await connect(nats_url, "silent")
    published = asyncio.Event()

    async def never_ack(_msg: object) -> None:
        published.set()

    await silent.subscribe(f"{prefix}.raw.v1.*", cb=never_ack)
    await silent.flush()
    ingest = await make_ingest(
        publish_prefix=prefix, publish_timeout_s=1.0, max_in_flight_publishes=1
    )
    key = ingest.project.write_key
    try:
        waiting = asyncio.create_task(ingest.post("/v1/track", valid_body("/v1/track"), key))
        await published.wait()
        assert ingest.api.publisher.in_flight == 1
        overloaded = await ingest.post("/v1/track", valid_body("/v1/track"), key)
        assert overloaded.status == 503
        assert overloaded.headers["Retry-After"] == "1"
        assert (await overloaded.json())["error"] == (
            "events not accepted: 1 requests already wait on JetStream; retry later"
        )
        timed_out = await waiting
        assert timed_out.status == 503
        assert timed_out.headers["Retry-After"] == "2"
        assert (await timed_out.json())["error"] == (
            "events not accepted: JetStream did not acknowledge in time; retry later"
        )
        assert ingest.api.publisher.in_flight == 0
    finally:
        await silent.close()


async def test_503_with_retry_after_when_the_key_store_is_unreachable(
    ingest: Ingest, database_url: str, pg_url: str
) -> None:
    # The project's database goes away under a running ingest (its cached key expires first).
    await asyncio.sleep(ingest.settings.key_cache_ttl_s)
    admin = await asyncpg.connect(pg_url)
    try:
        name = database_url.rsplit("/", 1)[1].split("?")[0]
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        response = await ingest.post("/v1/track", valid_body("/v1/track"), ingest.project.write_key)
        assert response.status == 503
        assert response.headers["Retry-After"] == "2"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert await response.json() == {
            "success": False,
            "error": "cannot check the write key right now; retry later",
        }
        metrics = await (await ingest.client.get("/metrics")).text()
        assert 'strata_ingest_requests_total{route="/v1/track",status="503"} 1.0' in metrics
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_503_when_the_stream_stops_accepting(ingest: Ingest) -> None:
    key = ingest.project.write_key
    assert (await ingest.post("/v1/track", valid_body("/v1/track"), key)).status == 200
    await ingest.js.delete_stream(ingest.subjects.raw_stream)
    response = await ingest.post("/v1/track", valid_body("/v1/track"), key)
    assert response.status == 503
    assert "Retry-After" in response.headers


# -- the analytics events API -------------------------------------------------------------------


async def test_analytics_events_api_single_and_batch(ingest: Ingest) -> None:
    key = ingest.project.write_key
    page_view = {
        "eventId": "e-1",
        "eventType": "page_view",
        "timestamp": 1_700_000_000_000,
        "anonymousId": "anon-1",
        "sessionId": "s-1",
        "deviceInfo": {"userAgent": CHROME_MAC, "language": "de-DE", "deviceType": "desktop"},
        "appContext": {
            "page": "/pricing",
            "referrer": "https://news.ycombinator.com/item?id=1",
            "appVersion": "2.1.0",
            "environment": "production",
        },
        "properties": {"title": "Pricing", "loadTime": 812},
        "consentFlags": {"analytics": True, "marketing": False, "personalization": False},
    }
    single = await ingest.post("/api/v1/analytics/events", page_view, key)
    assert single.status == 200
    assert await single.json() == {"success": True, "accepted": 1, "rejected": []}

    batch = [
        {
            "eventId": "e-2",
            "eventType": "conversion",
            "userId": "u-1",
            "properties": {"conversionType": "signup", "value": 10},
        },
        {
            "eventId": "e-3",
            "eventType": "user_action",
            "anonymousId": "anon-1",
            "consentFlags": {"analytics": False, "marketing": False, "personalization": False},
        },
        {"eventId": "e-4", "eventType": "error"},
    ]
    as_object = await ingest.post("/api/v1/analytics/events/batch", {"events": batch}, key)
    assert as_object.status == 200
    assert await as_object.json() == {
        "success": True,
        "accepted": 1,
        "rejected": [
            {"index": 2, "messageId": "e-4", "error": "userId or anonymousId is required"}
        ],
        "skipped": [
            {
                "index": 1,
                "messageId": "e-3",
                "reason": "consentFlags.analytics is false: the event is not recorded",
            }
        ],
    }
    as_array = await ingest.post(
        "/api/v1/analytics/events/batch",
        [{"eventId": "e-5", "eventType": "identify", "userId": "u-1", "traits": {"plan": "pro"}}],
        key,
    )
    assert as_array.status == 200

    events = {e.event_id: e for e in await ingest.raw_events()}
    assert set(events) == {"e-1", "e-2", "e-5"}
    view = events["e-1"]
    assert (view.type, view.name, view.path, view.title) == (
        "page",
        "$pageview",
        "/pricing",
        "Pricing",
    )
    assert view.ts == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert (view.referrer_domain, view.channel) == ("news.ycombinator.com", "organic_social")
    assert (view.browser, view.device_type, view.locale) == ("Chrome", "desktop", "de-DE")
    assert view.properties["$client_session_id"] == "s-1"
    assert view.properties["$app_version"] == "2.1.0"
    assert (events["e-2"].type, events["e-2"].name) == ("track", "conversion")
    assert (events["e-5"].name, events["e-5"].traits) == ("$identify", {"plan": "pro"})


async def test_a_request_with_only_non_consented_events_records_nothing(ingest: Ingest) -> None:
    body = {"eventType": "click", "userId": "u", "consentFlags": {"analytics": False}}
    response = await ingest.post("/api/v1/analytics/events", body, ingest.project.write_key)
    assert response.status == 200
    assert (await response.json())["accepted"] == 0
    assert await ingest.message_count() == 0


# -- browsers, health, metrics ----------------------------------------------------------------


@pytest.mark.parametrize("route", ALL_ROUTES)
async def test_cors_preflight_allows_browsers(ingest: Ingest, route: str) -> None:
    response = await ingest.client.options(
        route,
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    # analytics.js retries carry X-Retry-Count: a preflight refusing it loses those events.
    assert "X-Retry-Count" in response.headers["Access-Control-Allow-Headers"]


async def test_analytics_js_batching_path_takes_a_batch(ingest: Ingest) -> None:
    key = ingest.project.write_key
    body = {"writeKey": key, "batch": [{"type": "track", "anonymousId": "a", "event": "E"}] * 2}
    response = await ingest.post("/v1/b", body, headers={"X-Retry-Count": "1"})
    assert response.status == 200, await response.text()
    assert len(await ingest.raw_events()) == 2


async def test_browser_requests_use_the_http_user_agent(ingest: Ingest) -> None:
    headers = {
        "Origin": "https://shop.example.com",
        "User-Agent": GOOGLEBOT,
        "Content-Type": "text/plain",
    }
    body = {"writeKey": ingest.project.write_key, "anonymousId": "a", "event": "Beacon"}
    response = await ingest.post("/v1/track", body, headers=headers)
    assert response.status == 200
    [event] = await ingest.raw_events()
    assert event.is_bot


async def test_health_readiness_and_metrics(ingest: Ingest, make_ingest: MakeIngest) -> None:
    assert (await ingest.client.get("/healthz")).status == 200
    ready = await ingest.client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"status": "ready"})
    await ingest.post("/v1/track", valid_body("/v1/track"), ingest.project.write_key)
    await ingest.post("/v1/track", {"event": "E"}, ingest.project.write_key)
    metrics = await (await ingest.client.get("/metrics")).text()
    assert 'strata_ingest_requests_total{route="/v1/track",status="200"} 1.0' in metrics
    assert 'strata_ingest_requests_total{route="/v1/track",status="400"} 1.0' in metrics
    assert 'strata_ingest_events_total{outcome="accepted"} 1.0' in metrics
    assert 'strata_ingest_events_total{outcome="rejected"} 1.0' in metrics
    assert "strata_ingest_publish_seconds_count 1.0" in metrics

    unready = await make_ingest(publish_prefix=f"nostream{uuid.uuid4().hex[:8]}")
    response = await unready.client.get("/readyz")
    assert response.status == 503
    assert set((await response.json())["failures"]) == {"nats"}
