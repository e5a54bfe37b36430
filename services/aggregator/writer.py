"""Writes enriched events to the hot store in one transaction: events (deduplicated on the event
id), event rollups, sessions with their session-rollup deltas, person aliases and persons.

Everything after the dedup step is derived from the rows actually inserted, so a redelivered
batch inserts nothing and changes no rollup.

Lock order (what keeps concurrent aggregator replicas free of deadlocks): tables are always
touched in the same order (event_ids, events, rollups, sessions, session_rollups,
person_aliases, persons) and, within a table, rows are locked in key order.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from libs.common import sketches
from libs.common.rollup_keys import (
    ALL_EVENTS,
    EVENT_DIMENSIONS,
    GRANULARITIES,
    HOUR,
    SESSION_DIMENSIONS,
    TOTAL,
    bucket_start,
    dim_value,
)
from libs.common.schemas.events_v1 import ALIAS, IDENTIFY, PAGEVIEW, EventV1


class WriteResult(msgspec.Struct, frozen=True):
    """What one write did: events received, newly inserted, and dropped as already stored."""

    received: int
    inserted: int
    duplicates: int


# ---------------------------------------------------------------------------------------------
# Day partitions

# One creator of partitions at a time: creating a partition takes ACCESS EXCLUSIVE on `events`.
_PARTITION_LOCK = 0x5354524150  # "STRAP"
# Tiering drops old days' partitions, so only days this recent are remembered as existing; an
# older (backfilled) day is checked on every write, which costs one cheap query.
_REMEMBER_DAYS = 1


class EventPartitions:
    """The day partitions of `events` known to exist in one database (a per-process cache)."""

    def __init__(self) -> None:
        self._known: set[date] = set()

    def unknown(self, days: Iterable[date]) -> list[date]:
        return sorted(d for d in days if d not in self._known)

    def remember(self, days: Iterable[date], today: date) -> None:
        horizon = today - timedelta(days=_REMEMBER_DAYS)
        self._known.update(d for d in days if d >= horizon)

    def forget(self) -> None:
        """Drop the cache (after the database said a partition is missing)."""
        self._known.clear()


async def ensure_partitions(
    conn: asyncpg.Connection,
    days: Iterable[date],
    partitions: EventPartitions | None = None,
) -> None:
    """Create the `events` partitions of `days` that do not exist yet.

    Outside a transaction the creation commits at once, so the cache may remember it; inside the
    caller's transaction it could still roll back, so nothing is remembered.
    """
    known = partitions or EventPartitions()
    wanted = known.unknown(days)
    if not wanted:
        return
    remember = not conn.is_in_transaction()
    missing = await conn.fetch(
        "SELECT d FROM unnest($1::date[]) AS d"
        " WHERE to_regclass('events_' || to_char(d, 'YYYYMMDD')) IS NULL",
        wanted,
    )
    for attempt in range(3) if missing else ():
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
                await conn.execute(
                    "SELECT ensure_event_partitions(d, 1) FROM unnest($1::date[]) AS d",
                    [r["d"] for r in missing],
                )
            break
        except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
            # Another creator outside the advisory lock (tiering's maintenance) won the race;
            # the next attempt sees its partition and skips it.
            if attempt == 2:
                raise
    if remember:
        known.remember(wanted, datetime.now(UTC).date())


async def ensure_partitions_ahead(
    conn: asyncpg.Connection, days_ahead: int, partitions: EventPartitions | None = None
) -> None:
    """Create today's and the next `days_ahead` days' partitions, so live writes never wait."""
    today = datetime.now(UTC).date()
    await ensure_partitions(
        conn, [today + timedelta(days=i) for i in range(-1, days_ahead + 1)], partitions
    )


# ---------------------------------------------------------------------------------------------
# Events and dedup

EVENT_COLUMNS = (
    "project_id",
    "ts",
    "event_id",
    "name",
    "type",
    "distinct_id",
    "user_id",
    "anonymous_id",
    "session_id",
    "path",
    "url",
    "title",
    "referrer",
    "referrer_domain",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "device_type",
    "country",
    "region",
    "city",
    "locale",
    "is_bot",
    "non_interactive",
    "received_at",
)
_EVENT_TYPES = {"ts": "timestamptz", "received_at": "timestamptz", "is_bot": "boolean"}
_EVENT_TYPES["non_interactive"] = "boolean"
_STAGING = "strata_staged_events"
_STAGING_COLUMNS = ("seq", *EVENT_COLUMNS, "properties")
_event_values = operator.attrgetter(*EVENT_COLUMNS)
_json = msgspec.json.Encoder()

# The staging table lives per connection and empties itself at commit; properties are staged as
# text and cast once in SQL, whatever jsonb codec the caller's connection has.
_STAGING_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (seq integer NOT NULL, "
    + ", ".join(f"{c} {_EVENT_TYPES.get(c, 'text')}" for c in EVENT_COLUMNS)
    + ", properties text) ON COMMIT DELETE ROWS;"
    f" DELETE FROM {_STAGING};"
)

_columns = ", ".join(EVENT_COLUMNS)
# DISTINCT ON drops repeats inside the batch; the event_ids insert (in key order, so replicas
# lock ids in one order) returns only ids never seen, and only those rows reach `events`.
_INSERT_NEW_EVENTS = f"""
WITH staged AS (
    SELECT DISTINCT ON (project_id, event_id) *
    FROM {_STAGING}
    ORDER BY project_id, event_id, seq
), new_ids AS (
    INSERT INTO event_ids (project_id, event_id)
    SELECT project_id, event_id FROM staged
    ON CONFLICT DO NOTHING
    RETURNING project_id, event_id
)
INSERT INTO events ({_columns}, properties)
SELECT {", ".join("s." + c for c in EVENT_COLUMNS)}, s.properties::jsonb
FROM staged s JOIN new_ids n USING (project_id, event_id)
RETURNING project_id, event_id
"""


async def _insert_new_events(conn: asyncpg.Connection, events: Sequence[EventV1]) -> list[EventV1]:
    await conn.execute(_STAGING_DDL)
    await conn.copy_records_to_table(
        _STAGING,
        records=[
            (seq, *_event_values(ev), _json.encode(ev.properties).decode())
            for seq, ev in enumerate(events)
        ],
        columns=list(_STAGING_COLUMNS),
    )
    rows = await conn.fetch(_INSERT_NEW_EVENTS)
    first_of: dict[tuple[str, str], EventV1] = {}
    for ev in events:
        first_of.setdefault((ev.project_id, ev.event_id), ev)
    return [first_of[(r["project_id"], r["event_id"])] for r in rows]


# ---------------------------------------------------------------------------------------------
# Event rollups

# (project_id, granularity, bucket, name, dim, value, bot)
RollupKey = tuple[str, str, datetime, str, str, str, bool]
_ROLLUP_KEY_TYPES = ("text", "text", "timestamptz", "text", "text", "text", "boolean")
_ROLLUP_KEY_COLUMNS = ("project_id", "granularity", "bucket", "name", "dim", "value", "bot")
_EVENT_DIMS = ((TOTAL, None), *EVENT_DIMENSIONS.items())


@dataclass
class _Tally:
    """Events counted into one rollup key by this batch, and the persons behind them."""

    events: int = 0
    persons: set[str] = dataclasses.field(default_factory=set)

    def add(self, other: _Tally) -> None:
        self.events += other.events
        self.persons |= other.persons


def event_rollup_tallies(events: Iterable[EventV1]) -> dict[RollupKey, _Tally]:
    """Every rollup key the events count into, with their event counts and persons."""
    # Tally at the finest level first (hour x own name), then roll those up into days, weeks and
    # the all-events name: far fewer set operations than expanding every event 66 times.
    hourly: dict[RollupKey, _Tally] = {}
    for ev in events:
        hour = bucket_start(ev.ts, HOUR)
        person = ev.person_key
        for dim, attr in _EVENT_DIMS:
            value = TOTAL if attr is None else dim_value(getattr(ev, attr))
            key = (ev.project_id, HOUR, hour, ev.name, dim, value, ev.is_bot)
            tally = hourly.get(key)
            if tally is None:
                tally = hourly[key] = _Tally()
            tally.events += 1
            tally.persons.add(person)
    result: dict[RollupKey, _Tally] = {}
    for (project_id, _, hour, name, dim, value, bot), tally in hourly.items():
        names = (name,) if name == ALL_EVENTS else (name, ALL_EVENTS)
        for granularity in GRANULARITIES:
            bucket = bucket_start(hour, granularity)
            for rollup_name in names:
                key = (project_id, granularity, bucket, rollup_name, dim, value, bot)
                target = result.get(key)
                if target is None:
                    target = result[key] = _Tally()
                target.add(tally)
    return result


def _unnest(types: Sequence[str], names: Sequence[str], first_param: int = 1) -> str:
    args = ", ".join(f"${first_param + i}::{t}[]" for i, t in enumerate(types))
    return f"unnest({args}) AS u({', '.join(names)})"


def _columns_of(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


_U_ROLLUP = ("p", "g", "b", "n", "d", "v", "bot")
_ROLLUP_MATCH = (
    'r.project_id = u.p AND r.granularity = u.g::"char" AND r.bucket = u.b AND r.name = u.n'
    " AND r.dim = u.d AND r.value = u.v AND r.bot = u.bot"
)
_INSERT_NEW_ROLLUPS = f"""
INSERT INTO rollups (project_id, granularity, bucket, name, dim, value, bot, events, visitors)
SELECT p, g::"char", b, n, d, v, bot, e, vis
FROM {_unnest((*_ROLLUP_KEY_TYPES, "bigint", "bytea"), (*_U_ROLLUP, "e", "vis"))}
ON CONFLICT DO NOTHING
RETURNING project_id, granularity::text, bucket, name, dim, value, bot
"""
_LOCK_ROLLUPS = f"""
SELECT r.project_id, r.granularity::text, r.bucket, r.name, r.dim, r.value, r.bot, r.visitors
FROM rollups r JOIN {_unnest(_ROLLUP_KEY_TYPES, _U_ROLLUP)} ON {_ROLLUP_MATCH}
ORDER BY r.project_id, r.granularity, r.bucket, r.name, r.dim, r.value, r.bot
FOR UPDATE OF r
"""
_UPDATE_ROLLUPS = f"""
UPDATE rollups r SET events = r.events + u.e, visitors = u.vis
FROM {_unnest((*_ROLLUP_KEY_TYPES, "bigint", "bytea"), (*_U_ROLLUP, "e", "vis"))}
WHERE {_ROLLUP_MATCH}
"""


async def _apply_event_rollups(conn: asyncpg.Connection, tallies: dict[RollupKey, _Tally]) -> None:
    if not tallies:
        return
    keys = sorted(tallies)
    # 1. Keys never seen get this batch's values outright (inserted in key order).
    fresh = [(*k, tallies[k].events, sketches.sketch_of(tallies[k].persons)) for k in keys]
    inserted = {tuple(r) for r in await conn.fetch(_INSERT_NEW_ROLLUPS, *_columns_of(fresh, 9))}
    existing = [k for k in keys if k not in inserted]
    if not existing:
        return
    # 2. Existing keys: lock in key order, merge the stored sketch with this batch's persons.
    stored = await conn.fetch(_LOCK_ROLLUPS, *_columns_of(existing, 7))
    updates = []
    for row in stored:
        key: RollupKey = tuple(row)[:7]
        tally = tallies[key]
        merged = sketches.merge_bytes([row["visitors"], sketches.sketch_of(tally.persons)])
        updates.append((*key, tally.events, merged))
    if len(updates) != len(existing):
        raise RuntimeError("rollup rows vanished between insert and lock")
    await conn.execute(_UPDATE_ROLLUPS, *_columns_of(updates, 9))


# ---------------------------------------------------------------------------------------------
# Sessions and session rollups


@dataclass
class SessionRow:
    """A row of `sessions` (field names are its columns)."""

    project_id: str
    session_id: str
    distinct_id: str
    user_id: str | None
    start_ts: datetime
    end_ts: datetime
    events: int
    interactive_events: int
    pageviews: int
    entry_path: str | None
    entry_ts: datetime | None
    exit_path: str | None
    exit_ts: datetime | None
    referrer: str | None
    referrer_domain: str | None
    channel: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    browser: str | None
    os: str | None
    device_type: str | None
    country: str | None
    is_bot: bool


SESSION_COLUMNS = tuple(f.name for f in dataclasses.fields(SessionRow))
# Taken from the session's earliest event.
SESSION_ATTRIBUTES = (
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
_SESSION_TYPES = {
    "start_ts": "timestamptz",
    "end_ts": "timestamptz",
    "entry_ts": "timestamptz",
    "exit_ts": "timestamptz",
    "events": "integer",
    "interactive_events": "integer",
    "pageviews": "integer",
    "is_bot": "boolean",
}
_session_types = [_SESSION_TYPES.get(c, "text") for c in SESSION_COLUMNS]
_session_values = operator.attrgetter(*SESSION_COLUMNS)

_INSERT_NEW_SESSIONS = f"""
INSERT INTO sessions ({", ".join(SESSION_COLUMNS)})
SELECT * FROM {_unnest(_session_types, SESSION_COLUMNS)}
ON CONFLICT DO NOTHING
RETURNING project_id, session_id
"""
_LOCK_SESSIONS = """
SELECT s.* FROM sessions s
JOIN unnest($1::text[], $2::text[]) AS k(p, id) ON s.project_id = k.p AND s.session_id = k.id
ORDER BY s.project_id, s.session_id
FOR UPDATE OF s
"""
_UPDATE_SESSIONS = f"""
UPDATE sessions s SET {", ".join(f"{c} = u.{c}" for c in SESSION_COLUMNS[2:])}
FROM {_unnest(_session_types, SESSION_COLUMNS)}
WHERE s.project_id = u.project_id AND s.session_id = u.session_id
"""


def merge_session(old: SessionRow | None, events: Sequence[EventV1]) -> SessionRow:
    """The session after adding `events` (all of one session, none stored before) to `old`."""
    ordered = sorted(events, key=lambda e: (e.ts, e.event_id))
    first, last = ordered[0], ordered[-1]
    pageviews = [e for e in ordered if e.name == PAGEVIEW]
    interactive = sum(1 for e in ordered if not e.non_interactive)
    first_user = next((e.user_id for e in ordered if e.user_id), None)
    if old is None:
        session = SessionRow(
            project_id=first.project_id,
            session_id=first.session_id or "",
            distinct_id=first.distinct_id,
            user_id=first_user,
            start_ts=first.ts,
            end_ts=last.ts,
            events=len(ordered),
            interactive_events=interactive,
            pageviews=len(pageviews),
            entry_path=None,
            entry_ts=None,
            exit_path=None,
            exit_ts=None,
            **{a: getattr(first, a) for a in SESSION_ATTRIBUTES},
        )
    else:
        session = dataclasses.replace(old)
        session.events += len(ordered)
        session.interactive_events += interactive
        session.pageviews += len(pageviews)
        if first.ts < old.start_ts:
            # An earlier event arrived late: it now defines the session's source and device.
            session.start_ts = first.ts
            session.distinct_id = first.distinct_id
            for attr in SESSION_ATTRIBUTES:
                setattr(session, attr, getattr(first, attr))
            session.user_id = first.user_id or old.user_id or first_user
        else:
            session.user_id = old.user_id or first_user
        session.end_ts = max(old.end_ts, last.ts)
    if pageviews:
        entry, exit_ = pageviews[0], pageviews[-1]
        if session.entry_ts is None or entry.ts < session.entry_ts:
            session.entry_path, session.entry_ts = entry.path, entry.ts
        if session.exit_ts is None or exit_.ts >= session.exit_ts:
            session.exit_path, session.exit_ts = exit_.path, exit_.ts
    return session


# (project_id, granularity, bucket, dim, value, bot)
SessionRollupKey = tuple[str, str, datetime, str, str, bool]
_SESSION_DIM_NAMES = (TOTAL, *SESSION_DIMENSIONS)
_session_dim_values = operator.attrgetter(*SESSION_DIMENSIONS.values())


class SessionRollupDeltas:
    """The change to session_rollups of sessions added (+1) and replaced (-1) in a batch."""

    def __init__(self) -> None:
        # Summed per profile (project, start hour, bot, dimension values) first: sessions of a
        # batch share few profiles, and an updated session's -old/+new mostly cancel here.
        self._profiles: dict[tuple[Any, ...], list[float]] = {}

    def add(self, session: SessionRow, sign: int) -> None:
        profile = (
            session.project_id,
            bucket_start(session.start_ts, HOUR),
            session.is_bot,
            tuple(dim_value(v) for v in _session_dim_values(session)),
        )
        vector = self._profiles.get(profile)
        if vector is None:
            vector = self._profiles[profile] = [0, 0, 0.0, 0, 0]
        vector[0] += sign
        vector[1] += sign if session.interactive_events < 2 else 0
        vector[2] += sign * (session.end_ts - session.start_ts).total_seconds()
        vector[3] += sign * session.pageviews
        vector[4] += sign * session.events

    def by_key(self) -> dict[SessionRollupKey, list[float]]:
        """Non-zero deltas by rollup key: (sessions, bounces, duration_s, pageviews, events)."""
        result: dict[SessionRollupKey, list[float]] = {}
        for (project_id, hour, bot, values), vector in self._profiles.items():
            if not any(vector):
                continue
            for granularity in GRANULARITIES:
                bucket = bucket_start(hour, granularity)
                for dim, value in zip(_SESSION_DIM_NAMES, (TOTAL, *values), strict=True):
                    key = (project_id, granularity, bucket, dim, value, bot)
                    total = result.get(key)
                    if total is None:
                        result[key] = vector[:]
                    else:
                        for i, v in enumerate(vector):
                            total[i] += v
        return {k: v for k, v in result.items() if any(v)}


_UPSERT_SESSION_ROLLUPS = f"""
INSERT INTO session_rollups AS r
    (project_id, granularity, bucket, dim, value, bot,
     sessions, bounces, duration_s, pageviews, events)
