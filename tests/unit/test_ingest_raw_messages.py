"""A coalesced raw message is assembled from events each request encoded on its own: the bytes
must be exactly what msgspec makes of the RawBatchV1 Struct (so a field added to the schema
later is never silently left out), and its id must not depend on how requests interleaved."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from libs.common.schemas.events_v1 import EventV1, RawBatchV1, raw_batch_decoder, raw_batch_encoder
from services.ingest.publishing import encode_events, encode_raw_batch, message_id

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(event_id: str, project_id: str = "acme", **fields: object) -> EventV1:
    return EventV1(
        event_id=event_id,
        project_id=project_id,
        type="track",
        name="Signed Up",
        ts=NOW,
        received_at=NOW,
        distinct_id="anon-1",
        **fields,  # type: ignore[arg-type]
    )


def test_joined_fragments_encode_exactly_like_the_struct() -> None:
    first = [event("a"), event("b", properties={"plan": "pro", "seats": 3})]
    second = [event("c", url="https://acme.test/é", user_id="u1")]
    payload = encode_raw_batch("id-1", 5, [encode_events(first), encode_events(second)])
    whole = RawBatchV1(batch_id="id-1", partition=5, events=first + second)
    assert payload == raw_batch_encoder.encode(whole)
    assert raw_batch_decoder.decode(payload) == whole


def test_message_id_is_the_set_of_project_and_event_ids() -> None:
    events = [event(f"m{i}") for i in range(10)]
    assert message_id(events) == message_id(events[5:] + events[:5])
    assert message_id(events) != message_id(events[:-1])
    # The same client messageId in two projects is two different events.
    assert message_id(events) != message_id(
        [msgspec.structs.replace(e, project_id="other") for e in events]
    )


def test_message_id_of_one_project_hashes_the_same_pairs() -> None:
    # The one-project shortcut must give the very id the pairs give (a retry published by an
    # older process is then still deduplicated); ids that prefix one another and ids around
    # the separator's code point sort the same way in both.
    events = [event(i) for i in ("m10", "m1", "m", "m\x1e", "m\x20", "z", "M", "é", "0")]
    for subset in (events, events[:1], events[3:]):
        assert message_id(subset, "acme") == message_id(subset)
        assert message_id(subset[::-1], "acme") == message_id(subset)


def test_a_message_of_one_fragment_or_none_encodes_like_the_struct() -> None:
    events = [event("a"), event("b")]
    for fragments, expected in (([encode_events(events)], events), ([], [])):
        payload = encode_raw_batch("id-2", 1, fragments)
        whole = RawBatchV1(batch_id="id-2", partition=1, events=expected)
        assert payload == raw_batch_encoder.encode(whole)
