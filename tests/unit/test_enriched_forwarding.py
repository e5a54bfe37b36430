"""Enriched events forwarded from their raw JSON (the session id spliced in) must be what
re-encoding the sessionized Structs gives: the same bytes for what ingest encodes, the same
events for any other JSON a raw message may hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from libs.common.schemas.events_v1 import (
    EnrichedBatchV1,
    EventV1,
    RawBatchV1,
    raw_batch_encoder,
)
from libs.common.subjects import Subjects
from services.sessionizer.enriched_messages import (
    _EnrichedBatchOut,
    build_messages,
    worth_forwarding,
)
from services.sessionizer.partition_worker import decode_raw_events, raw_event_json
from services.sessionizer.session_window import PartitionSessions, SessionRules, sessionize_batch

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
RULES = SessionRules()
SUBJECTS = Subjects("tx")


def _event(event_id: str, seconds: int, person: str, **fields: object) -> EventV1:
    fields.setdefault("type", "page")
    fields.setdefault("name", "$pageview")
    fields.setdefault("url", "https://shop.example.com/a")
    return EventV1(
        event_id=event_id,
        project_id="acme",
        ts=T0 + timedelta(seconds=seconds),
        received_at=T0 + timedelta(seconds=60),
        distinct_id=person,
        **fields,  # type: ignore[arg-type]
    )


GOOGLE = {
    "referrer": "https://www.google.com/",
    "referrer_domain": "google.com",
    "channel": "organic_search",
    "properties": {"$search_engine": "Google", "note": "caf\u00e9 \u2603"},
}
MIXED = [
    # Sent before its session's first event, sorted after it; it carries the session's source.
    _event("b2", 30, "p1", path="/b", **GOOGLE),  # type: ignore[arg-type]
    _event("b1", 10, "p1", path="/a", **GOOGLE),  # type: ignore[arg-type]
    # Internal navigation: the session's source (Google) is stamped onto it, so it is
    # re-encoded, not forwarded.
    _event("b3", 40, "p1", path="/c", properties={"$click_id": "x"}),
    # A backend call of nobody: stored without a session, forwarded as it came.
    _event("s1", 20, "nobody", type="track", name="paid", url=None),
    _event("c1", 5, "p2", name="signup", type="track", channel="direct", properties={"n": 1}),
]


def _both_ways(
    data: bytes, max_payload: int
) -> tuple[list[int], list[tuple[str, str, bytes]], list[tuple[str, str, bytes]]]:
    """(origins, messages re-encoded, messages forwarded) for one raw message."""
    outcomes = []
    for forward in (False, True):
        batch, rejected = decode_raw_events(data)
        assert rejected == []
        sessionized = sessionize_batch(PartitionSessions(), batch.events, 9, lambda _: RULES)
        raw = raw_event_json(data) if forward else None
        messages = build_messages(SUBJECTS, 9, sessionized, max_payload, raw)
        outcomes.append((sessionized.origins, [(m.subject, m.msg_id, m.payload) for m in messages]))
    (origins, encoded), (_, forwarded) = outcomes
    return origins, encoded, forwarded


@pytest.mark.parametrize("max_payload", [1024 * 1024, 4096 + 1100])
def test_forwarded_events_are_the_bytes_re_encoding_gives(max_payload: int) -> None:
    data = raw_batch_encoder.encode(RawBatchV1(batch_id="r", partition=0, events=MIXED))
    origins, encoded, forwarded = _both_ways(data, max_payload)
    assert forwarded == encoded
    # c1, b1, s1, b2 forwarded from their input positions; b3 had its source stamped on.
    assert origins == [4, 1, 3, 0, -1]
    if max_payload < 10_000:  # the split into parts measures the forwarded JSON too
        assert any("#" in msg_id for _, msg_id, _ in forwarded)


def _decoded(messages: list[tuple[str, str, bytes]]) -> list[tuple[str, str, EnrichedBatchV1]]:
    return [
        (subject, msg_id, msgspec.json.decode(payload, type=EnrichedBatchV1))
        for subject, msg_id, payload in messages
        if ".enriched." in subject
    ]


def test_raw_json_written_otherwise_still_gives_the_same_events() -> None:
    """Spacing, escapes, other time-zone spellings and fields this version does not know:
    the forwarded bytes differ, the events decoded from them do not."""
    data = (
        b'{ "batch_id": "r", "partition": 0, "events": [\n'
        b'  { "event_id": "e1", "project_id": "acme", "type": "page", "name": "$pageview",\n'
        b'    "ts": "2026-01-15T13:00:00+01:00", "received_at": "2026-01-15T12:01:00Z",\n'
        b'    "distinct_id": "p\\u00e9", "url": "https://shop.example.com/", "path": "/",\n'
        b'    "channel": "direct",\n'
        b'    "properties": {"k": [1, 2.5, null]}, "from_a_later_version": {"x": 1} } ,\n'
        b'  {"event_id":"e2","project_id":"acme","type":"page","name":"$pageview",'
        b'"ts":"2026-01-15T12:00:30.000000Z","received_at":"2026-01-15T12:01:00Z",'
        b'"distinct_id":"p\\u00e9","url":"https://shop.example.com/b","path":"/b","channel":"direct"}\n'
        b"] }"
    )
    _, encoded, forwarded = _both_ways(data, 1024 * 1024)
    assert forwarded != encoded
    assert _decoded(forwarded) == _decoded(encoded)
    [(_, _, batch)] = _decoded(forwarded)
    assert [e.event_id for e in batch.events] == ["e1", "e2"]
    assert len({e.session_id for e in batch.events}) == 1
    assert batch.events[0].session_id is not None


def test_raw_json_that_names_a_session_id_is_re_encoded() -> None:
    """An event whose raw JSON already has a session_id (a replayed enriched event) gets the
    sessionizer's id once, not a second key."""
    event = msgspec.structs.replace(_event("e1", 0, "p1", channel="direct"), session_id="OLD")
    for session_id in ("OLD", None):
        data = raw_batch_encoder.encode(
            RawBatchV1(
                batch_id="r",
                partition=0,
                events=[msgspec.structs.replace(event, session_id=session_id)],
            )
        )
        if session_id is None:
            data = data.replace(b'"url"', b'"session_id":null,"url"', 1)
        origins, encoded, forwarded = _both_ways(data, 1024 * 1024)
        assert origins == [0]  # forwarded, were its JSON not to name a session_id
        assert forwarded == encoded
        [(_, _, payload)] = [m for m in forwarded if ".enriched." in m[0]]
        assert payload.count(b'"session_id"') == 1
        [(_, _, batch)] = _decoded(forwarded)
        assert batch.events[0].session_id not in (None, "OLD")