SELECT p, g::"char", b, d, v, bot, s, bo, du, pv, e
FROM {
    _unnest(
        (
            "text",
            "text",
            "timestamptz",
            "text",
            "text",
            "boolean",
            "bigint",
            "bigint",
            "double precision",
            "bigint",
            "bigint",
        ),
        ("p", "g", "b", "d", "v", "bot", "s", "bo", "du", "pv", "e"),
    )
}
ON CONFLICT (project_id, granularity, bucket, dim, value, bot) DO UPDATE SET
    sessions = r.sessions + excluded.sessions,
    bounces = r.bounces + excluded.bounces,
    duration_s = r.duration_s + excluded.duration_s,
    pageviews = r.pageviews + excluded.pageviews,
    events = r.events + excluded.events
"""
# A bucket a session moved out of keeps no empty row behind.
_DELETE_EMPTY_SESSION_ROLLUPS = f"""
DELETE FROM session_rollups r
USING {
    _unnest(
        ("text", "text", "timestamptz", "text", "text", "boolean"), ("p", "g", "b", "d", "v", "bot")
    )
}
WHERE r.project_id = u.p AND r.granularity = u.g::"char" AND r.bucket = u.b AND r.dim = u.d
  AND r.value = u.v AND r.bot = u.bot AND r.sessions = 0
