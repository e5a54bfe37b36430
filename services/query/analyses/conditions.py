"""Property conditions and dimension filters as DuckDB SQL over `events_scan` (alias `e`) and
`persons` (alias `pt`). Every user-given value is a bound parameter, never pasted into SQL.

A property name is an event column (`path`, `country`, ...), an event property (`plan`, or
`properties.plan.tier` for a nested key), or a person trait (`person.plan`). Properties are
compared as their JSON text (`42`, `true`, `pro`); numbers compare numerically."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import duckdb

from libs.common.model.columns import FILTERABLE_EVENT_COLUMNS
from libs.common.rollup_keys import EVENT_DIMENSIONS, NONE_VALUE
from libs.common.schemas.events_v1 import ALIAS, GROUP, IDENTIFY
from services.query.analyses.event_order import EventOrder
from services.query.analyses.requests import Condition, EventMatch, PropertyValue
from services.query.analyses.stream_parts import (
    MIN_PART_EVENTS,
    part_count,
    person_parts,
    walk_parts,
)
from services.query.column_cache import CACHED_VIEW_SUFFIX, CachedRows
from services.query.metric_query import SqlParams
from services.query.params import EVENT_NAME_DIMENSION, Filters, ParamError

# Columns of `events_scan` a condition or breakdown may name directly.
EVENT_COLUMNS = FILTERABLE_EVENT_COLUMNS
PERSON_PREFIX = "person."
PROPERTIES_PREFIX = "properties."
# The clicked element and its ancestors as the tracker records a `$click` (its `$elements`
# property: "body > form#signup > button.btn.primary", root first, classes sorted).
ELEMENT_PROPERTY = "element"
ELEMENTS_KEY = "$elements"
# An event match that any action satisfies: every event but the identity bookkeeping calls.
ANY_EVENT = "$any"
# Identity calls are bookkeeping, not actions (they never break a strict funnel either).
NON_ACTION_EVENTS = (IDENTIFY, ALIAS, GROUP)

EQUALITY_OPERATORS = ("eq", "neq")
TEXT_OPERATORS = ("contains", "not_contains", "regex", "not_regex")
NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte")
PRESENCE_OPERATORS = ("is_set", "is_not_set")
SELECTOR_OPERATOR = "selector"
OPERATORS = (
    *EQUALITY_OPERATORS,
    *TEXT_OPERATORS,
    *NUMERIC_OPERATORS,
    *PRESENCE_OPERATORS,
    SELECTOR_OPERATOR,
)
T = TypeVar("T")
_NUMERIC_SQL = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_KEY = re.compile(r'^[^"\\\x00-\x1f]+$')


@dataclass(frozen=True)
class PropertyRef:
    """Where a property lives: an event column, a path into the event's properties, or a path
    into the person's traits."""

    source: str  # "column" | "event" | "person"
    path: tuple[str, ...]  # (column,) or the JSON keys, outermost first

    @property
    def needs_persons(self) -> bool:
        return self.source == "person"


def property_ref(field: str, raw: str) -> PropertyRef:
    """Resolve a property name; a ParamError names `field` when it is malformed."""
    if raw in EVENT_COLUMNS:
        return PropertyRef("column", (raw,))
    if raw == ELEMENT_PROPERTY:
        return PropertyRef("event", (ELEMENTS_KEY,))
    if raw.startswith(PERSON_PREFIX):
        ref = PropertyRef("person", tuple(raw[len(PERSON_PREFIX) :].split(".")))
    elif raw.startswith(PROPERTIES_PREFIX):
        ref = PropertyRef("event", tuple(raw[len(PROPERTIES_PREFIX) :].split(".")))
    else:
        # A bare name is one top-level key, dots and all; `properties.a.b` says "nested".
        ref = PropertyRef("event", (raw,))
    if not all(_KEY.match(part) for part in ref.path):
        raise ParamError(
            field,
            f"{raw!r} is not a property name (an event column such as path, a property key, "
            "properties.<nested.key> or person.<trait>; no quotes, backslashes or control "
            "characters, no empty parts)",
        )
    return ref


def json_path(ref: PropertyRef) -> str:
    """The JSON path of a property, each key quoted so keys may hold spaces and dots."""
    return "$." + ".".join(f'"{part}"' for part in ref.path)


