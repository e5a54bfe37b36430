"""Segment's official Python SDK (`segment-analytics-python`), unchanged, pointed at an
in-process ingest: every call arrives on the raw stream once, mapped as documented."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from segment.analytics import Client

from tests.integration.test_ingest_api import CHROME_MAC, Ingest, MakeIngest, make_ingest

pytestmark = pytest.mark.infra

__all__ = ["make_ingest"]  # the fixture, shared with the ingest API tests


async def send_with_sdk(ingest: Ingest, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Make the calls through the SDK's own queue and thread, flush, and return its errors."""
    errors: list[Any] = []
    host = str(ingest.client.make_url("")).rstrip("/")

    def run() -> None:
        client = Client(
            ingest.project.write_key,
            host=host,
            on_error=lambda error, batch: errors.append((error, batch)),
            max_retries=1,
            upload_interval=0.05,
        )
        for method, kwargs in calls:
            getattr(client, method)(**kwargs)
        client.flush()
        client.shutdown()

    # The SDK blocks (requests in its own thread): keep the test server's loop free.
    await asyncio.to_thread(run)
    return errors


async def test_track_page_identify_alias_group_arrive_mapped(make_ingest: MakeIngest) -> None:
    ingest = await make_ingest()
    at = datetime(2026, 1, 5, 12, 30, tzinfo=UTC)
    context = {
        "userAgent": CHROME_MAC,
        "page": {"url": "https://shop.example/pricing?utm_source=google&utm_medium=cpc"},
    }
    errors = await send_with_sdk(
        ingest,
        [
            (
                "track",
                {
                    "user_id": "u-1",
                    "event": "Order Completed",
                    "properties": {"revenue": 42.5, "currency": "EUR"},
                    "context": context,
                    "timestamp": at,
                    "message_id": "sdk-track",
                },
            ),
            (
                "page",
                {
                    "anonymous_id": "anon-1",
                    "category": "Docs",
                    "name": "Pricing",
                    "properties": {"url": "https://shop.example/pricing", "title": "Pricing"},
                    "message_id": "sdk-page",
                },
            ),
            (
                "identify",
                {
                    "user_id": "u-1",
                    "anonymous_id": "anon-1",
                    "traits": {"plan": "pro"},
                    "message_id": "sdk-identify",
                },
            ),
            ("alias", {"previous_id": "anon-1", "user_id": "u-1", "message_id": "sdk-alias"}),
            (
                "group",
                {
                    "user_id": "u-1",
                    "group_id": "org-7",
                    "traits": {"name": "Acme"},
                    "message_id": "sdk-group",
                },
            ),
        ],
    )
    assert errors == []
    events = {event.event_id: event for event in await ingest.raw_events()}
    assert sorted(events) == ["sdk-alias", "sdk-group", "sdk-identify", "sdk-page", "sdk-track"]

    track = events["sdk-track"]
    assert (track.type, track.name, track.user_id, track.distinct_id) == (
        "track",
        "Order Completed",
        "u-1",
        "u-1",
    )
    assert track.properties == {"revenue": 42.5, "currency": "EUR"}
    # Segment's clock-skew correction (receivedAt - (sentAt - timestamp)) moves the time by
    # the SDK's queueing delay only.
    assert abs(track.ts - at) < timedelta(seconds=5)
    assert (track.browser, track.channel, track.utm_source) == ("Chrome", "paid_search", "google")
    assert track.path == "/pricing"

    page = events["sdk-page"]
    assert (page.type, page.name, page.anonymous_id) == ("page", "$pageview", "anon-1")
    assert (page.url, page.title) == ("https://shop.example/pricing", "Pricing")
    assert page.properties["name"] == "Pricing" and page.properties["category"] == "Docs"

    identify = events["sdk-identify"]
    assert (identify.name, identify.user_id, identify.anonymous_id) == (
        "$identify",
        "u-1",
        "anon-1",
    )
    assert identify.traits == {"plan": "pro"}

    alias = events["sdk-alias"]
    assert (alias.name, alias.previous_id, alias.user_id) == ("$alias", "anon-1", "u-1")

    group = events["sdk-group"]
    assert (group.name, group.group_id, group.traits) == ("$group", "org-7", {"name": "Acme"})
    # The SDK's own library agent is not the visitor's: server events carry no device.
    assert group.browser is None and group.is_bot is False


async def test_sdk_batches_many_calls_and_retried_ids_count_once(make_ingest: MakeIngest) -> None:
    ingest = await make_ingest()
    calls = [
        ("track", {"user_id": f"u-{i % 7}", "event": "Viewed", "message_id": f"m-{i}"})
        for i in range(250)
    ]
    assert await send_with_sdk(ingest, calls) == []
    events = await ingest.raw_events()
    assert sorted(event.event_id for event in events) == sorted(f"m-{i}" for i in range(250))


async def test_a_wrong_write_key_is_reported_to_the_sdk(make_ingest: MakeIngest) -> None:
    ingest = await make_ingest()
    errors: list[Any] = []
    host = str(ingest.client.make_url("")).rstrip("/")

    def run() -> None:
        client = Client(
            "wk_not_a_key",
            host=host,
            on_error=lambda error, batch: errors.append(error),
            max_retries=0,
        )
        client.track(user_id="u-1", event="Viewed")
        client.flush()
        client.shutdown()

    await asyncio.to_thread(run)
    assert len(errors) == 1 and "invalid write key" in str(errors[0])
    assert await ingest.raw_events() == []
