"""Recompute what the aggregator maintains (event rollups, sessions, session rollups) straight
from the `events` table, written independently of the aggregator's code, so tests can check
that stored aggregates equal a recomputation from raw events. Also a generator of realistic
event sets for those tests."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from libs.common import sketches
from libs.common.model.session_encoding import decoded_session
from libs.common.rollup_keys import EVENT_DIMENSIONS, NONE_VALUE, SESSION_ROLLUP_DIMENSIONS
from libs.common.schemas.events_v1 import IDENTIFY, PAGEVIEW, EventV1


def _buckets(ts: datetime) -> list[tuple[str, datetime]]:
    ts = ts.astimezone(UTC)
    hour = datetime(ts.year, ts.month, ts.day, ts.hour, tzinfo=UTC)
    day = datetime(ts.year, ts.month, ts.day, tzinfo=UTC)
    return [("h", hour), ("d", day)]


def _keyed(granularity: str, dims: list[tuple[str, str]], name: str = "*") -> list[tuple[str, str]]:
    """Hourly rows are totals only, for all events and pageviews (other event names have no
    hourly rows); daily rows have every dimension too, for all events and pageviews (other
    event names: totals only)."""
    if name not in ("*", PAGEVIEW):
        return [] if granularity == "h" else dims[:1]
    return dims[:1] if granularity == "h" else dims


def _value(v: Any) -> str:
    return NONE_VALUE if v is None or v == "" else str(v)


async def fetch_events(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM events ORDER BY ts, event_id")
    return rows


def expected_event_rollups(rows: list[asyncpg.Record]) -> dict[tuple[Any, ...], tuple[int, int]]:
    """(project, granularity, bucket, name, dim, value, bot) -> (events, distinct persons)."""
    counts: dict[tuple[Any, ...], int] = defaultdict(int)
    persons: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for r in rows:
        person = r["distinct_id"]  # visitors are devices
        dims = [("", "")] + [(d, _value(r[col])) for d, col in EVENT_DIMENSIONS.items()]
        for g, bucket in _buckets(r["ts"]):
            for name in {r["name"], "*"}:
                for dim, value in _keyed(g, dims, name):
                    key = (r["project_id"], g, bucket, name, dim, value, r["is_bot"])
                    counts[key] += 1
                    persons[key].add(person)
    return {k: (counts[k], len(persons[k])) for k in counts}


async def stored_event_rollups(conn: asyncpg.Connection) -> dict[tuple[Any, ...], tuple[int, int]]:
    rows = await conn.fetch(
        "SELECT project_id, granularity::text AS g, bucket, name, dim, value, bot, events,"
        " visitors FROM rollups"
    )
    return {
        (r["project_id"], r["g"], r["bucket"], r["name"], r["dim"], r["value"], r["bot"]): (
            r["events"],
            sketches.estimate([r["visitors"]]),
        )
        for r in rows
    }


SESSION_FIELDS = (
    "distinct_id",
    "user_id",
    "start_ts",
    "end_ts",
    "events",
    "interactive_events",
    "pageviews",
    "entry_path",
    "entry_ts",
    "exit_path",
    "exit_ts",
    "referrer",
    "referrer_domain",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "browser",
    "os",
    "device_type",
    "country",
    "is_bot",
)
SOURCE_FIELDS = (
    "referrer",
    "referrer_domain",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
)
DEVICE_FIELDS = ("browser", "os", "device_type", "country", "is_bot")


def expected_sessions(rows: list[asyncpg.Record]) -> dict[tuple[str, str], dict[str, Any]]:
    by_session: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
    for r in rows:
        if r["session_id"]:
            by_session[(r["project_id"], r["session_id"])].append(r)
    result = {}
    for key, evs in by_session.items():
        evs.sort(key=lambda r: (r["ts"], r["event_id"]))
        first = evs[0]
        pages = [r for r in evs if r["name"] == PAGEVIEW]
        users = [r["user_id"] for r in evs if r["user_id"]]
        # The source comes from the first event that says how the visit arrived (a channel);
        # the device from the first event.
        sourced = [r for r in evs if r["channel"]]
        session: dict[str, Any] = {
            "distinct_id": first["distinct_id"],
            "user_id": users[0] if users else None,
            "start_ts": first["ts"],
            "end_ts": evs[-1]["ts"],
            "events": len(evs),
            "interactive_events": sum(1 for r in evs if not r["non_interactive"]),
            "pageviews": len(pages),
            "entry_path": pages[0]["path"] if pages else None,
            "entry_ts": pages[0]["ts"] if pages else None,
            "exit_path": pages[-1]["path"] if pages else None,
            "exit_ts": pages[-1]["ts"] if pages else None,
        }
        for attr in SOURCE_FIELDS:
            session[attr] = sourced[0][attr] if sourced else None
        for attr in DEVICE_FIELDS:
            session[attr] = first[attr]
        result[key] = session
    return result


async def stored_sessions(conn: asyncpg.Connection) -> dict[tuple[str, str], dict[str, Any]]:
    rows = [decoded_session(r) for r in await conn.fetch("SELECT * FROM sessions")]
    return {(r["project_id"], r["session_id"]): {f: r[f] for f in SESSION_FIELDS} for r in rows}


def expected_session_rollups(
    sessions: dict[tuple[str, str], dict[str, Any]],
) -> dict[tuple[Any, ...], tuple[int, int, float, int, int]]:
    """(project, granularity, bucket, dim, value, bot) -> (sessions, bounces, duration_s,
    pageviews, events)."""
    acc: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0, 0])
    for (project_id, _), s in sessions.items():
        dims = [("", "")] + [(d, _value(s[col])) for d, col in SESSION_ROLLUP_DIMENSIONS.items()]
        duration = (s["end_ts"] - s["start_ts"]).total_seconds()
        for g, bucket in _buckets(s["start_ts"]):
            for dim, value in _keyed(g, dims):
                a = acc[(project_id, g, bucket, dim, value, s["is_bot"])]
                a[0] += 1
                a[1] += 1 if s["interactive_events"] < 2 else 0
                a[2] += duration
                a[3] += s["pageviews"]
                a[4] += s["events"]
    return {k: (int(a[0]), int(a[1]), a[2], int(a[3]), int(a[4])) for k, a in acc.items()}


async def stored_session_rollups(
    conn: asyncpg.Connection,
) -> dict[tuple[Any, ...], tuple[int, int, float, int, int]]:
    rows = await conn.fetch(
        "SELECT project_id, granularity::text AS g, bucket, dim, value, bot, sessions, bounces,"
        " duration_s, pageviews, events FROM session_rollups"
    )
    return {
        (r["project_id"], r["g"], r["bucket"], r["dim"], r["value"], r["bot"]): (
            r["sessions"],
            r["bounces"],
            r["duration_s"],
            r["pageviews"],
            r["events"],
        )
        for r in rows
    }


async def assert_aggregates_match_events(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every stored aggregate equals its recomputation from the events table; returns the
    events. Visitors are exact here: sketches count exactly below ~190 items per key."""
    rows = await fetch_events(conn)
    stored, expected = await stored_event_rollups(conn), expected_event_rollups(rows)
    assert sorted(stored) == sorted(expected)
    for key, (events, visitors) in expected.items():
        assert stored[key][0] == events, key
        # HyperLogLog (lg_k=11) counts exactly up to ~190 items, then within ~2.3% (1 sigma).
        tolerance = 0 if visitors < 190 else max(1, round(visitors * 0.07))
        assert abs(stored[key][1] - visitors) <= tolerance, (key, stored[key], visitors)
    await assert_person_keys_match_ids(conn)
    sessions = expected_sessions(rows)
    assert await stored_sessions(conn) == sessions
    assert_session_rollups_equal(
        await stored_session_rollups(conn), expected_session_rollups(sessions)
    )
    return rows