def test_the_written_enriched_batch_is_the_wire_type() -> None:
    assert _EnrichedBatchOut.__struct_fields__ == EnrichedBatchV1.__struct_fields__
    assert _EnrichedBatchOut.__struct_encode_fields__ == EnrichedBatchV1.__struct_encode_fields__
    assert _EnrichedBatchOut.__struct_defaults__ == EnrichedBatchV1.__struct_defaults__
    written, wire = _EnrichedBatchOut.__struct_config__, EnrichedBatchV1.__struct_config__
    for option in ("omit_defaults", "array_like", "tag", "tag_field"):
        assert getattr(written, option) == getattr(wire, option), option
    # The splice appends session_id: it must stay EventV1's last field.
    assert EventV1.__struct_fields__[-1] == "session_id"


def test_forwarding_is_chosen_when_most_events_only_gain_a_session_id() -> None:
    def sessionized(events: list[EventV1]) -> bool:
        batch = sessionize_batch(PartitionSessions(), events, 1, lambda _: RULES)
        return worth_forwarding(batch)

    assert sessionized(MIXED)  # 4 of 5 forwarded
    # Internal navigation after a search visit: 1 of 3 events carries the session's source.
    visit = [
        _event("v1", 0, "p1", **GOOGLE),  # type: ignore[arg-type]
        _event("v2", 10, "p1", path="/b"),
        _event("v3", 20, "p1", path="/c"),
    ]
    assert not sessionized(visit)
    assert not sessionized([])
