"""Segment calls and analytics-API events -> EventV1, and the per-event rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from libs.common.schemas.events_v1 import EventV1
from libs.common.subjects import partition_of
from services.ingest.analytics_api_payloads import analytics_event_decoder
from services.ingest.publishing import message_id, split_by_partition
from services.ingest.segment_payloads import SegmentContext, SegmentPage, segment_message_decoder
from services.ingest.stages.draft import ItemSkipped, RequestInfo
from services.ingest.stages.path import event_of
from services.ingest.validation import (
    EventLimits,
    ItemRejected,
    check_shape,
    describe_validation_error,
)

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LIMITS = EventLimits()
REQUEST = RequestInfo(project_id="acme", received_at=RECEIVED, limits=LIMITS)


def segment(payload: dict[str, Any], event_type: str | None = None, **request: Any) -> EventV1:
    message = segment_message_decoder.decode(msgspec.json.encode(payload))
    info = RequestInfo(project_id="acme", received_at=RECEIVED, limits=LIMITS, **request)
    return event_of(message, event_type, info)


def rejection(payload: dict[str, Any], event_type: str | None = None) -> str:
    with pytest.raises(ItemRejected) as rejected:
        segment(payload, event_type)
    return rejected.value.reason


def test_track() -> None:
    event = segment(
        {
            "userId": 42,
            "event": "Order Completed",
            "messageId": "m1",
            "properties": {"revenue": 9.5},
        },
        "track",
    )
    assert (event.type, event.name, event.event_id) == ("track", "Order Completed", "m1")
    assert (event.user_id, event.distinct_id, event.anonymous_id) == ("42", "42", None)
    assert event.person_key == "42"
    assert event.properties == {"revenue": 9.5}
    assert event.ts == event.received_at == RECEIVED
    assert event.channel is None  # a server-side call carries no acquisition signal


def test_page_takes_its_page_from_properties_over_context() -> None:
    event = segment(
        {
            "anonymousId": "a1",
            "name": "Pricing",
            "category": "Docs",
            "properties": {"path": "/pricing", "referrer": "https://t.co/x"},
            "context": {
                "page": {
                    "path": "/old",
                    "url": "https://acme.test/pricing?x=1",
                    "title": "Acme pricing",
                }
            },
        },
        "page",
    )
    assert (event.type, event.name) == ("page", "$pageview")
    assert (event.path, event.url, event.title) == (
        "/pricing",
        "https://acme.test/pricing?x=1",
        "Acme pricing",
    )
    assert (event.referrer_domain, event.channel) == ("t.co", "organic_social")
    assert event.properties["name"] == "Pricing" and event.properties["category"] == "Docs"
    assert event.distinct_id == "a1"


def test_path_is_derived_from_the_url() -> None:
    event = segment(
        {
            "anonymousId": "a",
            "event": "E",
            "context": {"page": {"url": "https://acme.test/a/b?q=1"}},
        },
        "track",
    )
    assert (event.path, event.channel) == ("/a/b", "direct")


@pytest.mark.parametrize(
    ("event_type", "payload", "name"),
    [
        ("screen", {"userId": "u", "name": "Home"}, "$screen"),
        ("identify", {"userId": "u", "traits": {"email": "a@b.c"}}, "$identify"),
        ("group", {"userId": "u", "groupId": 7}, "$group"),
        ("alias", {"userId": "u", "previousId": "anon"}, "$alias"),
    ],
)
def test_reserved_names(event_type: str, payload: dict[str, Any], name: str) -> None:
    event = segment(payload, event_type)
    assert (event.type, event.name) == (event_type, name)


def test_identify_links_the_anonymous_device_to_the_user() -> None:
    event = segment(
        {"userId": "u1", "anonymousId": "a1", "context": {"traits": {"plan": "pro"}}}, "identify"
    )
    assert (event.distinct_id, event.user_id, event.person_key) == ("a1", "u1", "u1")
    assert event.traits == {"plan": "pro"}  # context.traits when no top-level traits


def test_alias_and_group_ids() -> None:
    alias = segment({"userId": "u1", "previousId": "a0"}, "alias")
    assert (alias.previous_id, alias.distinct_id, alias.user_id) == ("a0", "u1", "u1")
    group = segment({"anonymousId": "a", "groupId": 12}, "group")
    assert group.group_id == "12"


def test_batch_context_and_sent_at_reach_each_item() -> None:
    sent = RECEIVED + timedelta(hours=3)  # device clock 3 h fast
    batch_context = SegmentContext(locale="fr-FR", page=SegmentPage(url="https://acme.test/x"))
    event = segment(
        {
            "anonymousId": "a",
            "event": "E",
            "timestamp": (sent - timedelta(seconds=7)).isoformat(),
            "context": {"locale": "de-DE"},
        },
        "track",
        sent_at=sent,
        context=batch_context,
    )
    assert event.ts == RECEIVED - timedelta(seconds=7)
    assert (event.locale, event.path) == ("de-DE", "/x")


@pytest.mark.parametrize(
    ("payload", "event_type", "reason"),
    [
        (
            {"userId": "u", "event": "E"},
            None,
            "type is required (one of track, page, screen, identify, group, alias)",
        ),
        (
            {"userId": "u"},
            "click",
            "type: 'click' is not one of track, page, screen, identify, group, alias",
        ),
        ({"event": "E"}, "track", "userId or anonymousId is required"),
        ({"userId": " ", "event": "E"}, "track", "userId or anonymousId is required"),
        ({"userId": "u", "event": ""}, "track", "event is required"),
        (
            {"userId": "u", "event": "e" * 201},
            "track",
            "event: is 201 characters; the limit is 200",
        ),
        (
            {"userId": "u" * 201, "event": "E"},
            "track",
            "userId: is 201 characters; the limit is 200",
        ),
        (
            {"userId": "u", "event": "E", "messageId": "m" * 300},
            "track",
            "messageId: is 300 characters; the limit is 200",
        ),
        ({"userId": "u"}, "alias", "previousId is required for alias"),
        ({"anonymousId": "a", "previousId": "p"}, "alias", "userId is required for alias"),
        ({"userId": "u"}, "group", "groupId is required for group"),
        (
            {"userId": "u", "traits": {"a": [[[[[[1]]]]]]}},
            "identify",
            "traits: nested deeper than 5 levels",
        ),
    ],
)
def test_rejections_name_the_field(
    payload: dict[str, Any], event_type: str | None, reason: str
) -> None:
    assert rejection(payload, event_type) == reason


def test_property_shape_bounds() -> None:
    limits = EventLimits(max_property_depth=3, max_properties=5)
    check_shape({"a": {"b": {"c": 1}}, "d": [1, 2, 3]}, "properties", limits)  # depth 3, 4 keys
    with pytest.raises(ItemRejected, match=r"properties: nested deeper than 3 levels"):
        check_shape({"a": {"b": {"c": {}}}}, "properties", limits)
    with pytest.raises(ItemRejected, match=r"properties: has 7 keys; the limit is 5"):
        check_shape({"a": 1, "b": {"c": 1, "d": 1}, "e": [{"f": 1, "g": 1}]}, "properties", limits)


def test_msgspec_errors_read_as_field_and_problem() -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        segment_message_decoder.decode(b'{"context": {"campaign": {"source": 1}}}')
    assert describe_validation_error(caught.value) == (
        "context.campaign.source: expected `str`, got `int`"
    )


def test_future_events_are_rejected_after_correction() -> None:
    later = (RECEIVED + timedelta(hours=25)).isoformat()
    assert rejection({"userId": "u", "event": "E", "timestamp": later}, "track").startswith(
        "timestamp: 2024-05-02T13:00:00+00:00 is more than 24 h in the future"
    )
    corrected = segment(
        {"userId": "u", "event": "E", "originalTimestamp": later, "sentAt": later}, "track"
    )
    assert corrected.ts == RECEIVED


def analytics(payload: dict[str, Any]) -> EventV1:
    return event_of(analytics_event_decoder.decode(msgspec.json.encode(payload)), None, REQUEST)


def test_analytics_api_events() -> None:
    view = analytics(
        {
            "eventType": "page_view",
            "eventId": "e1",
            "anonymousId": "a1",
            "userId": "u1",
            "timestamp": 1_714_564_740_000,
            "appContext": {"page": "https://acme.test/docs?utm_source=google&utm_medium=cpc"},
            "properties": {"title": "Docs"},
        }
    )
    assert (view.type, view.name, view.event_id) == ("page", "$pageview", "e1")
    assert view.ts == RECEIVED - timedelta(minutes=1)
    assert (view.path, view.title, view.channel) == ("/docs", "Docs", "paid_search")
    assert (view.distinct_id, view.user_id) == ("a1", "u1")
    custom = analytics(
        {
            "eventType": "conversion",
            "userId": "u1",
            "timestamp": "2024-05-01T11:00:00Z",
            "deviceInfo": {"deviceType": "mobile", "operatingSystem": "iOS"},
        }
    )
    assert (custom.type, custom.name, custom.ts) == (
        "track",
        "conversion",
        RECEIVED - timedelta(hours=1),
    )
    assert (custom.device_type, custom.os) == ("mobile", "iOS")
    with pytest.raises(ItemSkipped):
        analytics({"eventType": "click", "userId": "u", "consentFlags": {"analytics": False}})
    with pytest.raises(ItemRejected, match="eventType is required"):
        analytics({"userId": "u"})


def test_partition_split_and_dedup_ids() -> None:
    events = [
        segment({"anonymousId": f"p{i % 5}", "event": f"e{i}", "messageId": f"m{i}"}, "track")
        for i in range(20)
    ]
    groups = split_by_partition(events, 3)
    assert sum(len(g) for g in groups.values()) == 20
    for partition, group in groups.items():
        assert {partition_of(e.distinct_id, 3) for e in group} == {partition}
        # Request order is kept inside a partition.
        assert [e.event_id for e in group] == sorted(
            (e.event_id for e in group), key=lambda i: int(i[1:])
        )
    # A raw message's id depends on its set of (project, event id) pairs, not their order.
    assert message_id(events) == message_id(list(reversed(events)))
    elsewhere = [msgspec.structs.replace(e, project_id="other") for e in events]
    assert message_id(events) != message_id(elsewhere)
    assert message_id(events) != message_id(events[1:])
