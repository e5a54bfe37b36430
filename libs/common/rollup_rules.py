"""The rollup rules: which rollup keys an event or a session counts into and what it counts
there (docs/storage.md, "Rollups"). One implementation, called by the aggregator's incremental
write and by every recompute (erasure's event and session rollups), so a recompute can never
rewrite history with different numbers.

Shape: hourly rows hold totals only, for all events and pageviews (HOURLY_NAMES), bot or not;
daily rows hold totals per event name and,
for all events and for pageviews (DIMENSION_NAMES), one row per dimension value. Weeks, months
and years are merged from days when read.
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from libs.common.rollup_keys import (
    ALL_EVENTS,
    DAY,
    DIMENSION_NAMES,
    EVENT_DIMENSIONS,
    HOUR,
    HOURLY_NAMES,
    NONE_VALUE,
    SESSION_ROLLUP_DIMENSIONS,
    TOTAL,
    VISITOR_COLUMN,
    bucket_start,
)

# ---------------------------------------------------------------------------------------------
# Sessions: the bounce rule


def is_bounce(interactive_events: int) -> bool:
    """A session bounces when it has fewer than two interactive events."""
    return interactive_events < 2


def bounce_sql(interactive_events: str) -> str:
    """SQL: the bounce rule of `is_bounce` over the column expression `interactive_events`."""
    return f"({interactive_events} < 2)"


# ---------------------------------------------------------------------------------------------
# Event rollups

# (project_id, granularity, bucket, name, dim, value, bot)
RollupKey = tuple[str, str, datetime, str, str, str, bool]

# What an event contributes to rollups, in this order: the input row of `event_rollup_tallies`.
EVENT_ROLLUP_INPUT = (
    "project_id",
    "ts",
    "name",
    "is_bot",
    VISITOR_COLUMN,  # the device, as web analytics counts visitors
    *EVENT_DIMENSIONS.values(),
)
_DIMENSIONS = tuple(EVENT_DIMENSIONS)
_DIMENSION_NAMES = frozenset(DIMENSION_NAMES)
_HOURLY_NAMES = frozenset(HOURLY_NAMES)
event_rollup_input = operator.attrgetter(*EVENT_ROLLUP_INPUT)  # of an EventV1


class Tally:
    """Events counted into one rollup key, and the persons behind them. A set may be shared by
    several keys (an hour's persons are its day's when the events span one hour; a dimension
    value every event of its day has holds the day's): never change one."""

    __slots__ = ("events", "persons")

    def __init__(self, events: int, persons: set[str]) -> None:
        self.events = events
        self.persons = persons


# Rows are counted a chunk at a time, column by column: a few C-level passes per column
# (`map`, `Counter`, `set(zip(...))`) instead of a Python call per event and dimension.
_CHUNK_ROWS = 256
_NAME = operator.itemgetter(2)
_PERSON = operator.itemgetter(4)
# The page changes from event to event; the other dimensions are a visit's (its device, place
# and source), so with few visitors most events repeat one combination of them and a person.
_PAGE_INDEX = _DIMENSIONS.index("page")
_PAGE = operator.itemgetter(5 + _PAGE_INDEX)
_VISIT_INDEXES = tuple(i for i in range(len(_DIMENSIONS)) if i != _PAGE_INDEX)
_VISIT_COMBINATION = operator.itemgetter(*(5 + i for i in _VISIT_INDEXES), 4)  # person last
_VISIT_COLUMNS = tuple(operator.itemgetter(5 + i) for i in _VISIT_INDEXES)
# Combinations are counted when a chunk has at most one person per this many events.
_EVENTS_PER_PERSON_FOR_COMBINATIONS = 4

# One dimension's values in one (project, day, name, bot): events and persons per raw value.
_ValueTallies = tuple[Counter[Any], defaultdict[Any, set[str]]]


def _add_persons(
    persons_of: defaultdict[Any, set[str]], values: Iterable[Any], persons: Iterable[str]
) -> None:
    """Add each person to its value's set: a loop run entirely in C (map, deque), no bytecode
    per event."""
    deque(map(set.add, map(persons_of.__getitem__, values), persons), maxlen=0)


def _add_distinct_persons(
    persons_of: defaultdict[Any, set[str]], values: list[Any], persons: list[str]
) -> None:
    """`_add_persons` for columns with few distinct (value, person) pairs: each pair once."""
    for value, person in set(zip(values, persons, strict=True)):
        persons_of[value].add(person)


def _count_dimensions(dims: list[_ValueTallies], rows: list[Any], persons: list[str]) -> None:
    """Count `rows` (one chunk, one project, day, name and bot) into each dimension's values."""
    counts, persons_of = dims[_PAGE_INDEX]
    pages = list(map(_PAGE, rows))
    counts.update(pages)
    visit_dims = [dims[i] for i in _VISIT_INDEXES]
    if _EVENTS_PER_PERSON_FOR_COMBINATIONS * len(set(persons)) > len(rows):
        _add_persons(persons_of, pages, persons)
        for (counts, persons_of), column in zip(visit_dims, _VISIT_COLUMNS, strict=True):
            values = list(map(column, rows))
            counts.update(values)
            _add_persons(persons_of, values, persons)
        return
    _add_distinct_persons(persons_of, pages, persons)
    for combination, events in Counter(map(_VISIT_COMBINATION, rows)).items():
        person = combination[-1]
        # strict=False: the combination ends with its person, which has no dimension.
        for (counts, persons_of), value in zip(visit_dims, combination, strict=False):
            counts[value] += events
            persons_of[value].add(person)


class _HourTallies:
    """One (project, hour, bot)'s events: totals per name and of all events, and the rows'
    dimension values under each name of DIMENSION_NAMES."""

    __slots__ = ("all_events", "all_persons", "name_events", "name_persons")

    def __init__(self) -> None:
        self.all_events = 0
        self.all_persons: set[str] = set()
        self.name_events: Counter[str] = Counter()
        self.name_persons: defaultdict[str, set[str]] = defaultdict(set)

    def count(self, rows: list[Any], dimensions: dict[str, list[_ValueTallies]]) -> None:
        names = list(map(_NAME, rows))
        persons = list(map(_PERSON, rows))
        self.all_events += len(rows)
        self.all_persons.update(persons)
        name_events = Counter(names)
        self.name_events.update(name_events)
        _add_persons(self.name_persons, names, persons)
        for dimension_name, dims in dimensions.items():
            if dimension_name == ALL_EVENTS:
                _count_dimensions(dims, rows, persons)
            elif dimension_name in name_events:
                named = [
                    row for row, name in zip(rows, names, strict=True) if name == dimension_name
                ]
                _count_dimensions(dims, named, list(map(_PERSON, named)))


def _new_dimensions() -> list[_ValueTallies]:
    return [(Counter(), defaultdict(set)) for _ in _DIMENSIONS]


def event_rollup_tallies(rows: Iterable[Sequence[Any]]) -> dict[RollupKey, Tally]:
    """Every rollup key the events count into, with their event counts and persons. Each row
    holds an event's `EVENT_ROLLUP_INPUT` values, in that order.

    An event counts under its own name and under ALL_EVENTS (once, when literally named "*"):
    into its day's total and, under HOURLY_NAMES, its hour's total; and, under the names of
    DIMENSION_NAMES, into its day's row of each dimension's value (a missing value is
    NONE_VALUE).
    """
    # Rows split per (project, hour, bot), counted a chunk at a time; then hours roll up into
    # days. A person set shared by every key it is the whole of is built into a sketch once by
    # the writer.
    by_hour: dict[tuple[str, float, bool], list[Any]] = {}
    for row in rows:
        key = (row[0], row[1].timestamp() // 3600, row[3])
        found = by_hour.get(key)
        if found is None:
            by_hour[key] = [row]
        else:
            found.append(row)
    hours: dict[tuple[str, datetime, bool], _HourTallies] = {}
    daily: dict[tuple[str, datetime, bool], dict[str, list[_ValueTallies]]] = {}
    day_of: dict[datetime, datetime] = {}
    for (project_id, _, bot), hour_rows in by_hour.items():
        hour = bucket_start(hour_rows[0][1], HOUR)
        day = day_of.get(hour)
        if day is None:
            day = day_of[hour] = bucket_start(hour, DAY)
        dimensions = daily.get((project_id, day, bot))
        if dimensions is None:
            dimensions = daily[(project_id, day, bot)] = {
                name: _new_dimensions() for name in DIMENSION_NAMES
            }
        tallies = hours[(project_id, hour, bot)] = _HourTallies()
        for lo in range(0, len(hour_rows), _CHUNK_ROWS):
            tallies.count(hour_rows[lo : lo + _CHUNK_ROWS], dimensions)

    result: dict[RollupKey, Tally] = {}
    # Day totals: an hour's set serves its day as long as no other hour adds to it.
    day_totals: dict[tuple[str, datetime, str, bool], Tally] = {}
    owned: set[int] = set()

    def add_to_day(key: tuple[str, datetime, str, bool], events: int, persons: set[str]) -> None:
        total = day_totals.get(key)
        if total is None:
            day_totals[key] = Tally(events, persons)
            return
        total.events += events
        if id(total.persons) not in owned:
            total.persons = set(total.persons)
            owned.add(id(total.persons))
        total.persons |= persons

    for (project_id, hour, bot), tallies in hours.items():
        day = day_of[hour]
        # The hourly rows: every key of granularity HOUR is emitted here and nowhere else.
        result[(project_id, HOUR, hour, ALL_EVENTS, TOTAL, TOTAL, bot)] = Tally(
            tallies.all_events, tallies.all_persons
        )
        add_to_day((project_id, day, ALL_EVENTS, bot), tallies.all_events, tallies.all_persons)
        for name, events in tallies.name_events.items():
            if name == ALL_EVENTS:
                continue  # an event literally named "*" counts once, as all events
            persons = tallies.name_persons[name]
            if name in _HOURLY_NAMES:  # hour rows for HOURLY_NAMES only (migration 0027)
                result[(project_id, HOUR, hour, name, TOTAL, TOTAL, bot)] = Tally(events, persons)
            add_to_day((project_id, day, name, bot), events, persons)
    for (project_id, day, name, bot), day_total in day_totals.items():
        result[(project_id, DAY, day, name, TOTAL, TOTAL, bot)] = day_total
    for (project_id, day, bot), dimensions in daily.items():
        for name, dims in dimensions.items():
            total = day_totals.get((project_id, day, name, bot))
            if total is None:
                continue  # no event of this name that day
            for dim, (counts, persons_of) in zip(_DIMENSIONS, dims, strict=True):
                for raw, events in counts.items():
                    # A value every event of the day has: its persons are the day's.
                    persons = total.persons if events == total.events else persons_of[raw]
                    value = NONE_VALUE if raw is None or raw == "" else str(raw)
                    value_key = (project_id, DAY, day, name, dim, value, bot)
                    shown = result.get(value_key)
                    if shown is None:
                        result[value_key] = Tally(events, persons)
                    else:  # two raw values shown as one (None and "")
                        result[value_key] = Tally(shown.events + events, shown.persons | persons)
    return result


# ---------------------------------------------------------------------------------------------
# Session rollups

# The counters a session adds to its rollup rows (signed in a delta: a replaced session's old
# row subtracts its own).
SESSION_ROLLUP_COUNTERS = ("sessions", "bounces", "duration_s", "pageviews", "events")
# The session columns that place a session's contribution besides its start hour.
SESSION_KEY_COLUMNS = tuple(dict.fromkeys(("is_bot", *SESSION_ROLLUP_DIMENSIONS.values())))


def duration_sql(start_ts: str, end_ts: str) -> str:
    """SQL: a session's duration in seconds, from its first to its last event."""
    return f"extract(epoch FROM {end_ts} - {start_ts})::float8"


def session_counters_sql(session: str) -> str:
    """SQL select-list: what one session row (alias `session`) counts, named as
    SESSION_ROLLUP_COUNTERS."""
    return (
        f"1 AS sessions, {bounce_sql(f'{session}.interactive_events')}::int AS bounces,"
        f" {duration_sql(f'{session}.start_ts', f'{session}.end_ts')} AS duration_s,"
        f" {session}.pageviews::bigint AS pageviews, {session}.events::bigint AS events"
    )


_SESSION_DIMENSION_VALUES = (
    "unnest(\n    ARRAY[{}],\n    ARRAY[\n        {}\n    ]\n) AS d(dim, value)".format(
        ", ".join(f"'{dim}'" for dim in SESSION_ROLLUP_DIMENSIONS),
        ",\n        ".join(
            f"coalesce(nullif(c.{col}, ''), '{NONE_VALUE}')"
            for col in SESSION_ROLLUP_DIMENSIONS.values()
        ),
    )
)
_SUMS = ",\n    ".join(f"sum(c.{counter}) AS {counter}" for counter in SESSION_ROLLUP_COUNTERS)


def session_rollup_rows_sql(contributions: str) -> str:
    """SQL query: the session_rollups rows (project_id, granularity, bucket, dim, value, bot and
    the summed SESSION_ROLLUP_COUNTERS) of the relation `contributions`, whose rows carry
    project_id, hour (the session's start hour, UTC), SESSION_KEY_COLUMNS and signed counters.
    Its hour's total, its day's total and its day's row of each dimension's value."""
    # Each contribution's day computed once (OFFSET 0 keeps the subquery from being flattened
    # into the dimension rows, where date_trunc and its time zone lookup ran once per
    # dimension: ~5% of the session merge's PostgreSQL CPU on live traffic).
    by_day = f"(SELECT *, date_trunc('day', hour, 'UTC') AS day FROM {contributions} OFFSET 0) c"
    return f"""SELECT c.project_id, '{HOUR}'::"char" AS granularity, c.hour AS bucket,
    '{TOTAL}' AS dim, '{TOTAL}' AS value, c.is_bot AS bot,
    {_SUMS}
FROM {contributions} c
GROUP BY c.project_id, c.hour, c.is_bot
UNION ALL
SELECT c.project_id, '{DAY}'::"char", c.day, '{TOTAL}', '{TOTAL}', c.is_bot,
    {_SUMS}
FROM {by_day}
GROUP BY c.project_id, c.day, c.is_bot
UNION ALL
SELECT c.project_id, '{DAY}'::"char", c.day, d.dim, d.value, c.is_bot,
    {_SUMS}
FROM {by_day} CROSS JOIN LATERAL {_SESSION_DIMENSION_VALUES}
GROUP BY c.project_id, c.day, d.dim, d.value, c.is_bot"""