def property_sql(ref: PropertyRef, params: SqlParams) -> str:
    """The property's text value (NULL when missing)."""
    if ref.source == "column":
        return f"e.{ref.path[0]}"
    column = "pt.traits" if ref.source == "person" else "e.properties"
    return f"json_extract_string({column}, {params.add(json_path(ref))})"


def _scalar_sql(text: str, value: PropertyValue, params: SqlParams) -> str:
    """`text` equals `value`: numbers numerically, booleans as true/false, text as is."""
    if isinstance(value, bool):
        return f"lower({text}) = {params.add('true' if value else 'false')}"
    if isinstance(value, int | float):
        return f"TRY_CAST({text} AS DOUBLE) = {params.add(float(value))}"
    return f"{text} = {params.add(value)}"


def _values(field: str, cond: Condition) -> list[PropertyValue]:
    if cond.value is None:
        raise ParamError(f"{field}.value", f"operator {cond.operator} needs a value")
    values = cond.value if isinstance(cond.value, list) else [cond.value]
    if not values:
        raise ParamError(f"{field}.value", "must hold at least one value")
    return values


def check_regex(field: str, pattern: str) -> None:
    """400 for a pattern DuckDB's RE2 cannot compile (lookarounds, backreferences, ...)."""
    try:
        duckdb.execute("SELECT regexp_matches('', $1)", [pattern]).fetchall()
    except duckdb.Error as exc:
        raise ParamError(field, f"invalid regular expression {pattern!r}: {exc}") from None


def check_replacement(field: str, pattern: str, replacement: str) -> None:
    """400 for a regexp_replace replacement RE2 refuses with `pattern`: a lone trailing
    backslash, or a group (`\\2`) the pattern does not have."""
    try:
        duckdb.execute("SELECT regexp_replace('', $1, $2)", [pattern, replacement]).fetchall()
    except duckdb.Error as exc:
        problem = str(exc).split("regexp_replace: ", 1)[-1]
        raise ParamError(
            field,
            f"invalid replacement {replacement!r}: {problem} (\\1 names a group, \\\\ writes a"
            " backslash)",
        ) from None


_NAME = "[A-Za-z0-9_-]+"
_COMPOUND_PART = re.compile(r"([#.])([A-Za-z0-9_-]+)")
_TAG = re.compile(r"^(\*|[A-Za-z][A-Za-z0-9-]*)")


def _compound_regex(field: str, compound: str) -> str:
    """RE2 for one element token matching a compound selector `tag#id.class...`."""
    tag_match = _TAG.match(compound)
    tag = tag_match.group(1) if tag_match else None
    rest = compound[tag_match.end() :] if tag_match else compound
    ids: list[str] = []
    classes: list[str] = []
    position = 0
    for part in _COMPOUND_PART.finditer(rest):
        if part.start() != position:
            break
        (ids if part.group(1) == "#" else classes).append(part.group(2))
        position = part.end()
    if position != len(rest) or len(ids) > 1 or not (tag or ids or classes):
        raise ParamError(
            f"{field}.value",
            f"{compound!r} is not a supported selector part: tag, #id and .class"
            " (e.g. button#buy.primary), joined by spaces or >",
        )
    sql = tag.lower() if tag and tag != "*" else "[a-z0-9-]+"
    sql += f"#{ids[0]}" if ids else f"(?:#{_NAME})?"
    sql += f"(?:\\.{_NAME})*"
    for name in sorted(classes):  # the tracker records classes sorted
        sql += f"\\.{name}(?:\\.{_NAME})*"
    return sql


def selector_regex(field: str, selector: str) -> str:
    """A CSS-like selector (compound parts `tag#id.class`, descendant ` ` and child `>`
    combinators) as an RE2 over an element chain; the last part is the clicked element."""
    tokens = selector.replace(">", " > ").split()
    if not tokens or tokens[0] == ">" or tokens[-1] == ">":
        raise ParamError(f"{field}.value", f"{selector!r} is not a selector (e.g. form button.buy)")
    regex = "^(?:.* > )?"
    child = False
    first = True
    for token in tokens:
        if token == ">":
            if child:
                raise ParamError(f"{field}.value", f"{selector!r} has two > in a row")
            child = True
            continue
        if not first:
            regex += " > " if child else " > (?:.* > )?"
        regex += _compound_regex(field, token)
        child, first = False, False
    return regex + "$"


