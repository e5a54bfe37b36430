"""How a session row stores the times and ids of the events its entry page, exit page and
traffic source came from (migration 0027), and how readers get them back.

Most sessions take all three from their first event: a time or id equal to the session's own
(`start_ts`, `first_event_id`) is stored as NULL and read back as it. Whether there is an entry
and exit page at all is told by `pageviews > 0` (they are the first and last pageview), whether
there is a source by `channel`. Rows written before migration 0016 have no ids
(`first_event_id` NULL): their values read back with the id NULL (compared as ''), and a NULL
`source_ts` as `start_ts`, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FIRST_TS, FIRST_ID = "start_ts", "first_event_id"
# (the value's prefix, the stored column that says the session has one; None: always stored)
_TIED_TO_FIRST = (("entry", "pageviews"), ("exit", "pageviews"), ("source", None))
ENCODED_COLUMNS = tuple(f"{p}_{c}" for p, _ in _TIED_TO_FIRST for c in ("ts", "event_id"))


def _reference(column: str) -> str:
    return FIRST_TS if column.endswith("_ts") else FIRST_ID


def _decoded_sql(column: str, alias: str) -> str:
    presence = dict(_TIED_TO_FIRST)[column.split("_", 1)[0]]
    value = f"coalesce({alias}.{column}, {alias}.{_reference(column)})"
    if presence is not None:
        value = f"CASE WHEN {alias}.{presence} > 0 THEN {value} END"
    return f"{value} AS {column}"


def decoded_columns_sql(columns: tuple[str, ...], alias: str = "s") -> str:
    """SQL select-list: `columns` of a `sessions` row (as `alias`) with the encoded ones read
    back."""
    return ", ".join(
        _decoded_sql(c, alias) if c in ENCODED_COLUMNS else f"{alias}.{c}" for c in columns
    )


def encoded_columns_sql(columns: tuple[str, ...], alias: str | None = None) -> str:
    """SQL select-list: `columns` of a decoded session row (as `alias`, when given) as
    `sessions` stores them."""
    q = "" if alias is None else f"{alias}."
    return ", ".join(
        f"nullif({q}{c}, {q}{_reference(c)})" if c in ENCODED_COLUMNS else f"{q}{c}"
        for c in columns
    )


def decoded_session(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `sessions` row as a dict, its encoded values read back (as `decoded_columns_sql`)."""
    out = dict(row)
    for column in ENCODED_COLUMNS:
        prefix = column.split("_", 1)[0]
        presence = dict(_TIED_TO_FIRST)[prefix]
        if presence is not None and not row[presence] > 0:
            out[column] = None
        elif row[column] is None:
            out[column] = row[_reference(column)]
    return out
