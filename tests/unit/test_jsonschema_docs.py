"""The JSON Schemas in docs/schemas are what downstream teams code against: they must equal what
the generator makes from the msgspec Structs today, and real messages must validate against them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from libs.common.schemas import events_v1
from libs.common.schemas import jsonschema as wire_jsonschema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "docs" / "schemas"
REGENERATE = "run `python -m libs.common.schemas.jsonschema docs/schemas` and commit the result"


def validator_for(file_name: str) -> jsonschema.Draft202012Validator:
    document = json.loads((SCHEMA_DIR / file_name).read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    return jsonschema.Draft202012Validator(document)


def as_json(message: msgspec.Struct) -> Any:
    """The message exactly as it crosses NATS, parsed back into plain JSON values."""
    return json.loads(msgspec.json.encode(message))


def pageview(**overrides: Any) -> events_v1.EventV1:
    now = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    fields: dict[str, Any] = {
        "event_id": "msg-1",
        "project_id": "acme",
        "type": "page",
        "name": events_v1.PAGEVIEW,
        "ts": now,
        "received_at": now,
        "distinct_id": "anon-1",
        "anonymous_id": "anon-1",
        "user_id": "u-1",
        "properties": {"plan": "pro", "nested": {"depth": [1, 2]}},
        "path": "/pricing",
        "referrer_domain": "news.example.com",
        "channel": "referral",
        "browser": "Firefox",
        "device_type": "desktop",
        "non_interactive": True,
        "session_id": "s-1",
    }
    fields.update(overrides)
    return events_v1.EventV1(**fields)


def test_committed_schemas_equal_freshly_generated_ones() -> None:
    expected = {
        name: wire_jsonschema.render(doc) for name, doc in wire_jsonschema.json_schemas().items()
    }
    committed = {path.name: path.read_text() for path in SCHEMA_DIR.glob("*.json")}
    assert sorted(committed) == sorted(expected), REGENERATE
    for name, text in expected.items():
        assert committed[name] == text, f"docs/schemas/{name} is stale: {REGENERATE}"


def test_every_struct_of_the_wire_modules_is_documented() -> None:
    defined = {
        value.__name__
        for value in vars(events_v1).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == events_v1.__name__
    }
    assert {"EventV1", "RawBatchV1", "EnrichedBatchV1", "SessionUpdateV1"} <= defined
    documented = {path.stem for path in SCHEMA_DIR.glob("*.json")}
    assert defined <= documented


def test_generator_writes_the_same_files_and_removes_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "RemovedTypeV1.json").write_text("{}")
    written = wire_jsonschema.write_schemas(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(p.name for p in written)
    assert "RemovedTypeV1.json" not in {p.name for p in written}
    for path in written:
        assert path.read_text() == (SCHEMA_DIR / path.name).read_text()


class IndentedDocV1(msgspec.Struct):
    """First line of the description,
    continued on an indented line.

        An indented example stays indented relative to the text.
    """

    field: int


def test_descriptions_are_dedented_whatever_msgspec_does_with_docstrings() -> None:
    # msgspec 0.22 copies __doc__ as written, 0.23 dedents it: the files must not move with it.
    (document,) = wire_jsonschema.json_schemas([IndentedDocV1]).values()
    assert document["$defs"]["IndentedDocV1"]["description"] == (
        "First line of the description,\ncontinued on an indented line.\n\n"
        "    An indented example stays indented relative to the text."
    )


def test_real_messages_validate_against_their_schemas() -> None:
    event = pageview()
    enriched = events_v1.EnrichedBatchV1(
        batch_id="b-1", project_id="acme", name=events_v1.PAGEVIEW, events=[event]
    )
    raw = events_v1.RawBatchV1(batch_id="b-0", partition=3, events=[pageview(session_id=None)])
    session = events_v1.SessionUpdateV1(
        project_id="acme",
        session_id="s-1",
        distinct_id="anon-1",
        start=event.ts,
        end=event.ts,
        events=1,
        interactive_events=0,
        entry_path="/pricing",
    )
    validator_for("EnrichedBatchV1.json").validate(as_json(enriched))
    validator_for("RawBatchV1.json").validate(as_json(raw))
    validator_for("EventV1.json").validate(as_json(event))
    validator_for("SessionUpdateV1.json").validate(as_json(session))


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ({"event_id": None}, "None is not of type 'string'"),
        ({"is_bot": "no"}, "'no' is not of type 'boolean'"),
        ({"properties": []}, "[] is not of type 'object'"),
    ],
)
def test_schemas_reject_what_the_decoder_rejects(broken: dict[str, Any], reason: str) -> None:
    message = as_json(pageview())
    message.update(broken)
    with pytest.raises(jsonschema.ValidationError) as raised:
        validator_for("EventV1.json").validate(message)
    assert raised.value.message == reason
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps(message), type=events_v1.EventV1)


def test_a_missing_required_field_is_named() -> None:
    message = as_json(
        events_v1.EnrichedBatchV1(batch_id="b", project_id="acme", name="x", events=[])
    )
    del message["project_id"]
    with pytest.raises(jsonschema.ValidationError) as raised:
        validator_for("EnrichedBatchV1.json").validate(message)
    assert raised.value.message == "'project_id' is a required property"
