"""The ingest event path's structure: one module per stage, run in the documented order, with
no import cycle anywhere in the ingest service (so the path can be read top to bottom)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from libs.common.privacy_policy import PrivacyPolicy
from services.ingest.collection import CollectionRules
from services.ingest.privacy import ProjectPrivacy
from services.ingest.segment_payloads import segment_batch_decoder
from services.ingest.stages import STAGE_ORDER
from services.ingest.stages.build import build
from services.ingest.stages.decode import decode
from services.ingest.stages.draft import RequestInfo
from services.ingest.stages.enrich import enrich
from services.ingest.stages.event_time import normalise_time
from services.ingest.stages.path import (
    STAGES,
    decode_batch,
    event_of,
    item_event,
    items_within_size,
)
from services.ingest.stages.policy import apply_policy
from services.ingest.stages.validate import validate
from services.ingest.validation import EventLimits

ROOT = Path(__file__).resolve().parents[2]
INGEST = ROOT / "services" / "ingest"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _ingest_imports(path: Path) -> set[str]:
    """The services.ingest modules a file imports (TYPE_CHECKING imports included: a cycle
    hidden from the interpreter is still one for the reader)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("services.ingest"):
                for alias in node.names:
                    # `from services.ingest.stages import draft` names a module.
                    candidate = f"{node.module}.{alias.name}"
                    submodule = INGEST.parent.parent / Path(*candidate.split("."))
                    found.add(candidate if submodule.with_suffix(".py").exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("services.ingest"))
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _ingest_imports(p) for p in INGEST.rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_ingest_service_has_no_import_cycle() -> None:
    graph = _graph()
    assert "services.ingest.stages.path" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_path_runs_the_stages_in_the_documented_order() -> None:
    assert tuple(name for name, _ in STAGES) == STAGE_ORDER
    for name, entry in STAGES:
        assert entry.__module__ == f"services.ingest.stages.{name}"
    # event_of (what item_event runs after decode) calls the stages in that same order.
    source = ast.parse(inspect.getsource(event_of))
    called = [
        node.func.id
        for node in ast.walk(source)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    assert called == [entry.__name__ for _, entry in STAGES[1:]]
    # docs/architecture.md shows the same order.
    doc = (ROOT / "docs" / "architecture.md").read_text()
    shown = re.search(r"^\s*decode → .*$", doc, re.MULTILINE)
    assert shown is not None, "docs/architecture.md lost the ingest stage line"
    assert [part.strip() for part in shown.group(0).split("→")] == list(STAGE_ORDER)


def test_each_stage_is_one_entry_point_that_imports_no_other_stage() -> None:
    for name in STAGE_ORDER:
        module = importlib.import_module(f"services.ingest.stages.{name}")
        public = [
            member
            for member_name, member in vars(module).items()
            if inspect.isfunction(member)
            and member.__module__ == module.__name__
            and not member_name.startswith("_")
        ]
        assert [f.__name__ for f in public] == [dict(STAGES)[name].__name__], name
        path = INGEST / "stages" / f"{name}.py"
        stages_imported = {
            m for m in _ingest_imports(path) if m.startswith("services.ingest.stages")
        }
        assert stages_imported <= {"services.ingest.stages.draft"}, (name, stages_imported)


def _batch_item(**extra: Any) -> bytes:
    return msgspec.json.encode(
        {
            "type": "page",
            "messageId": "m-1",
            "anonymousId": "a-1",
            "timestamp": "2024-05-01T11:59:00Z",
            "context": {
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101"
                " Firefox/125.0",
                "page": {
                    "url": "https://shop.example/pricing?utm_source=news",
                    "referrer": "https://www.google.com/",
                },
            },
            **extra,
        }
    )


def test_stepping_through_the_stages_gives_the_path_s_event() -> None:
    """The benchmark times the stages one at a time: that must be the path itself."""
    request = RequestInfo(
        project_id="acme",
        received_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        limits=EventLimits(),
        client_ip="203.0.113.7",
        collection=CollectionRules(ProjectPrivacy(PrivacyPolicy(ip_policy="truncate"))),
    )
    raw = _batch_item()
    message = decode(raw, False, request.limits)
    draft = validate(message, None, request)
    normalise_time(draft, request)
    enrich(draft, request)
    apply_policy(draft, request)
    stepped = build(draft)
    assert stepped == item_event(raw, None, request)
    assert (stepped.name, stepped.browser, stepped.utm_source) == ("$pageview", "Firefox", "news")
    assert stepped.ip == "203.0.113.0"


def _body(*items: bytes) -> bytes:
    return b'{"writeKey":"k","batch":[' + b",".join(items) + b"]}"


def test_a_batch_decoded_in_one_pass_gives_each_item_s_own_decoding() -> None:
    limits = EventLimits()
    items = [
        _batch_item(messageId=f"m-{i}", properties={"n": i, "nested": {"a": [1, 2]}})
        for i in range(3)
    ] + [_batch_item(type="track", event="Clicked", userId=7, context=None)]
    body = b'{"writeKey":"k","sentAt":"2024-05-01T12:00:00Z","context":{"locale":"de"},"batch":['
    body += b",".join(items) + b"]}"
    raw = segment_batch_decoder.decode(body)
    assert raw.batch is not None
    decoded = decode_batch(body)
    assert decoded is not None
    assert decoded.batch == [decode(item, False, limits) for item in raw.batch]
    # The body's own fields too: the body is read once.
    assert (decoded.writeKey, decoded.sentAt, decoded.context) == (
        raw.writeKey,
        raw.sentAt,
        raw.context,
    )


def test_a_batch_with_any_bad_item_is_decoded_item_by_item() -> None:
    # None sends the app to the item-by-item path, which rejects only the item at fault.
    good = _batch_item()
    for bad in (
        _batch_item(userId=["not", "an", "id"]),  # wrong type: a ValidationError
        b'"just text"',  # not an object
    ):
        assert decode_batch(_body(good, bad, good)) is None
    assert decode_batch(b'{"batch": [' + good) is None  # not JSON


def test_items_within_size_only_for_a_body_within_the_per_event_limit() -> None:
    """The one-pass batch skips measuring its items only when none can be over the limit."""
    items = [_batch_item(messageId=f"m-{i}") for i in range(10)]
    body = _body(*items)
    assert items_within_size(body, EventLimits(max_event_bytes=len(body)))
    assert not items_within_size(body, EventLimits(max_event_bytes=len(body) - 1))


def test_each_event_of_a_request_publishes_its_own_address_under_the_ip_policy() -> None:
    """The policy's form of an address is worked out once per address of a request: an event
    that forwards another address (context.ip) still gets its own, and the next gets the
    client's again."""
    request = RequestInfo(
        project_id="acme",
        received_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        limits=EventLimits(),
        client_ip="203.0.113.7",
        collection=CollectionRules(ProjectPrivacy(PrivacyPolicy(ip_policy="truncate"))),
    )
    forwarded = {"ip": "198.51.100.23"}
    items = [
        _batch_item(),
        _batch_item(context=forwarded),
        _batch_item(),
        _batch_item(context={"ip": "not an address"}),
        _batch_item(context=forwarded),
    ]
    published = [item_event(raw, None, request).ip for raw in items]
    assert published == [
        "203.0.113.0",
        "198.51.100.0",
        "203.0.113.0",
        "203.0.113.0",
        "198.51.100.0",
    ]
