"""The rollup tallies (what the aggregator upserts and erasure recomputes) against the rules as
docs/storage.md states them, counted event by event."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from libs.common.rollup_keys import (
    ALL_EVENTS,
    DAY,
    DIMENSION_NAMES,
    EVENT_DIMENSIONS,
    HOUR,
    HOURLY_NAMES,
    NONE_VALUE,
    TOTAL,
    bucket_start,
)
from libs.common.rollup_rules import EVENT_ROLLUP_INPUT, event_rollup_tallies
from libs.common.schemas.events_v1 import PAGEVIEW


def reference_tallies(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], tuple[int, set[str]]]:
    """Event by event: its day's total under its name and under ALL_EVENTS (once when it is
    literally ALL_EVENTS), its hour's total under those of them in HOURLY_NAMES, and, under
    the DIMENSION_NAMES it belongs to, its day's row of each dimension's value (a missing or
    empty value is NONE_VALUE)."""
    out: dict[tuple[Any, ...], tuple[int, set[str]]] = {}

    def count(key: tuple[Any, ...], person: str) -> None:
        events, persons = out.get(key, (0, set()))
        out[key] = (events + 1, persons | {person})

    for project_id, ts, name, bot, person, *values in rows:
        hour, day = bucket_start(ts, HOUR), bucket_start(ts, DAY)
        for counted_name in dict.fromkeys((name, ALL_EVENTS)):
            if counted_name in HOURLY_NAMES:
                count((project_id, HOUR, hour, counted_name, TOTAL, TOTAL, bot), person)
            count((project_id, DAY, day, counted_name, TOTAL, TOTAL, bot), person)
            if counted_name in DIMENSION_NAMES:
                for dim, value in zip(EVENT_DIMENSIONS, values, strict=True):
                    shown = NONE_VALUE if value is None or value == "" else str(value)
                    count((project_id, DAY, day, counted_name, dim, shown, bot), person)
    return out


def random_rows(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    start = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    rows = []
    for _ in range(n):
        ts = (start + timedelta(minutes=rng.randrange(0, 240))).astimezone(rng.choice(zones))
        values = [rng.choice([None, "", "a", "b", "c"]) for _ in EVENT_DIMENSIONS]
        rows.append(
            (
                rng.choice(["p1", "p2"]),
                ts,
                rng.choice([PAGEVIEW, PAGEVIEW, "Signed Up", ALL_EVENTS]),
                rng.random() < 0.2,
                f"visitor-{rng.randrange(12)}",
                *values,
            )
        )
    return rows


def test_tallies_follow_the_rules_event_by_event() -> None:
    rng = random.Random(7)
    for n in (1, 5, 300):
        rows = random_rows(rng, n)
        assert len(rows[0]) == len(EVENT_ROLLUP_INPUT)
        tallies = event_rollup_tallies(iter(rows))
        got = {key: (t.events, set(t.persons)) for key, t in tallies.items()}
        assert got == reference_tallies(rows)


def test_keys_sharing_a_person_set_do_not_leak_into_each_other() -> None:
    # An hour's persons may be its day's set too (shared until changed): a later hour of the
    # same day must not add its persons to the first hour's set.
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    values = ("x",) * len(EVENT_DIMENSIONS)
    rows = [
        ("p", at, PAGEVIEW, False, "alice", *values),
        ("p", at + timedelta(hours=1), PAGEVIEW, False, "bob", *values),
    ]
    tallies = event_rollup_tallies(rows)
    first_hour = ("p", HOUR, at, PAGEVIEW, TOTAL, TOTAL, False)
    day = ("p", DAY, at.replace(hour=0), PAGEVIEW, TOTAL, TOTAL, False)
    assert tallies[first_hour].persons == {"alice"}
    assert tallies[day].persons == {"alice", "bob"}
    assert tallies[day].events == 2


def test_no_events_no_tallies() -> None:
    assert event_rollup_tallies([]) == {}


def test_other_names_have_day_rows_but_no_hour_rows() -> None:
    at = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    values = ("x",) * len(EVENT_DIMENSIONS)
    tallies = event_rollup_tallies([("p", at, "Signed Up", False, "alice", *values)])
    hour, day = at.replace(minute=0), at.replace(hour=0, minute=0)
    assert ("p", DAY, day, "Signed Up", TOTAL, TOTAL, False) in tallies
    assert ("p", HOUR, hour, "Signed Up", TOTAL, TOTAL, False) not in tallies
    assert tallies[("p", HOUR, hour, ALL_EVENTS, TOTAL, TOTAL, False)].events == 1


def test_random_batches_of_few_and_many_visitors_match_the_reference() -> None:
    # Chunks counted by visit combinations (few visitors) and column by column (many), batches
    # longer than one chunk, raw values shown alike (None and "", 7 and "7") and more names.
    rng = random.Random(13)
    start = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)
    for _ in range(30):
        visitors = rng.choice([1, 3, 20, 500, 10_000])
        n = rng.choice([1, 2, 255, 256, 257, 700, 1500])
        rows = []
        for _ in range(n):
            values = [rng.choice([None, "", "a", "b", 7, "7"]) for _ in EVENT_DIMENSIONS]
            rows.append(
                (
                    rng.choice(["p1", "p1", "p2"]),
                    start + timedelta(seconds=rng.randrange(0, 6 * 3600)),
                    rng.choice([PAGEVIEW, PAGEVIEW, "Signed Up", "Scrolled", ALL_EVENTS]),
                    rng.random() < 0.1,
                    f"visitor-{rng.randrange(visitors)}",
                    *values,
                )
            )
        tallies = event_rollup_tallies(rows)
        got = {key: (t.events, set(t.persons)) for key, t in tallies.items()}
        assert got == reference_tallies(rows)


def test_a_shared_person_set_is_the_whole_of_every_key_sharing_it() -> None:
    # Keys share one set instead of copies (one sketch each); sharing must never be wrong.
    # Four hours over two days, and one hour alone, whose hourly rows share their day's sets.
    rng = random.Random(5)
    spread = random_rows(rng, 600)
    one_hour = [row for row in spread if row[1].astimezone(UTC).hour == 23]
    shared = 0
    for rows in (spread, one_hour):
        tallies = event_rollup_tallies(rows)
        expected = reference_tallies(rows)
        by_set: dict[int, list[tuple[Any, ...]]] = {}
        for key, tally in tallies.items():
            by_set.setdefault(id(tally.persons), []).append(key)
        shared += sum(len(keys) > 1 for keys in by_set.values())
        for keys in by_set.values():
            for key in keys:
                assert tallies[key].persons == expected[key][1]
    assert shared
