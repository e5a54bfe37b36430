"""What a saved insight is: one query of the analytics API and how to chart it.

An insight's definition is `{"kind": ..., "query": ..., "chart": {...}}`. The kind names the
endpoint; `query` is that endpoint's query parameters (GET kinds, as `{name: value or [values]}`)
or its JSON body (POST kinds), without the date range, which the dashboard supplies. The same
table decides which API requests a share link may make: exactly its dashboard's insights'
queries, over any date range (`RANGE_PARAMS`), and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from services.query.params import ParamError

API = "/api/v1/analytics"


@dataclass(frozen=True)
class InsightKind:
    method: str  # GET: `query` is the query string; POST: the JSON body
    path: str


KINDS: dict[str, InsightKind] = {
    "metrics": InsightKind("GET", f"{API}/metrics"),
    "pages": InsightKind("GET", f"{API}/pages"),
    "sources": InsightKind("GET", f"{API}/sources"),
    "devices": InsightKind("GET", f"{API}/devices"),
    "performance": InsightKind("GET", f"{API}/performance"),
    "funnel": InsightKind("POST", f"{API}/funnels"),
    "retention": InsightKind("POST", f"{API}/retention"),
    "paths": InsightKind("POST", f"{API}/paths"),
    "experiment": InsightKind("POST", f"{API}/experiments/analyze"),
}
BY_ROUTE = {(k.method, k.path): name for name, k in KINDS.items()}

# What a viewer of a saved insight may change without asking a different question.
RANGE_PARAMS = frozenset({"from", "to", "timezone", "interval", "project"})


class InsightDefinition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: str
    query: dict[str, Any] = msgspec.field(default_factory=dict)
    chart: dict[str, Any] = msgspec.field(default_factory=dict)


def _as_values(value: Any, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, str | int | float):
            out.append(str(v))
        else:
            raise ParamError(where, "a query parameter's value is a string or a list of strings")
    return out


def canonical_params(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Query parameters without the range, as sorted values per name."""
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in RANGE_PARAMS:
            continue
        out.setdefault(name, []).append(value)
    return {name: sorted(values) for name, values in sorted(out.items())}


def canonical_body(body: Any) -> Any:
    """A JSON body without the range fields."""
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k not in RANGE_PARAMS}
    return body


def check_definition(definition: InsightDefinition) -> None:
    """400 naming the problem when the definition cannot be an insight."""
    if definition.kind not in KINDS:
        raise ParamError(
            "definition.kind", f"unknown kind {definition.kind!r} (one of {', '.join(KINDS)})"
        )
    if KINDS[definition.kind].method == "GET":
        for name, value in definition.query.items():
            _as_values(value, f"definition.query.{name}")


def stored_signature(definition: InsightDefinition) -> tuple[str, str, str]:
    """(method, path, canonical query) of a saved insight."""
    kind = KINDS[definition.kind]
    if kind.method == "GET":
        pairs = [
            (name, v)
            for name, value in definition.query.items()
            for v in _as_values(value, f"definition.query.{name}")
        ]
        canonical: Any = canonical_params(pairs)
    else:
        canonical = canonical_body(definition.query)
    return kind.method, kind.path, msgspec.json.encode(canonical, order="sorted").decode()


def request_signature(method: str, path: str, pairs: list[tuple[str, str]], body: bytes) -> str:
    """The canonical query of an API request, comparable with `stored_signature`'s."""
    if method == "GET":
        return msgspec.json.encode(canonical_params(pairs), order="sorted").decode()
    try:
        decoded = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        return ""
    return msgspec.json.encode(canonical_body(decoded), order="sorted").decode()