async def assert_person_keys_match_ids(conn: asyncpg.Connection) -> None:
    """Every event carries the key of coalesce(user_id, distinct_id) as person_key and, when
    distinct_id differs from it, distinct_id's key as device_key; every alias's ids have keys;
    no two ids of a project share a key."""
    wrong = await conn.fetch(
        """SELECT e.event_id, e.person_key, e.device_key, p.key AS want_person, d.key AS want_device
        FROM events e
        LEFT JOIN person_keys p ON p.project_id = e.project_id
            AND p.id = coalesce(e.user_id, e.distinct_id)
        LEFT JOIN person_keys d ON d.project_id = e.project_id AND d.id = e.distinct_id
        WHERE e.person_key IS DISTINCT FROM p.key OR p.key IS NULL
            OR e.device_key IS DISTINCT FROM
                CASE WHEN coalesce(e.user_id, e.distinct_id) <> e.distinct_id THEN d.key END"""
    )
    assert [tuple(r) for r in wrong] == []
    unkeyed = await conn.fetchval(
        """SELECT count(*) FROM person_aliases a WHERE NOT EXISTS (SELECT 1 FROM person_keys k
            WHERE k.project_id = a.project_id AND k.id = a.distinct_id)
        OR NOT EXISTS (SELECT 1 FROM person_keys k
            WHERE k.project_id = a.project_id AND k.id = a.person_id)"""
    )
    assert unkeyed == 0
    shared = await conn.fetchval(
        "SELECT count(*) FROM (SELECT project_id, key FROM person_keys"
        " GROUP BY 1, 2 HAVING count(*) > 1) s"
    )
    assert shared == 0


