"""Ingest against input that once cost 5xx answers or good events: NUL characters storage cannot
hold, JSON nested past the decoder, impossible times, bodies in unknown or broken encodings,
stalled uploads and vanished clients. Each is a 4xx naming the problem, and the valid events
sent beside it are still accepted (and only they reach the raw stream)."""

# ruff: noqa: F811  (the ingest fixtures are imported from test_ingest_api)
from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.integration.test_ingest_api import (  # noqa: F401  (fixtures)
    Ingest,
    MakeIngest,
    basic,
    ingest,
    make_ingest,
)

pytestmark = pytest.mark.infra

NUL = "\u0000"


def track(message_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "r", "userId": "u", "messageId": message_id, **fields}


NUL_ITEMS = [
    (track("bad", properties={"k": f"a{NUL}b"}), "properties.k"),
    (track("bad", properties={f"k{NUL}": 1}), "properties.k? (the key)"),
    (track("bad", properties={"list": ["ok", {"deep": NUL}]}), "properties.list[1].deep"),
    (track("bad", event=f"r{NUL}"), "event"),
    (track("bad", userId=f"u{NUL}"), "userId"),
    (track("bad", context={"page": {"path": f"/a{NUL}"}}), "context.page.path"),
    ({**track("x"), "messageId": f"bad{NUL}"}, "messageId"),
]


async def test_a_nul_character_rejects_only_its_event(ingest: Ingest) -> None:
    for n, (bad, named) in enumerate(NUL_ITEMS):
        body = {"batch": [bad, track(f"good-{n}")]}
        response = await ingest.post("/v1/batch", body, ingest.project.write_key)
        assert response.status == 200
        answer = await response.json()
        assert answer["accepted"] == 1
        [rejection] = answer["rejected"]
        assert rejection["index"] == 0
        assert rejection["error"] == (
            f"{named}: contains a NUL character (\\u0000), which cannot be stored; remove it"
        )
    stored = [e.event_id for e in await ingest.raw_events()]
    assert stored == [f"good-{n}" for n in range(len(NUL_ITEMS))]


async def test_a_nul_character_in_a_single_event_or_the_batch_context_is_400(
    ingest: Ingest,
) -> None:
    single = await ingest.post(
        "/v1/track",
        {"userId": "u", "event": "r", "properties": {"k": NUL}},
        ingest.project.write_key,
    )
    assert single.status == 400
    assert (await single.json())["error"].startswith("properties.k: contains a NUL character")
    analytics = await ingest.post(
        "/api/v1/analytics/events",
        {"eventType": f"c{NUL}", "userId": "u"},
        ingest.project.write_key,
    )
    assert analytics.status == 400
    assert (await analytics.json())["error"].startswith("eventType: contains a NUL character")
    # The batch's context is merged into every event, so none could be stored.
    shared = await ingest.post(
        "/v1/batch",
        {"batch": [track("a")], "context": {"page": {"title": NUL}}},
        ingest.project.write_key,
    )
    assert shared.status == 400
    assert (await shared.json())["error"].startswith("context.page.title: contains a NUL")
    # An escaped backslash before "u0000" is text, not a NUL.
    literal = await ingest.post(
        "/v1/track",
        {"userId": "u", "event": "r", "properties": {"k": "\\u0000"}},
        ingest.project.write_key,
    )
    assert literal.status == 200
    [event] = await ingest.raw_events()
    assert event.properties == {"k": "\\u0000"}


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


async def test_json_nested_past_the_decoder_rejects_only_the_deep_items(ingest: Ingest) -> None:
    key = ingest.project.write_key
    deep = '{"type":"track","event":"r","userId":"u","messageId":"deep","properties":{"a":'
    deep += nested(2000) + "}}"
    good = [json.dumps(track(f"good-{i}")) for i in range(3)]
    body = '{"batch":[' + ",".join([good[0], deep, *good[1:]]) + '],"sentAt":null}'
    response = await ingest.post("/v1/batch", body.encode(), key)
    assert response.status == 200
    answer = await response.json()
    assert answer["accepted"] == 3
    assert [(r["index"], r["error"]) for r in answer["rejected"]] == [
        (1, "JSON nested too deeply to read (properties may nest at most a few levels)")
    ]
    assert sorted(e.event_id for e in await ingest.raw_events()) == ["good-0", "good-1", "good-2"]

    # The analytics API's bare array of events, too.
    api_good = json.dumps({"eventType": "c", "eventId": "api-good", "userId": "u"})
    api_deep = '{"eventType":"c","userId":"u","properties":{"a":' + nested(3000) + "}}"
    api = await ingest.post(
        "/api/v1/analytics/events/batch", f"[{api_good},{api_deep}]".encode(), key
    )
    assert api.status == 200
    assert (await api.json())["accepted"] == 1

    # A single event, or a deep batch-level field, has nothing valid to save: 400.
    single_body = '{"userId":"u","event":"r","properties":' + nested(2000) + "}"
    single = await ingest.post("/v1/track", single_body.encode(), key)
    assert single.status == 400
    assert "nested too deeply" in (await single.json())["error"]
    envelope_body = '{"batch":[' + good[0] + '],"context":{"x":' + nested(2000) + "}}"
    envelope = await ingest.post("/v1/batch", envelope_body.encode(), key)
    assert envelope.status == 400
    assert "nested too deeply" in (await envelope.json())["error"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"sentAt": "9999-01-01T00:00:00Z", "timestamp": "2024-05-01T00:00:00Z"}, "sentAt"),
        ({"sentAt": "0001-01-01T00:00:00Z", "timestamp": "9999-01-01T00:00:00Z"}, "sentAt"),
        ({"timestamp": "0001-01-01T00:00:00+14:00"}, "0001-01-01T00:00:00+14:00"),
        ({"timestamp": "9999-12-31T23:59:59-12:00"}, "9999-12-31T23:59:59-12:00"),
    ],
)
async def test_times_off_the_calendar_are_a_400_naming_them(
    ingest: Ingest, fields: dict[str, str], named: str
) -> None:
    response = await ingest.post(
        "/v1/batch", {"batch": [track("bad", **fields), track("good")]}, ingest.project.write_key
    )
    assert response.status == 200
    [rejection] = (await response.json())["rejected"]
    assert named in rejection["error"]
    assert [e.event_id for e in await ingest.raw_events()] == ["good"]