def condition_sql(
    field: str, cond: Condition, params: SqlParams, *, in_filter: bool = False
) -> str:
    """A boolean SQL expression (never NULL) for one condition; `field` names it in errors.
    With `in_filter` a positive condition may be NULL where it does not hold (a missing
    property): fine where NULL counts as false (WHERE, CASE WHEN, AND/OR with no NOT above)."""

    def known(test: str) -> str:
        # coalesce costs a wrapper per row; only a negation (or a caller's NOT) needs it.
        return test if in_filter else f"coalesce({test}, false)"

    if cond.operator not in OPERATORS:
        raise ParamError(
            f"{field}.operator",
            f"unknown operator {cond.operator!r} (one of {', '.join(OPERATORS)})",
        )
    ref = property_ref(f"{field}.property", cond.property)
    text = property_sql(ref, params)
    op = cond.operator
    if op in PRESENCE_OPERATORS:
        return f"({text} IS {'NOT ' if op == 'is_set' else ''}NULL)"
    if op == SELECTOR_OPERATOR:
        if cond.property != ELEMENT_PROPERTY or not isinstance(cond.value, str):
            raise ParamError(
                f"{field}.operator",
                "selector matches the clicked element: property element, value a selector",
            )
        regex = selector_regex(field, cond.value)
        return known(f"regexp_matches({text}, {params.add(regex)})")
    values = _values(field, cond)
    if op in EQUALITY_OPERATORS:
        matches = " OR ".join(_scalar_sql(text, v, params) for v in values)
        # A missing property equals nothing, so `neq` matches it.
        if op == "neq":
            return f"NOT coalesce({matches}, false)"
        return f"({matches})" if in_filter else f"coalesce({matches}, false)"
    if len(values) != 1:
        raise ParamError(f"{field}.value", f"operator {op} takes a single value")
    value = values[0]
    if op in NUMERIC_OPERATORS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(f"{field}.value", f"operator {op} needs a number, not {value!r}")
        cmp = _NUMERIC_SQL[op]
        return known(f"TRY_CAST({text} AS DOUBLE) {cmp} {params.add(float(value))}")
    if not isinstance(value, str):
        raise ParamError(f"{field}.value", f"operator {op} needs text, not {value!r}")
    if op in ("contains", "not_contains"):
        # Case-insensitive, as users type a fragment of a URL or title.
        matches = f"contains(lower({text}), {params.add(value.lower())})"
    else:
        check_regex(f"{field}.value", value)
        matches = f"regexp_matches({text}, {params.add(value)})"
    return known(matches) if op in ("contains", "regex") else f"NOT coalesce({matches}, false)"


def conditions_sql(
    field: str, conditions: Sequence[Condition], params: SqlParams, *, in_filter: bool = False
) -> str:
    """All conditions (AND); TRUE when there are none. `in_filter`: see `condition_sql`."""
    parts = [
        condition_sql(f"{field}[{i}]", cond, params, in_filter=in_filter)
        for i, cond in enumerate(conditions)
    ]
    return " AND ".join(parts) if parts else "TRUE"


def needs_persons(conditions: Sequence[Condition]) -> bool:
    """Whether any condition reads a person trait (the query must join `persons`)."""
    return any(c.property.startswith(PERSON_PREFIX) for c in conditions)


def event_match_sql(
    field: str, match: EventMatch, params: SqlParams, *, in_filter: bool = False
) -> str:
    """`e` is this event with these conditions (`in_filter`: see `condition_sql`)."""
    if not match.event:
        raise ParamError(f"{field}.event", "must name an event")
    if match.event == ANY_EVENT:
        names = ", ".join(params.add(n) for n in NON_ACTION_EVENTS)
        name = f"e.name NOT IN ({names})"
    else:
        name = f"e.name = {params.add(match.event)}"
    if not match.conditions:
        return name
    conditions = conditions_sql(
        f"{field}.conditions", match.conditions, params, in_filter=in_filter
    )
    return f"({name} AND {conditions})"


def dimension_value_sql(dimension: str) -> str:
    """A metrics-endpoint dimension's value on `e`, missing or empty as '(none)'."""
    if dimension == EVENT_NAME_DIMENSION:
        return "e.name"
    return f"coalesce(nullif(e.{EVENT_DIMENSIONS[dimension]}, ''), '{NONE_VALUE}')"