"""


async def _apply_sessions(conn: asyncpg.Connection, events: Sequence[EventV1]) -> None:
    by_session: dict[tuple[str, str], list[EventV1]] = {}
    for ev in events:
        if ev.session_id:
            by_session.setdefault((ev.project_id, ev.session_id), []).append(ev)
    if not by_session:
        return
    ids = sorted(by_session)
    deltas = SessionRollupDeltas()
    # 1. Sessions never seen are inserted whole (in key order); a concurrent replica writing the
    #    same new session waits here and then takes the merge path below.
    fresh = {k: merge_session(None, by_session[k]) for k in ids}
    rows = [_session_values(fresh[k]) for k in ids]
    inserted = {
        (r["project_id"], r["session_id"])
        for r in await conn.fetch(_INSERT_NEW_SESSIONS, *_columns_of(rows, len(SESSION_COLUMNS)))
    }
    for k in inserted:
        deltas.add(fresh[k], +1)
    # 2. Stored sessions: lock in key order, merge, write back, move their rollup contribution.
    existing = [k for k in ids if k not in inserted]
    if existing:
        stored = await conn.fetch(_LOCK_SESSIONS, *_columns_of(existing, 2))
        merged = []
        for row in stored:
            old = SessionRow(**{c: row[c] for c in SESSION_COLUMNS})
            new = merge_session(old, by_session[(old.project_id, old.session_id)])
            deltas.add(old, -1)
            deltas.add(new, +1)
            merged.append(_session_values(new))
        await conn.execute(_UPDATE_SESSIONS, *_columns_of(merged, len(SESSION_COLUMNS)))
    changes = deltas.by_key()
    if not changes:
        return
    changed = sorted(changes)  # key order: replicas lock rollup rows in one order
    await conn.execute(
        _UPSERT_SESSION_ROLLUPS, *_columns_of([(*k, *changes[k]) for k in changed], 11)
    )
    emptied = [k for k in changed if changes[k][0] < 0]
    if emptied:
        await conn.execute(_DELETE_EMPTY_SESSION_ROLLUPS, *_columns_of(emptied, 6))


# ---------------------------------------------------------------------------------------------
# Persons and aliases

_INSERT_ALIASES = """
INSERT INTO person_aliases (project_id, distinct_id, person_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT DO NOTHING
"""
# Traits from a batch newer than the stored person overwrite; an older batch only fills gaps.
_UPSERT_PERSONS = """
INSERT INTO persons AS p (project_id, person_id, traits, first_seen, last_seen)
SELECT pid, id, t::jsonb, f, l
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
    AS u(pid, id, t, f, l)
ON CONFLICT (project_id, person_id) DO UPDATE SET
    traits = CASE WHEN excluded.last_seen >= p.last_seen THEN p.traits || excluded.traits
                  ELSE excluded.traits || p.traits END,
    first_seen = LEAST(p.first_seen, excluded.first_seen),
    last_seen = GREATEST(p.last_seen, excluded.last_seen)
"""


def alias_links(events: Iterable[EventV1]) -> dict[tuple[str, str], str]:
    """(project_id, distinct_id) -> person id: the earliest link of each id wins."""
    links: dict[tuple[str, str], tuple[datetime, str]] = {}

    def link(project_id: str, from_id: str, person_id: str, ts: datetime) -> None:
        if from_id == person_id:
            return
        current = links.get((project_id, from_id))
        if current is None or ts < current[0]:
            links[(project_id, from_id)] = (ts, person_id)

    for ev in events:
        if ev.user_id and ev.anonymous_id:
            link(ev.project_id, ev.anonymous_id, ev.user_id, ev.ts)
        if ev.name == ALIAS and ev.user_id and ev.previous_id:
            link(ev.project_id, ev.previous_id, ev.user_id, ev.ts)
    return {k: person for k, (_, person) in links.items()}


async def _apply_persons(conn: asyncpg.Connection, events: Sequence[EventV1]) -> None:
    links = alias_links(events)
    if links:
        keys = sorted(links)
        await conn.execute(
            _INSERT_ALIASES,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [links[k] for k in keys],
        )
    persons: dict[tuple[str, str], list[EventV1]] = {}
    for ev in events:
        if ev.user_id:
            persons.setdefault((ev.project_id, ev.user_id), []).append(ev)
    if not persons:
        return
    rows = []
    for key in sorted(persons):
        evs = sorted(persons[key], key=lambda e: (e.ts, e.event_id))
        traits: dict[str, Any] = {}
        for ev in evs:
            if ev.name == IDENTIFY:
                traits.update(ev.traits)
        rows.append((*key, _json.encode(traits).decode(), evs[0].ts, evs[-1].ts))
    await conn.execute(_UPSERT_PERSONS, *_columns_of(rows, 5))


# ---------------------------------------------------------------------------------------------


async def _write_in_transaction(conn: asyncpg.Connection, events: Sequence[EventV1]) -> int:
    inserted = await _insert_new_events(conn, events)
    if not inserted:
        return 0
    await _apply_event_rollups(conn, event_rollup_tallies(inserted))
    await _apply_sessions(conn, inserted)
    await _apply_persons(conn, inserted)
    return len(inserted)


async def write_events(
    conn: asyncpg.Connection,
    events: Sequence[EventV1],
    partitions: EventPartitions | None = None,
) -> WriteResult:
    """Store `events` once: events, rollups, sessions, session rollups, aliases and persons, in
    one transaction (the caller's when it has one open). Events already stored are skipped and
    contribute nothing, so writing the same batch again changes nothing.

    `partitions` caches which day partitions exist; pass one long-lived instance per process.
    """
    if not events:
        return WriteResult(0, 0, 0)
    days = {ev.ts.astimezone(UTC).date() for ev in events}
    if conn.is_in_transaction():
        await ensure_partitions(conn, days, partitions)
        inserted = await _write_in_transaction(conn, events)
    else:
        # Partitions first, in their own short transaction: creating one locks all of `events`,
        # which must not last as long as the batch's transaction.
        await ensure_partitions(conn, days, partitions)
        async with conn.transaction():
            inserted = await _write_in_transaction(conn, events)
    return WriteResult(received=len(events), inserted=inserted, duplicates=len(events) - inserted)