async def test_content_encodings(ingest: Ingest) -> None:
    key = ingest.project.write_key
    body = json.dumps({"userId": "u", "event": "Zipped", "messageId": "z"}).encode()

    deflated = await ingest.post(
        "/v1/track", zlib.compress(body), key, headers={"Content-Encoding": "deflate"}
    )
    assert deflated.status == 200

    not_gzip = await ingest.post("/v1/track", body, key, headers={"Content-Encoding": "gzip"})
    assert not_gzip.status == 400
    assert (await not_gzip.json())["error"].startswith("request body is not valid gzip data")

    cut = await ingest.post(
        "/v1/track", gzip.compress(body)[:-12], key, headers={"Content-Encoding": "gzip"}
    )
    assert cut.status == 400
    assert (await cut.json())["error"] == "request body is truncated gzip data"

    for coding in ("br", "x-foo", "gzip, br"):
        refused = await ingest.post("/v1/track", body, key, headers={"Content-Encoding": coding})
        assert refused.status == 415, coding
        assert refused.content_type == "application/json"
        assert "gzip, deflate or identity" in (await refused.json())["error"]

    # A small bomb is stopped at the limit, not expanded.
    bomb = gzip.compress(b'{"userId":"u","event":"b","properties":{"p":"' + b"x" * 2_000_000)
    exploded = await ingest.post("/v1/track", bomb, key, headers={"Content-Encoding": "gzip"})
    assert exploded.status == 413
    assert "decompresses to more than 512000 bytes" in (await exploded.json())["error"]
    assert [e.event_id for e in await ingest.raw_events()] == ["z"]


async def test_405_names_the_allowed_methods_and_the_server_hides_its_version(
    ingest: Ingest,
) -> None:
    response = await ingest.client.get("/v1/batch")
    assert response.status == 405
    assert set(response.headers["Allow"].split(",")) >= {"POST", "OPTIONS"}
    assert (await response.json())["error"] == "Method Not Allowed: GET /v1/batch"
    missing = await ingest.client.post("/v1/nope")
    assert missing.status == 404
    assert response.headers["Server"] == missing.headers["Server"] == "strata"


async def raw_request(ingest: Ingest, head: bytes) -> tuple[asyncio.StreamReader, Any]:
    server = ingest.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def test_a_stalled_body_is_answered_408_and_an_idle_connection_closed(
    make_ingest: MakeIngest,
) -> None:
    ingest = await make_ingest(http_body_timeout_s=0.5, http_idle_timeout_s=0.5)
    auth = basic(ingest.project.write_key)["Authorization"]
    reader, writer = await raw_request(
        ingest,
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: {auth}\r\nContent-Length: 500000\r\n\r\n".encode()
        + b'{"batch": ['
        + b" " * 90,
    )
    answer = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 0.5 s" in answer
    writer.close()

    # Connected, but no request (or half of its headers): closed after the idle timeout.
    for head in (b"", b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n"):
        reader, writer = await raw_request(ingest, head)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert await ingest.message_count() == 0


async def test_a_client_leaving_mid_body_is_not_logged_as_an_error(ingest: Ingest) -> None:
    auth = basic(ingest.project.write_key)["Authorization"]
    with capture_logs() as logs:
        _, writer = await raw_request(
            ingest,
            b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: {auth}\r\nContent-Length: 5000\r\n\r\n".encode()
            + b'{"batch": [',
        )
        await asyncio.sleep(0.2)
        writer.close()
        await writer.wait_closed()
        for _ in range(50):
            if any(entry["event"] == "client_disconnected_before_body" for entry in logs):
                break
            await asyncio.sleep(0.05)
    assert [entry["log_level"] for entry in logs] == ["info"], logs
    assert logs[0]["event"] == "client_disconnected_before_body"
    assert await ingest.message_count() == 0
