"""Privacy controls and IP enrichment through the real ingest app (real NATS JetStream and
PostgreSQL): what a project's policy lets reach the raw stream, byte for byte."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.common.privacy_policy import PrivacyPolicy, save_policy
from libs.common.schemas.events_v1 import EventV1
from services.ingest.privacy import REDACTED
from tests.integration.test_ingest_api import CHROME_MAC, Ingest, MakeIngest, ingest, make_ingest
from tests.support.geoip import build_city_database

pytestmark = pytest.mark.infra

__all__ = ["ingest", "make_ingest"]  # fixtures shared with the ingest API tests

EMAIL = "ada.lovelace@example.com"
CARD = "4111 1111 1111 1111"
PHONE = "+44 20 7946 0958"
TICKET = "ACME-123456"
SECRETS = (EMAIL, CARD, PHONE, TICKET, "ada.lovelace%40example.com")
LOCAL_PROXY = "127.0.0.1/32,::1/128"  # the test client's address: it stands in for a proxy


async def set_policy(pool: asyncpg.Pool, project: str, **fields: Any) -> None:
    async with pool.acquire() as conn:
        assert await save_policy(conn, project, PrivacyPolicy(**fields))


def track(**extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Clicked",
        "messageId": str(uuid.uuid4()),
        "anonymousId": "anon-1",
        **extra,
    }


async def send_one(ingest: Ingest, body: dict[str, Any], **headers: str) -> EventV1:
    response = await ingest.post(
        "/v1/batch", {"batch": [body]}, ingest.project.write_key, headers=headers
    )
    assert response.status == 200, await response.text()
    events = await ingest.raw_events()
    return events[-1]


async def test_nothing_unscrubbed_reaches_the_raw_stream(
    make_ingest: MakeIngest, pool: asyncpg.Pool
) -> None:
    await set_policy(
        pool,
        "acme",
        scrub_rules=("email", "card", "phone"),
        scrub_regexes=(r"ACME-\d{6}",),
    )
    ingest = await make_ingest()
    page = {
        "url": "https://shop.example/confirm?email=ada.lovelace%40example.com",
        "path": f"/users/{EMAIL}",
        "title": f"Order {TICKET} for {EMAIL}",
        "referrer": f"https://mail.example/read?from={EMAIL}",
    }
    body = {
        "batch": [
            track(
                properties={"note": f"call {PHONE}", "payment": {"card": CARD}, "tags": [TICKET]},
                context={"page": page, "traits": {"email": EMAIL}},
            ),
            {
                "type": "identify",
                "messageId": str(uuid.uuid4()),
                "userId": "u-1",
                "traits": {"email": EMAIL, "phone": PHONE, "plan": "pro"},
            },
            {
                "type": "page",
                "messageId": str(uuid.uuid4()),
                "anonymousId": "anon-1",
                "properties": {
                    "url": f"https://shop.example/?utm_source=news&utm_term={EMAIL}",
                    "title": EMAIL,
                },
            },
        ]
    }
    response = await ingest.post("/v1/batch", body, ingest.project.write_key)
    assert (await response.json())["accepted"] == 3
    analytics = await ingest.post(
        "/api/v1/analytics/events",
        {
            "eventType": "search",
            "eventId": str(uuid.uuid4()),
            "anonymousId": "anon-1",
            "properties": {"query": f"{EMAIL} {CARD}"},
            "appContext": {"page": f"https://shop.example/?q={EMAIL}"},
        },
        ingest.project.write_key,
    )
    assert analytics.status == 200

    messages = await ingest.raw_messages()
    raw = b"".join(
        [
            (await ingest.js.get_msg(ingest.subjects.raw_stream, seq)).data or b""
            for seq in range(1, len(messages) + 1)
        ]
    )
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    events = {event.name: event for event in await ingest.raw_events()}
    clicked = events["Clicked"]
    assert clicked.properties == {
        "note": f"call {REDACTED}",
        "payment": {"card": REDACTED},
        "tags": [REDACTED],
    }
    assert clicked.url == f"https://shop.example/confirm?email={REDACTED}"
    assert clicked.title == f"Order {REDACTED} for {REDACTED}"
    assert clicked.path == f"/users/{REDACTED}"
    assert events["$identify"].traits == {"email": REDACTED, "phone": REDACTED, "plan": "pro"}
    assert events["$pageview"].utm_term == REDACTED
    assert events["search"].properties == {"query": f"{REDACTED} {REDACTED}"}


async def test_without_scrub_rules_values_pass_unchanged(ingest: Ingest) -> None:
    event = await send_one(ingest, track(properties={"email": EMAIL}))
    assert event.properties == {"email": EMAIL}


@pytest.mark.parametrize(
    ("ip_policy", "published"),
    [("drop", None), ("truncate", "203.0.113.0"), ("keep", "203.0.113.77")],
)
async def test_ip_policy(
    make_ingest: MakeIngest, pool: asyncpg.Pool, ip_policy: str, published: str | None
) -> None:
    await set_policy(pool, "acme", ip_policy=ip_policy)
    ingest = await make_ingest(trusted_proxies=LOCAL_PROXY)
    event = await send_one(ingest, track(), **{"X-Forwarded-For": "203.0.113.77"})
    assert event.ip == published
    stored = (await ingest.js.get_msg(ingest.subjects.raw_stream, 1)).data or b""
    assert (b"203.0.113.77" in stored) is (ip_policy == "keep")


async def test_ipv6_truncates_to_its_48(make_ingest: MakeIngest, pool: asyncpg.Pool) -> None:
    await set_policy(pool, "acme", ip_policy="truncate")
    ingest = await make_ingest()
    event = await send_one(ingest, track(context={"ip": "2001:db8:1:ff::9"}))
    assert event.ip == "2001:db8:1::"


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    make_ingest: MakeIngest, pool: asyncpg.Pool
) -> None:
    await set_policy(pool, "acme", ip_policy="keep")
    ingest = await make_ingest()  # no trusted proxies: the peer (127.0.0.1) is the client
    event = await send_one(ingest, track(), **{"X-Forwarded-For": "203.0.113.77"})
    assert event.ip == "127.0.0.1"


async def test_geo_from_the_client_ip(
    make_ingest: MakeIngest, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    database = build_city_database(tmp_path / "city.mmdb")
    ingest = await make_ingest(geoip_db=str(database), trusted_proxies=LOCAL_PROXY)
    v4 = await send_one(ingest, track(), **{"X-Forwarded-For": "203.0.113.77"})
    assert (v4.country, v4.region, v4.city) == ("DE", "DE-BY", "Munich")
    v6 = await send_one(ingest, track(), **{"X-Forwarded-For": "2001:db8:1::42"})
    assert (v6.country, v6.region, v6.city) == ("JP", "JP-13", "Tokyo")
    # A server SDK's context.ip is its end user's address.
    forwarded = await send_one(ingest, track(context={"ip": "198.51.100.4"}))
    assert (forwarded.country, forwarded.city) == ("GB", "London")
    # A sender's own location wins over the lookup.
    told = await send_one(
        ingest, track(context={"ip": "203.0.113.77", "location": {"country": "FR"}})
    )
    assert (told.country, told.city) == ("FR", None)
    unknown = await send_one(ingest, track(context={"ip": "192.0.2.1"}))
    assert (unknown.country, unknown.region, unknown.city) == (None, None, None)
    assert v4.ip is None and v6.ip is None  # the default policy drops the address after geo


async def test_bot_ip_ranges_flag_events(make_ingest: MakeIngest, tmp_path: Path) -> None:
    ranges = tmp_path / "bots.txt"
    ranges.write_text("# a crawler's ranges\n203.0.113.0/24\n2001:db8:1::/48\n")
    ingest = await make_ingest(bot_ip_ranges=str(ranges))
    human = {"userAgent": CHROME_MAC}
    from_range = await send_one(ingest, track(context={**human, "ip": "203.0.113.5"}))
    from_range_v6 = await send_one(ingest, track(context={**human, "ip": "2001:db8:1::5"}))
    elsewhere = await send_one(ingest, track(context={**human, "ip": "198.51.100.5"}))
    assert (from_range.is_bot, from_range_v6.is_bot, elsewhere.is_bot) == (True, True, False)
    assert from_range.browser == "Chrome"  # kept and enriched, only flagged


def no_consent(style: str) -> dict[str, Any]:
    if style == "segment":
        return {"consent": {"categoryPreferences": {"Analytics": False, "Advertising": True}}}
    return {"consent": {"analytics": False}}


@pytest.mark.parametrize("style", ["segment", "strata"])
async def test_consent_drop_records_nothing(ingest: Ingest, style: str) -> None:
    body = {"batch": [track(userId="u-1", context=no_consent(style)), track()]}
    response = await ingest.post("/v1/batch", body, ingest.project.write_key)
    answer = await response.json()
    assert response.status == 200
    assert answer["accepted"] == 1
    assert answer["skipped"][0]["index"] == 0
    assert "analytics consent withheld" in answer["skipped"][0]["reason"]
    [event] = await ingest.raw_events()
    assert event.distinct_id == "anon-1" and "$cookieless" not in event.properties


async def test_consent_cookieless_strips_persistent_ids(
    make_ingest: MakeIngest, pool: asyncpg.Pool
) -> None:
    await set_policy(pool, "acme", consent_policy="cookieless")
    ingest = await make_ingest(trusted_proxies=LOCAL_PROXY)
    context = {**no_consent("segment"), "userAgent": CHROME_MAC, "traits": {"plan": "pro"}}
    visitor = {"X-Forwarded-For": "203.0.113.77"}
    body = {
        "batch": [
            track(userId="u-1", anonymousId="anon-9", context=context, traits={"a": 1}),
            track(userId="u-1", anonymousId="anon-9", context=context),
            {
                "type": "identify",
                "messageId": str(uuid.uuid4()),
                "userId": "u-1",
                "anonymousId": "anon-9",
                "context": context,
            },
            track(anonymousId="anon-9", context={"userAgent": CHROME_MAC}),
        ]
    }
    response = await ingest.post("/v1/batch", body, ingest.project.write_key, headers=visitor)
    answer = await response.json()
    assert answer["accepted"] == 3
    assert [skip["index"] for skip in answer["skipped"]] == [2]
    first, second, consented = await ingest.raw_events()
    for event in (first, second):
        assert event.distinct_id.startswith("cl-")
        assert (event.anonymous_id, event.user_id, event.traits) == (None, None, {})
        assert event.properties["$cookieless"] is True
        assert "anon-9" not in event.distinct_id and "u-1" not in event.distinct_id
    assert first.distinct_id == second.distinct_id  # same visitor, same day: one id
    assert consented.distinct_id == "anon-9" and "$cookieless" not in consented.properties

    other = await ingest.post(
        "/v1/batch",
        {"batch": [track(context=context)]},
        ingest.project.write_key,
        headers={"X-Forwarded-For": "198.51.100.9"},
    )
    assert (await other.json())["accepted"] == 1
    assert (await ingest.raw_events())[-1].distinct_id != first.distinct_id


async def test_analytics_api_consent_flags_follow_the_policy(
    make_ingest: MakeIngest, pool: asyncpg.Pool
) -> None:
    await set_policy(pool, "acme", consent_policy="cookieless")
    ingest = await make_ingest()
    response = await ingest.post(
        "/api/v1/analytics/events",
        {
            "eventType": "click",
            "eventId": str(uuid.uuid4()),
            "userId": "u-1",
            "consentFlags": {"analytics": False},
            "deviceInfo": {"userAgent": CHROME_MAC},
        },
        ingest.project.write_key,
    )
    assert (await response.json())["accepted"] == 1
    [event] = await ingest.raw_events()
    assert event.user_id is None and event.distinct_id.startswith("cl-")
    assert event.properties == {"$cookieless": True}


async def test_policy_changes_apply_within_the_key_cache_ttl(
    make_ingest: MakeIngest, pool: asyncpg.Pool
) -> None:
    ingest = await make_ingest(key_cache_ttl_s=0.2)
    assert (await send_one(ingest, track(properties={"e": EMAIL}))).properties == {"e": EMAIL}
    await set_policy(pool, "acme", scrub_rules=("email",))
    await asyncio.sleep(0.3)
    scrubbed = await send_one(ingest, track(properties={"e": EMAIL}))
    assert scrubbed.properties == {"e": REDACTED}
