"""Hand-built and generated events for the analyses, loaded into an in-memory DuckDB as the
same `events_scan` view and `persons` table the data plane (services/query/event_scan.py)
provides, so the engines run on exactly the shape they meet in production."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)  # a Monday

_STRING_COLUMNS = (
    "project_id",
    "event_id",
    "name",
    "person_id",
    "distinct_id",
    "user_id",
    "session_id",
    "path",
    "url",
    "title",
    "referrer_domain",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "browser",
    "os",
    "device_type",
    "country",
)


@dataclass(frozen=True)
class Ev:
    """One row of `events_scan` (person_id already alias-resolved)."""

    person: str
    name: str
    ts: datetime
    event_id: str = ""
    path: str | None = None
    session_id: str | None = None
    country: str | None = None
    non_interactive: bool = False
    is_bot: bool = False
    properties: dict[str, Any] = field(default_factory=dict)

    def row(self, number: int) -> dict[str, Any]:
        return {
            "project_id": "acme",
            "ts": self.ts,
            "event_id": self.event_id or f"e{number:06d}",
            "name": self.name,
            "person_id": self.person,
            "distinct_id": self.person,
            "user_id": None,
            "session_id": self.session_id,
            "path": self.path,
            "url": None,
            "title": None,
            "referrer_domain": None,
            "channel": None,
            "utm_source": None,
            "utm_medium": None,
            "utm_campaign": None,
            "browser": None,
            "os": None,
            "device_type": None,
            "country": self.country,
            "is_bot": self.is_bot,
            "non_interactive": self.non_interactive,
            "properties": json.dumps(self.properties),
        }


def numbered(events: Iterable[Ev]) -> list[Ev]:
    """The events with their final event ids (as loaded), for a reference to read."""
    return [ev if ev.event_id else replace(ev, event_id=f"e{i:06d}") for i, ev in enumerate(events)]


def events_table(events: Sequence[Ev]) -> pa.Table:
    rows = [ev.row(i) for i, ev in enumerate(events)]
    columns: dict[str, pa.Array] = {}
    for name in _STRING_COLUMNS:
        columns[name] = pa.array([r[name] for r in rows], pa.string())
    columns["ts"] = pa.array([r["ts"] for r in rows], pa.timestamp("us", tz="UTC"))
    columns["is_bot"] = pa.array([r["is_bot"] for r in rows], pa.bool_())
    columns["non_interactive"] = pa.array([r["non_interactive"] for r in rows], pa.bool_())
    columns["properties"] = pa.array([r["properties"] for r in rows], pa.string())
    return pa.table(columns)


def scan_connection(
    events: Sequence[Ev],
    persons: dict[str, dict[str, Any]] | None = None,
    *,
    mixed_sources: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with `events_scan` over `events` and `persons` from
    `{person_id: traits}` (first_seen = the person's first event)."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.register("test_events", events_table(events))
    con.execute(
        "CREATE TABLE events_table AS SELECT project_id, ts, event_id, name, person_id,"
        " distinct_id, user_id, session_id, path, url, title, referrer_domain, channel,"
        " utm_source, utm_medium, utm_campaign, browser, os, device_type, country, is_bot,"
        " non_interactive, properties FROM test_events"
    )
    con.unregister("test_events")
    con.execute("CREATE VIEW events_scan AS SELECT * FROM events_table")
    # Integer person keys, as the data plane's `events_scan_keyed` gives them (below): keys
    # numbered in an order unrelated to the ids' (reversed strings), so nothing may lean on it.
    people = sorted({ev.person for ev in events}, key=lambda p: p[::-1])
    con.register(
        "test_person_keys",
        pa.table({"person_id": pa.array(people, pa.string()), "person_key": range(len(people))}),
    )
    con.execute("CREATE TABLE person_keys_table AS SELECT * FROM test_person_keys")
    con.unregister("test_person_keys")
    # `events_scan_stored`: half the rows of every other person store a device's key (as
    # events sent before an identify do), which an alias in `person_key_aliases` maps to the
    # person's key; the other rows store the person's key. Chosen per session (a session
    # before an identify), or per row with `mixed_sources`.
    unit = "e.event_id" if mixed_sources else "coalesce(e.session_id, e.event_id)"
    kept = list(range(0, len(people), 2))
    con.register(
        "test_key_aliases",
        pa.table({"device": pa.array([k + len(people) for k in kept]), "person": pa.array(kept)}),
    )
    con.execute("CREATE TABLE person_key_aliases AS SELECT * FROM test_key_aliases")
    con.unregister("test_key_aliases")
    stored = (
        f"CASE WHEN k.person_key % 2 = 0 AND hash({unit}) % 2 = 0"
        f" THEN k.person_key + {len(people)} ELSE k.person_key END"
    )
    # And the tie columns (services/query/event_scan.py, TIE_COLUMNS): a quarter of the rows
    # come "from PostgreSQL" (their event id), the others from one of two day files per UTC day
    # claiming the tie order (their position in a file sorted by stored key, ts and event id).
    # `mixed_sources=False`: a session's rows come from one source, so its ties are settled
    # by position or by id; True: each row's source is its own, so some ties (two files, a
    # file and PostgreSQL, two stored keys) need the ids read again.
    source = f"hash({unit} || 'source') % 4"
    file_number = f"(epoch(e.ts) // 86400)::BIGINT * 2 + ({source} = 3)::BIGINT"
    con.execute(
        "CREATE VIEW test_events_tied AS SELECT * EXCLUDE (file_number, hot),"
        " CASE WHEN hot THEN NULL ELSE file_number * 4294967296 + row_number() OVER ("
        "   PARTITION BY hot, file_number ORDER BY stored_key, ts, event_id) END AS tie_row,"
        " CASE WHEN hot THEN event_id END AS tie_id"
        " FROM (SELECT e.* EXCLUDE (person_id), k.person_key AS resolved_key,"
        f" {stored} AS stored_key, {file_number} AS file_number, {source} = 0 AS hot"
        " FROM events_table e JOIN person_keys_table k USING (person_id))"
    )
    con.execute(
        "CREATE VIEW events_scan_stored AS SELECT * EXCLUDE (resolved_key, stored_key),"
        " stored_key AS person_key, stored_key AS alias_key FROM test_events_tied"
    )
    # The resolved key as `person_key` (then the stored key and the tie columns).
    con.execute(
        "CREATE VIEW events_scan_keyed AS SELECT * EXCLUDE (resolved_key),"
        " resolved_key AS person_key FROM test_events_tied"
    )
    first_seen: dict[str, datetime] = {}
    for ev in events:
        if ev.person not in first_seen or ev.ts < first_seen[ev.person]:
            first_seen[ev.person] = ev.ts
    traits = persons or {}
    ids = sorted(set(traits) | set(first_seen))
    con.register(
        "test_persons",
        pa.table(
            {
                "person_id": pa.array(ids, pa.string()),
                "traits": pa.array([json.dumps(traits.get(p, {})) for p in ids], pa.string()),
                "first_seen": pa.array(
                    [first_seen.get(p, T0) for p in ids], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
    )
    con.execute(
        "CREATE TABLE persons AS SELECT person_id, traits::JSON AS traits, first_seen"
        " FROM test_persons"
    )
    con.unregister("test_persons")
    return con


@dataclass
class TierRead:
    tier: str
    rows: int
    ms: float


class MemoryScan:
    """An EventScan stand-in over an in-memory connection (tiers: one 'hot' read)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rows: int) -> None:
        self.con = con
        self.tiers = [TierRead("hot", rows, 0.0)]
        self.person_keys = True  # scan_connection makes `events_scan_keyed` too
        self.ties_by_position = False  # its rows are PostgreSQL's: ties by event id
        self.cached_rows = None  # nor from the column cache
        self.cached_columns: frozenset[str] = frozenset()  # no day files, no cached views

    def close(self) -> None:
        self.con.close()