def filters_sql(filters: Filters, params: SqlParams) -> list[str]:
    """The metrics endpoint's `filter=dimension:value` rules as WHERE terms on `e`."""
    return [
        f"list_contains({params.add(list(f.values))}::VARCHAR[],"
        f" {dimension_value_sql(f.dimension)})"
        for f in filters
    ]


def breakdown_sql(field: str, raw: str, params: SqlParams) -> tuple[str, bool]:
    """(SQL of a breakdown property's value, missing as '(none)'; whether it needs persons)."""
    ref = property_ref(field, raw)
    return f"coalesce(nullif({property_sql(ref, params)}, ''), '{NONE_VALUE}')", ref.needs_persons


# A query's columns of the scan (alias `e`; conditions and filters name them so), for
# `EventScope.view`.
_NAMED_COLUMN = re.compile(r"\be\.(\w+)")
_ALL_COLUMNS = re.compile(r"\be\.\*")


@dataclass(frozen=True)
class EventScope:
    """Which rows of `events_scan` an analysis reads: a time range, bots or not, the metrics
    endpoint's filters, and cohort tables (registered `person_id` tables) persons must be in."""

    start: datetime
    end: datetime
    include_bots: bool = False
    filters: Filters = field(default_factory=Filters)
    cohort_tables: tuple[str, ...] = ()
    # The scan also holds `events_scan_keyed` (services/query/person_keys.py): the same rows
    # with the person as an integer `person_key` instead of `person_id`.
    person_keys: bool = False
    # Every row of the scan has a position (`tie_row`; services/query/event_scan.py,
    # `ties_by_position`): readers ordering ties by position need not read `tie_id`.
    ties_by_position: bool = False
    # The columns of the scan's `*_cached` views (event_scan.py; empty: it has none), which
    # read the files the column cache holds from memory instead of Parquet.
    cached_columns: frozenset[str] = frozenset()
    # Every row of the scan as in-memory tables, when they hold them all (every day file's
    # columns cached, beside the hot rows): funnels then read them without DuckDB
    # (cached_rows.py). None otherwise.
    cached_rows: CachedRows | None = None
    # Threads a large stream's kernel is split over by person (stream_parts.py), and the
    # events from which it is split (tests lower it to split small streams).
    threads: int = 1
    part_min_events: int = MIN_PART_EVENTS

    def walk(self, events: EventOrder, work: Callable[[EventOrder], T]) -> list[T]:
        """`work(part)` per person part of an ordered stream, in person order, on `threads`
        threads; one call with the whole stream when it is small or there is one thread."""
        parts = part_count(events.rows.size, self.threads, self.part_min_events)
        if parts == 1:
            return [work(events)]
        cut = person_parts(events, parts)
        return walk_parts(parts, lambda part: work(cut[part]))

    def view(self, view: str, sql: str) -> str:
        """`view`, or its variant over cached columns when the scan has one and `sql` (a query
        over `view` as `e`, every column named `e.<column>`) names only columns it has."""
        return cached_view(self.cached_columns, view, sql)

    def where(self, params: SqlParams, start: datetime | None = None) -> str:
        """WHERE terms on `e` (AND-ed); `start` overrides the range start."""
        terms = [
            f"e.ts >= {params.add(start or self.start)}",
            f"e.ts < {params.add(self.end)}",
        ]
        if not self.include_bots:
            terms.append("NOT e.is_bot")
        terms.extend(filters_sql(self.filters, params))
        terms.extend(
            f"e.person_id IN (SELECT person_id FROM {table})" for table in self.cohort_tables
        )
        return " AND ".join(terms)


def named_columns(sql: str) -> list[str]:
    """The columns SQL over a view as `e` names (`e.<column>`)."""
    return _NAMED_COLUMN.findall(sql)


def cached_view(cached_columns: frozenset[str], view: str, sql: str) -> str:
    """`view`, or its variant over cached columns (`cached_columns`: a scan's, empty when it
    has none) when `sql`, a query over `view` as `e` naming every column `e.<column>`, names
    only columns the variant has."""
    if not cached_columns or _ALL_COLUMNS.search(sql):
        return view
    named = set(_NAMED_COLUMN.findall(sql))
    return view + CACHED_VIEW_SUFFIX if named <= cached_columns else view
