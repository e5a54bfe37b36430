"""Per-event validation rules and the rejection reasons a sender sees."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from libs.common.errors import StrataError
from libs.common.storable_text import NUL_PROBLEM, may_hold_nul, nul_path


class ItemRejected(StrataError):
    """One event of a request is invalid; `reason` names the field and the problem."""

    code = "item_rejected"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EventLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The bounds every event must respect (from IngestSettings)."""

    max_event_bytes: int = 32 * 1024
    max_name_chars: int = 200
    max_property_depth: int = 5
    max_properties: int = 200
    future_tolerance_s: int = 24 * 3600


_MSGSPEC_PATH = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


ISO_TIME_HINT = "an ISO-8601 time such as 2024-05-01T12:00:00.000Z"


def describe_validation_error(exc: msgspec.ValidationError, time_hint: str = ISO_TIME_HINT) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.event`" as "event: expected `str`, got
    `int`", the field first, in the words of the payload's own field names."""
    match = _MSGSPEC_PATH.match(str(exc))
    assert match is not None  # the pattern matches any text
    problem, path = match.group("problem"), (match.group("path") or "").lstrip(".")
    problem = (problem[:1].lower() + problem[1:]).replace(" | null`", "`")
    if "RFC3339" in problem:
        problem += f" (expected {time_hint})"
    if problem.startswith("expected `object`") and not path:
        return f"an event must be a JSON object, not {problem.rsplit('got ', 1)[-1]}"
    return f"{path}: {problem}" if path else problem


def check_event_size(size: int, limits: EventLimits) -> None:
    if size > limits.max_event_bytes:
        raise ItemRejected(
            f"event is {size} bytes; the limit is {limits.max_event_bytes} bytes per event"
        )


def check_event_name(name: str | None, field: str, limits: EventLimits) -> str:
    """A required, non-blank name of bounded length."""
    if name is None or not name.strip():
        raise ItemRejected(f"{field} is required")
    if len(name) > limits.max_name_chars:
        raise ItemRejected(
            f"{field}: is {len(name)} characters; the limit is {limits.max_name_chars}"
        )
    return name


def identifier(value: str | int | None) -> str | None:
    """An id as text; blank ids count as absent."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def check_shape(values: dict[str, Any], field: str, limits: EventLimits) -> None:
    """Bound nesting depth and the number of keys (counted at every level) of a properties or
    traits object: they become JSON columns that every query may have to read."""
    keys = len(values)
    for value in values.values():
        # Fast path: most properties are flat, so only containers are walked.
        if type(value) is dict or type(value) is list:
            keys += _nested_keys(value, 2, field, limits)
    if keys > limits.max_properties:
        raise ItemRejected(
            f"{field}: has {keys} keys; the limit is {limits.max_properties} (nested keys count)"
        )


def _nested_keys(value: Any, depth: int, field: str, limits: EventLimits) -> int:
    if depth > limits.max_property_depth:
        raise ItemRejected(f"{field}: nested deeper than {limits.max_property_depth} levels")
    keys = 0
    children: Any
    if type(value) is dict:
        keys = len(value)
        children = value.values()
    else:
        children = value
    for child in children:
        if type(child) is dict or type(child) is list:
            keys += _nested_keys(child, depth + 1, field, limits)
    return keys


def check_no_nul(raw: bytes | msgspec.Raw) -> None:
    """Reject an item whose JSON holds a NUL character anywhere (ItemRejected naming it)."""
    if not may_hold_nul(raw if isinstance(raw, bytes) else bytes(raw)):
        return
    try:
        where = nul_path(msgspec.json.decode(raw))
    except (msgspec.DecodeError, RecursionError):
        return  # the item's own decoding reports what is wrong with it
    if where is not None:
        raise ItemRejected(f"{where}: {NUL_PROBLEM}")
