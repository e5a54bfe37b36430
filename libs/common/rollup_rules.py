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
    several keys (an hour's persons are its day's when the events span one hour); it is copied
    before the first change of a shared one."""

    __slots__ = ("events", "owned", "persons")

    def __init__(self, events: int, persons: set[str], owned: bool) -> None:
        self.events = events
        self.persons = persons
        self.owned = owned

    def add(self, events: int, persons: set[str]) -> None:
        self.events += events
        if persons is self.persons:
            return
        if not self.owned:
            self.persons = set(self.persons)
            self.owned = True
        self.persons |= persons


class _Buckets:
    """Hour and day starts of event times (cached: a batch spans few hours)."""

    def __init__(self) -> None:
        self._hours: dict[float, datetime] = {}
        self._days: dict[datetime, datetime] = {}

    def hour(self, ts: datetime) -> datetime:
        hour_number = ts.timestamp() // 3600
        hour = self._hours.get(hour_number)
        if hour is None:
            hour = self._hours[hour_number] = bucket_start(ts, HOUR)
        return hour

    def day(self, hour: datetime) -> datetime:
        day = self._days.get(hour)
        if day is None:
            day = self._days[hour] = bucket_start(hour, DAY)
        return day


def _count(tallies: dict[Any, Tally], key: Any, person: str) -> None:
    tally = tallies.get(key)
    if tally is None:
        tallies[key] = Tally(1, {person}, True)
    else:
        tally.events += 1
        tally.persons.add(person)


def _merge_into(target: dict[Any, Tally], key: Any, tally: Tally) -> None:
    found = target.get(key)
    if found is None:
        target[key] = Tally(tally.events, tally.persons, False)
    else:
        found.add(tally.events, tally.persons)


def event_rollup_tallies(rows: Iterable[Sequence[Any]]) -> dict[RollupKey, Tally]:
    """Every rollup key the events count into, with their event counts and persons. Each row
    holds an event's `EVENT_ROLLUP_INPUT` values, in that order.

    An event counts under its own name and under ALL_EVENTS (once, when literally named "*"):
    into its day's total and, under HOURLY_NAMES, its hour's total; and, under the names of
    DIMENSION_NAMES, into its day's row of each dimension's value (a missing value is
    NONE_VALUE).
    """
    # Tally totals per (project, hour, name, bot) and dimensions per (project, day, name, bot)
    # for the names that have them, then roll names up into ALL_EVENTS and hours into days; a
    # person set shared by every key it is the whole of is built into a sketch once by the
    # writer.
    buckets = _Buckets()
    hourly: dict[tuple[str, datetime, str, bool], Tally] = {}
    daily: dict[tuple[str, datetime, str, bool], list[dict[Any, Tally]]] = {}
    for project_id, ts, name, bot, person, *values in rows:
        hour = buckets.hour(ts)
        _count(hourly, (project_id, hour, name, bot), person)
        day = buckets.day(hour)
        for dimension_name in (ALL_EVENTS, name) if name in _DIMENSION_NAMES else (ALL_EVENTS,):
            head = (project_id, day, dimension_name, bot)
            dims = daily.get(head)
            if dims is None:
                dims = daily[head] = [{} for _ in _DIMENSIONS]
            for tallies, value in zip(dims, values, strict=True):
                _count(tallies, value, person)
            if dimension_name == name:
                break  # an event literally named "*" counts once, as all events
    for (project_id, hour, name, bot), tally in list(hourly.items()):
        if name != ALL_EVENTS:
            _merge_into(hourly, (project_id, hour, ALL_EVENTS, bot), tally)
    result: dict[RollupKey, Tally] = {}
    for (project_id, hour, name, bot), tally in hourly.items():
        # Hour rows for HOURLY_NAMES only (migration 0027); every name keeps its day total.
        if name in _HOURLY_NAMES:
            result[(project_id, HOUR, hour, name, TOTAL, TOTAL, bot)] = tally
        _merge_into(result, (project_id, DAY, buckets.day(hour), name, TOTAL, TOTAL, bot), tally)
    for (project_id, day, name, bot), dims in daily.items():
        for dim, tallies in zip(_DIMENSIONS, dims, strict=True):
            for raw, tally in tallies.items():
                value = NONE_VALUE if raw is None or raw == "" else str(raw)
                _merge_into(result, (project_id, DAY, day, name, dim, value, bot), tally)
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
    return f"""SELECT c.project_id, '{HOUR}'::"char" AS granularity, c.hour AS bucket,
    '{TOTAL}' AS dim, '{TOTAL}' AS value, c.is_bot AS bot,
    {_SUMS}
FROM {contributions} c
GROUP BY c.project_id, c.hour, c.is_bot
UNION ALL
SELECT c.project_id, '{DAY}'::"char", date_trunc('day', c.hour, 'UTC'),
    '{TOTAL}', '{TOTAL}', c.is_bot,
    {_SUMS}
FROM {contributions} c
GROUP BY c.project_id, date_trunc('day', c.hour, 'UTC'), c.is_bot
UNION ALL
SELECT c.project_id, '{DAY}'::"char", date_trunc('day', c.hour, 'UTC'),
    d.dim, d.value, c.is_bot,
    {_SUMS}
FROM {contributions} c CROSS JOIN LATERAL {_SESSION_DIMENSION_VALUES}
GROUP BY c.project_id, date_trunc('day', c.hour, 'UTC'), d.dim, d.value, c.is_bot"""