def at(minutes: float = 0, *, days: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(days=days, minutes=minutes, seconds=seconds)


# ---------------------------------------------------------------------------------------------
# Generated data for the reference comparisons


def generated_events(seed: int, persons: int = 60, days: int = 20) -> list[Ev]:
    """Random but tie-heavy events: timestamps on a coarse grid (many equal), repeated
    steps, same-named events with different properties, exclusion events, sessions."""
    rng = random.Random(seed)
    names = ["$pageview", "$pageview", "$pageview", "signup", "purchase", "cancel", "search"]
    pages = ["/", "/pricing", "/pricing/", "/docs", "/user/1", "/user/22", "/signup"]
    events: list[Ev] = []
    for p in range(persons):
        person = f"p{p:03d}"
        n_sessions = rng.randint(1, 5)
        for s in range(n_sessions):
            start = T0 + timedelta(minutes=rng.randint(0, days * 24 * 60))
            session = f"{person}-s{s}"
            t = start
            for _ in range(rng.randint(1, 9)):
                # 0 minutes apart a third of the time: ties at one timestamp
                t += timedelta(minutes=rng.choice([0, 0, 1, 5, 30, 600, 2000]))
                name = rng.choice(names)
                path = rng.choice(pages) if name == "$pageview" else None
                props: dict[str, Any] = {
                    "plan": rng.choice(["free", "pro", "team"]),
                    "amount": rng.randint(1, 50),
                }
                events.append(
                    Ev(
                        person=person,
                        name=name,
                        ts=t,
                        path=path,
                        session_id=session,
                        country=rng.choice(["DE", "US", None]),
                        non_interactive=rng.random() < 0.05,
                        properties=props,
                    )
                )
    rng.shuffle(events)
    return numbered(events)