def assert_session_rollups_equal(
    stored: dict[tuple[Any, ...], tuple[int, int, float, int, int]],
    expected: dict[tuple[Any, ...], tuple[int, int, float, int, int]],
) -> None:
    """Equal keys and counts; durations equal up to float rounding of the summed deltas."""
    assert sorted(stored) == sorted(expected)
    for key, want in expected.items():
        got = stored[key]
        assert (got[0], got[1], got[3], got[4]) == (want[0], want[1], want[3], want[4]), key
        assert abs(got[2] - want[2]) < 1e-6, (key, got, want)


# ---------------------------------------------------------------------------------------------


def make_event(**fields: Any) -> EventV1:
    """An enriched pageview with sensible defaults; any field may be overridden."""
    ts = fields.pop("ts", datetime(2024, 3, 4, 10, 0, tzinfo=UTC))
    defaults: dict[str, Any] = {
        "event_id": f"e-{random.getrandbits(64):016x}",
        "project_id": "acme",
        "type": "page",
        "name": PAGEVIEW,
        "ts": ts,
        "received_at": ts + timedelta(seconds=1),
        "distinct_id": "anon-1",
        "anonymous_id": "anon-1",
        "session_id": "s-1",
        "path": "/",
        "url": "https://acme.test/",
    }
    defaults.update(fields)
    return EventV1(**defaults)


def generate_events(
    seed: int,
    persons: int = 30,
    start: datetime = datetime(2024, 3, 8, 20, 0, tzinfo=UTC),  # a Friday: spans a week edge
    project_id: str = "acme",
) -> list[EventV1]:
    """Sessions of anonymous and identified visitors over ~4 days: pageviews, custom and
    non-interactive events, identifies, bots, every dimension sometimes missing."""
    rng = random.Random(seed)
    unique = iter(range(10**6))
    pick = rng.choice
    events: list[EventV1] = []
    for p in range(persons):
        anon = f"anon-{seed}-{p}"
        user = f"user-{p}" if rng.random() < 0.4 else None
        device: dict[str, Any] = {
            "browser": pick(["Chrome", "Firefox", "Safari", None]),
            "os": pick(["Windows", "macOS", "iOS", "Android"]),
            "device_type": pick(["desktop", "mobile", "tablet"]),
            "country": pick(["DE", "US", "FR", None]),
            "is_bot": rng.random() < 0.1,
        }
        t = start + timedelta(minutes=rng.randrange(0, 4 * 24 * 60))
        for s in range(rng.randint(1, 3)):
            session_id = f"s-{seed}-{p}-{s}"
            source: dict[str, Any] = pick(
                [
                    {"referrer_domain": "google.com", "channel": "organic"},
                    {"referrer_domain": None, "channel": "direct"},
                    {
                        "referrer_domain": "news.test",
                        "channel": "paid",
                        "utm_source": "news",
                        "utm_medium": "cpc",
                        "utm_campaign": pick(["spring", "launch"]),
                    },
                ]
            )
            identified = False
            for _ in range(rng.randint(1, 6)):
                kind = rng.random()
                common: dict[str, Any] = {
                    "event_id": f"e-{seed}-{next(unique)}",
                    "project_id": project_id,
                    "ts": t + timedelta(microseconds=next(unique)),
                    "distinct_id": anon,
                    "anonymous_id": anon,
                    "user_id": user if identified else None,
                    "session_id": session_id,
                    **device,
                    **source,
                }
                if kind < 0.6:
                    path = pick(["/", "/pricing", "/docs", "/blog/a", "/signup"])
                    ev = make_event(path=path, url=f"https://acme.test{path}", **common)
                elif kind < 0.75:
                    ev = make_event(type="track", name="scroll", non_interactive=True, **common)
                elif kind < 0.9 or user is None or identified:
                    ev = make_event(type="track", name=pick(["click", "signup"]), **common)
                else:
                    identified = True
                    common["user_id"] = user
                    ev = make_event(
                        type="identify",
                        name=IDENTIFY,
                        traits={"plan": pick(["free", "pro"]), "seen": p},
                        **common,
                    )
                events.append(ev)
                t += timedelta(seconds=rng.randint(5, 600))
            t += timedelta(hours=rng.randint(1, 30))
    return events


def chunks(items: list[EventV1], size: int) -> Iterator[list[EventV1]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
