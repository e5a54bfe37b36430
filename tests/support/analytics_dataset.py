"""A generated, seeded analytics dataset (persons, devices, sessions, pages, referrers, bots,
identify links, performance properties) and an independent recomputation of every metric the
query API returns, from the rows of the `events` and `sessions` tables."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from libs.common.model.session_encoding import decoded_session
from libs.common.schemas.events_v1 import IDENTIFY, PAGEVIEW, EventV1

PAGES = ["/", "/pricing", "/docs", "/docs/install", "/blog/launch", "/signup", ""]
SOURCES = [
    # referrer_domain, channel, utm_source, utm_medium, utm_campaign
    (None, "direct", None, None, None),
    ("google.com", "organic_search", None, None, None),
    ("news.ycombinator.com", "referral", None, None, None),
    ("twitter.com", "social", "twitter", "social", "launch"),
    ("mail.example.com", "email", "newsletter", "email", "spring"),
]
DEVICES = [
    ("desktop", "Chrome", "Windows"),
    ("desktop", "Firefox", "Linux"),
    ("mobile", "Safari", "iOS"),
    ("mobile", "Chrome", "Android"),
    ("tablet", "Safari", "iPadOS"),
    (None, None, None),
]
COUNTRIES = ["DE", "US", "FR", "IN", None]
CUSTOM = ["signup", "click", "download"]


def generate_events(
    project_id: str,
    first_day: datetime,
    days: int,
    devices: int = 70,
    seed: int = 7,
) -> list[EventV1]:
    """Sessions of `devices` devices over `days` days from `first_day` (UTC midnight)."""
    rng = random.Random(seed)
    events: list[EventV1] = []
    for device_no in range(devices):
        anon = f"anon-{device_no}"
        user = f"user-{device_no % 45}" if device_no % 3 == 0 else None
        is_bot = device_no % 17 == 5
        device_type, browser, os_name = rng.choice(DEVICES)
        country = rng.choice(COUNTRIES)
        identified = False
        for session_no in range(rng.randint(1, 4)):
            start = first_day + timedelta(seconds=rng.randint(0, days * 86400 - 3600))
            referrer_domain, channel, utm_source, utm_medium, utm_campaign = rng.choice(SOURCES)
            session_id = f"s-{device_no}-{session_no}"
            ts = start
            for event_no in range(rng.choice([1, 1, 2, 3, 5, 8])):
                if event_no:
                    ts += timedelta(seconds=rng.randint(5, 900))
                kind = rng.random()
                non_interactive = False
                properties: dict[str, Any] = {}
                if event_no == 0 or kind < 0.55:
                    name = PAGEVIEW
                    if rng.random() < 0.6:
                        properties["load_time_ms"] = rng.randint(80, 4000)
                    if rng.random() < 0.4:
                        properties["lcp"] = round(rng.uniform(300, 5000), 1)
                        properties["cls"] = round(rng.uniform(0, 0.5), 3)
                elif kind < 0.7:
                    name, non_interactive = "scroll", True
                    properties["depth"] = rng.choice([25, 50, 75, 100])
                elif kind < 0.8 and user is not None and not identified:
                    name = IDENTIFY
                    identified = True
                else:
                    name = rng.choice(CUSTOM)
                    properties["plan"] = rng.choice(["free", "pro"])
                with_user = user if identified or name == IDENTIFY else None
                events.append(
                    EventV1(
                        event_id=f"e-{device_no}-{session_no}-{event_no}",
                        project_id=project_id,
                        type="page" if name == PAGEVIEW else "track",
                        name=name,
                        ts=ts,
                        received_at=ts + timedelta(seconds=1),
                        distinct_id=anon,
                        anonymous_id=anon,
                        user_id=with_user,
                        properties=properties,
                        path=(rng.choice(PAGES) or None) if name == PAGEVIEW else None,
                        referrer_domain=referrer_domain if event_no == 0 else None,
                        channel=channel,
                        utm_source=utm_source,
                        utm_medium=utm_medium,
                        utm_campaign=utm_campaign,
                        browser=browser,
                        os=os_name,
                        device_type=device_type,
                        country=country,
                        is_bot=is_bot,
                        non_interactive=non_interactive,
                        session_id=session_id,
                    )
                )
    return events


async def load(conn: asyncpg.Connection, events: list[EventV1], batches: int = 5) -> None:
    """Write through the aggregator's writer, shuffled into several batches so sessions and
    rollups are merged across transactions as in production."""
    from services.aggregator.writer import write_events

    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    size = -(-len(shuffled) // batches)
    for i in range(0, len(shuffled), size):
        await write_events(conn, shuffled[i : i + size])


# ---------------------------------------------------------------------------------------------
# Independent recomputation

EVENT_COLUMN = {
    "page": "path",
    "referrer_domain": "referrer_domain",
    "channel": "channel",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "browser": "browser",
    "os": "os",
    "device_type": "device_type",
    "country": "country",
    "event": "name",
}
SESSION_COLUMN = {**EVENT_COLUMN, "page": "entry_path", "exit_page": "exit_path"}
del SESSION_COLUMN["event"]


def norm(value: Any) -> str:
    return "(none)" if value is None or value == "" else str(value)


@dataclass
class Tables:
    events: list[dict[str, Any]]
    sessions: list[dict[str, Any]]

    @classmethod
    async def fetch(cls, conn: asyncpg.Connection, project_id: str) -> Tables:
        events = [
            dict(r)
            for r in await conn.fetch("SELECT * FROM events WHERE project_id = $1", project_id)
        ]
        sessions = [
            decoded_session(r)
            for r in await conn.fetch("SELECT * FROM sessions WHERE project_id = $1", project_id)
        ]
        return cls(events, sessions)


def local_bucket(ts: datetime, interval: str | None, tz: ZoneInfo) -> datetime | None:
    """The naive local start of the bucket holding `ts` (None: one bucket for everything)."""
    if interval is None:
        return None
    local = ts.astimezone(tz).replace(tzinfo=None)
    if interval == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "day":
        return day
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


Cell = tuple[datetime | None, str | None]  # (local bucket or None = all, value or None = all)


def expected_metrics(
    tables: Tables,
    *,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    interval: str | None,
    metrics: Iterable[str],
    filters: dict[str, set[str]] | None = None,
    breakdown: str | None = None,
    include_bots: bool = False,
) -> dict[Cell, dict[str, Any]]:
    """Every metric per (bucket, value), per value, per bucket and overall, by plain Python."""
    filters = filters or {}
    names_of_session: dict[str, set[str]] = defaultdict(set)
    for ev in tables.events:
        if ev["session_id"]:
            names_of_session[ev["session_id"]].add(ev["name"])

    # A dimension of sessions only (the exit page) leaves no event to count.
    session_only = any(d not in EVENT_COLUMN for d in (*filters, breakdown) if d)
    events = [
        ev
        for ev in tables.events
        if not session_only
        and start <= ev["ts"] < end
        and (include_bots or not ev["is_bot"])
        and all(norm(ev[EVENT_COLUMN[d]]) in vals for d, vals in filters.items())
    ]
    sessions = [
        s
        for s in tables.sessions
        if start <= s["start_ts"] < end
        and (include_bots or not s["is_bot"])
        and all(
            (names_of_session[s["session_id"]] & vals)
            if d == "event"
            else norm(s[SESSION_COLUMN[d]]) in vals
            for d, vals in filters.items()
        )
    ]

    first_label = start.astimezone(tz).replace(tzinfo=None)

    def cells_of(bucket: datetime | None, values: Iterable[str | None]) -> set[Cell]:
        # A first bucket that began before `from` is labelled `from`.
        if bucket is not None:
            bucket = max(bucket, first_label)
        out: set[Cell] = {(None, None), (bucket, None)}
        for v in values:
            out |= {(bucket, v), (None, v)}
        return out

    ev_groups: dict[Cell, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        value = [norm(ev[EVENT_COLUMN[breakdown]])] if breakdown else []
        for cell in cells_of(local_bucket(ev["ts"], interval, tz), value):
            ev_groups[cell].append(ev)
    s_groups: dict[Cell, list[dict[str, Any]]] = defaultdict(list)
    for s in sessions:
        values: list[str | None]
        if breakdown == "event":
            values = [*sorted(names_of_session[s["session_id"]])]
        elif breakdown:
            values = [norm(s[SESSION_COLUMN[breakdown]])]
        else:
            values = []
        for cell in cells_of(local_bucket(s["start_ts"], interval, tz), values):
            s_groups[cell].append(s)

    result: dict[Cell, dict[str, Any]] = {}
    for cell in set(ev_groups) | set(s_groups):
        evs, ss = ev_groups.get(cell, []), s_groups.get(cell, [])
        n = len(ss)
        out: dict[str, Any] = {}
        for m in metrics:
            if m == "visitors":
                out[m] = len({e["distinct_id"] for e in evs})  # visitors are devices
            elif m == "pageviews":
                out[m] = sum(1 for e in evs if e["name"] == PAGEVIEW)
            elif m == "events":
                out[m] = len(evs)
            elif m.startswith("event:"):
                out[m] = sum(1 for e in evs if e["name"] == m[6:])
            elif m == "sessions":
                out[m] = n
            elif m == "bounce_rate":
                out[m] = sum(1 for s in ss if s["interactive_events"] < 2) / n if n else None
            elif m == "avg_session_duration":
                total = sum((s["end_ts"] - s["start_ts"]).total_seconds() for s in ss)
                out[m] = total / n if n else None
            elif m == "views_per_session":
                out[m] = sum(s["pageviews"] for s in ss) / n if n else None
        result[cell] = out
    return result


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)
