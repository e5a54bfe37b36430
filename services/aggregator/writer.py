"""Writes enriched events to the hot store in one transaction: events (deduplicated on the event
id), event rollups, sessions with their session-rollup deltas, person aliases and persons.

Everything after the dedup step is derived from the rows actually inserted, so a redelivered
batch inserts nothing and changes no rollup.

Where the time goes, and so the shape of a write (docs/storage.md, "Write path"):
1. events and their dedup ids: the batch's unique ids inserted as digests (two text arrays in),
   returning those never seen, whose rows alone are COPYed (binary) into `event_rows`; concurrently
   with other writers;
2. in Python, still without locks: each rollup key's event count and persons, and one sketch
   per distinct person set (an hour's set usually serves its day and week keys too); per
   session, what its new events say (one row per session into the merge);
3. under the project's advisory lock: stored sketches read (`FOR UPDATE`), united with the
   batch's, and every key upserted in one statement that rewrites a sketch only when it
   changed; sessions merged and session rollups moved in one SQL statement; aliases, persons.

Concurrency: writers of one project serialize on a transaction-scoped advisory lock taken
before the first derived table is touched, so they can neither deadlock nor lose an update
there (the hot rollup rows of the current hour serialized them anyway). The events step runs
before the lock, in parallel; its dedup ids are inserted in key order. Rows read for a merge
are also locked `FOR UPDATE`, and a key or session that appeared between the read and the
write (a writer not following this protocol, e.g. an older release during a rolling update)
aborts the batch with a retryable error instead of overwriting it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from hashlib import md5
from typing import Any, NamedTuple

import asyncpg
import msgspec
from datasketches import hll_sketch

from libs.common import sketches
from libs.common.db import lock_derived_tables
from libs.common.dictionary_deletion import KeysSwept, check_keys
from libs.common.errors import StrataError
from libs.common.event_dictionary import CLIENTS, PAGES, SOURCES, Entry, assign_keys
from libs.common.event_partitions import EventPartitions, ensure_partitions
from libs.common.model.columns import DERIVED_EVENT_COLUMNS, STORED_EVENT_COLUMNS
from libs.common.model.event_encoding import SOURCE_PROPERTIES, stored_event_fields
from libs.common.model.session_encoding import decoded_columns_sql, encoded_columns_sql
from libs.common.rollup_rules import (
    SESSION_KEY_COLUMNS,
    SESSION_ROLLUP_COUNTERS,
    RollupKey,
    Tally,
    bounce_sql,
    duration_sql,
    event_rollup_input,
    event_rollup_tallies,
    session_rollup_rows_sql,
)
from libs.common.schemas.events_v1 import ALIAS, IDENTIFY, PAGEVIEW, EventV1


class WriteResult(msgspec.Struct, frozen=True):
    """What one write did: events received, newly inserted, and dropped as already stored."""

    received: int
    inserted: int
    duplicates: int


class ConcurrentWriteConflict(asyncpg.exceptions.SerializationError, StrataError):  # type: ignore[misc]
    """A row this batch was about to create appeared meanwhile (a writer outside the locking
    protocol): the transaction is rolled back and the batch is retried, never half-merged."""

    code = "concurrent_write_conflict"


# ---------------------------------------------------------------------------------------------
# Events and dedup

# Every stored column (libs/common/model) but those stored encoded (anonymous_id, properties:
# libs/common/model/event_encoding.py), which travel beside them with derived_fields, and the
# derived columns (the person keys), which follow them.
_ENCODED_COLUMNS = ("anonymous_id", "properties", "derived_fields")
EVENT_COLUMNS = tuple(
    c for c in STORED_EVENT_COLUMNS if c not in _ENCODED_COLUMNS and c not in DERIVED_EVENT_COLUMNS
)
# A row's page, client and source are their keys into `event_pages`, `event_clients` and
# `event_sources` (libs/common/event_dictionary.py), not the strings.
_DICTIONARIES = (PAGES, CLIENTS, SOURCES)
_ROW_COLUMNS = tuple(c for c in EVENT_COLUMNS if not any(c in d.columns for d in _DICTIONARIES))
_json = msgspec.json.Encoder()


def _json_rows_sql(columns: Sequence[str], types: dict[str, str], param: int = 1) -> str:
    """A FROM item reading parameter `param`, a JSON array of rows (JSON arrays whose values are
    in `columns` order), as a relation `j` of those columns plus `ordinality` (1-based).

    One JSON document per statement costs Python a single msgspec call and PostgreSQL a parse
    in C; typed arrays per column cost several microseconds per value to encode in asyncpg.
    """
    values = ", ".join(
        f"j.e->{i} AS {c}"  # a JSON value stays jsonb as it is
        if types.get(c) == "jsonb"
        else f"(j.e->>{i})::{types.get(c, 'text')} AS {c}"
        for i, c in enumerate(columns)
    )
    return (
        f"(SELECT {values}, j.ordinality"
        f" FROM jsonb_array_elements(${param}::jsonb) WITH ORDINALITY AS j(e, ordinality))"
    )


# An event's EVENT_COLUMNS values: one C call copies all its fields into a tuple, and a tuple
# getter picks them (half the CPU of an attribute getter over 31 names).
_event_row = operator.itemgetter(*(EventV1.__struct_fields__.index(c) for c in _ROW_COLUMNS))
_event_fields = msgspec.structs.astuple
_STORED_COLUMNS = (
    *_ROW_COLUMNS,
    *_ENCODED_COLUMNS,
    "person_key",
    "device_key",
    *(d.key for d in _DICTIONARIES),
)
# The batch's unique ids as digests (migration 0022: a fixed 16-byte key per id), inserted in
# digest order so writers lock ids in one order. Only how many were new comes back, and the
# digests never seen only when some id was already stored: a batch of new events (nearly every
# batch) is then not sent back row by row to be decoded.
_INSERT_NEW_EVENT_IDS = """
WITH inserted AS (
    INSERT INTO event_ids (digest)
    SELECT d FROM unnest($1::uuid[]) AS d ORDER BY d
    ON CONFLICT DO NOTHING
    RETURNING digest
)
SELECT count(*)::int,
    CASE WHEN count(*) < cardinality($1::uuid[])
        THEN coalesce(array_agg(digest), '{}') END
FROM inserted
"""


def event_id_digest(project_id: str, event_id: str) -> str:
    """The dedup key of an event id in `event_ids`, in hex: what the SQL function
    `event_id_digest` (migration 0022) computes, which a test holds it to. Computed here
    because PostgreSQL's md5 of a text and its cast to uuid cost more per id than the rest of
    the insert (EXPLAIN ANALYZE of a 4,000-id batch: a third of the statement)."""
    return md5(f"{len(project_id)}:{project_id}{event_id}".encode()).hexdigest()


# Keys for a project's ids not keyed yet, then every asked id's key. The counter row reserves a
# run of keys (locked to COMMIT, so writers of one project take turns); an id another writer
# keys first keeps that key (ON CONFLICT) and this run's key for it is left unused. Ids keyed
# by a writer whose statement started after this one's snapshot are missing from the result:
# the caller asks again.
_ASSIGN_PERSON_KEYS = """
WITH asked AS (
    SELECT DISTINCT u.id FROM unnest($2::text[]) AS u(id)
), known AS (  -- one index scan for the array (a semi join with `asked` was planned as a
    -- sequential scan of all the project's keys at every batch while their table was small)
    SELECT k.id, k.key FROM person_keys AS k WHERE k.project_id = $1 AND k.id = ANY($2::text[])
), wanted AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS n
    FROM asked WHERE id NOT IN (SELECT id FROM known)
), reserved AS (
    INSERT INTO person_key_counters AS c (project_id, next_key)
    SELECT $1, count(*) FROM wanted HAVING count(*) > 0
    ON CONFLICT (project_id) DO UPDATE SET next_key = c.next_key + excluded.next_key
    RETURNING c.next_key - (SELECT count(*) FROM wanted) AS first
), assigned AS (
    INSERT INTO person_keys (project_id, id, key)
    SELECT $1, w.id, r.first + w.n FROM wanted AS w, reserved AS r
    ON CONFLICT (project_id, id) DO NOTHING
    RETURNING id, key
)
SELECT id, key FROM known UNION ALL SELECT id, key FROM assigned
"""


def person_id_of(ev: EventV1) -> str:
    """The id an event names its person by before aliases: what `events_scan` falls back to."""
    return ev.user_id if ev.user_id is not None else ev.distinct_id


async def assign_person_keys(
    conn: asyncpg.Connection, events: Sequence[EventV1]
) -> dict[tuple[str, str], int]:
    """(project_id, id) -> the id's key in `person_keys`, for every id the events' rows and
    alias links need (assigned now for ids never seen). The same id always gets the same key."""
    wanted: dict[str, set[str]] = {}
    for ev in events:
        ids = wanted.setdefault(ev.project_id, set())
        ids.add(ev.distinct_id)
        if ev.user_id is not None:
            ids.add(ev.user_id)
        if ev.previous_id is not None:
            ids.add(ev.previous_id)
    keys: dict[tuple[str, str], int] = {}
    for project_id in sorted(wanted):
        missing = sorted(wanted[project_id])
        for _ in range(3):
            rows = await conn.fetch(_ASSIGN_PERSON_KEYS, project_id, missing)
            for row in rows:
                keys[(project_id, row["id"])] = row["key"]
            missing = [i for i in missing if (project_id, i) not in keys]
            if not missing:
                break
        else:
            raise ConcurrentWriteConflict(f"person keys of {len(missing)} ids not settled")
    return keys


# An event's page, client and source as their dictionaries key them (one C call each for the
# columns; all NULL: no key).
_page_of: Callable[[EventV1], Entry] = operator.attrgetter("project_id", *PAGES.columns)
_client_of: Callable[[EventV1], Entry] = operator.attrgetter("project_id", *CLIENTS.columns)
_source_columns: Callable[[EventV1], Entry] = operator.attrgetter("project_id", *SOURCES.columns)


(_SEARCH_ENGINE, _SOCIAL_NETWORK) = (key for _, key in SOURCE_PROPERTIES)
_NEITHER = (None, None)


def _source_of(ev: EventV1) -> Entry:
    """The event's source with the properties its dictionary stores (enrichment's names): each
    a string, else None, as `stored_event_fields` leaves them out. Unrolled, and a tuple
    concatenation rather than unpacking."""
    properties = ev.properties
    if _SEARCH_ENGINE not in properties and _SOCIAL_NETWORK not in properties:
        return _source_columns(ev) + _NEITHER
    engine = properties.get(_SEARCH_ENGINE)
    network = properties.get(_SOCIAL_NETWORK)
    return _source_columns(ev) + (  # noqa: RUF005 (faster than unpacking)
        engine if type(engine) is str else None,
        network if type(network) is str else None,
    )


class _Keys(NamedTuple):
    """A batch's keys: persons' (project, id), pages', clients' and sources'; and each
    event's source key by the event's id() (its entry is computed once: `_source_of` costs a
    microsecond)."""

    persons: dict[tuple[str, str], int]
    pages: dict[Entry, int]
    clients: dict[Entry, int]
    sources: dict[Entry, int]
    source_of_event: dict[int, int | None]


async def _dictionary_keys(conn: asyncpg.Connection, events: Sequence[EventV1]) -> _Keys:
    entries = list(map(_source_of, events))
    sources = await assign_keys(conn, SOURCES, entries)
    return _Keys(
        await assign_person_keys(conn, events),
        await assign_keys(conn, PAGES, map(_page_of, events)),
        await assign_keys(conn, CLIENTS, map(_client_of, events)),
        sources,
        dict(zip(map(id, events), map(sources.get, entries), strict=True)),
    )


def _event_records(events: Sequence[EventV1], keys: _Keys) -> Iterable[tuple[Any, ...]]:
    persons, pages, clients, _, source_of_event = keys
    for ev in events:
        person = person_id_of(ev)
        device = None if person == ev.distinct_id else persons[(ev.project_id, ev.distinct_id)]
        yield (
            *_event_row(_event_fields(ev)),
            *stored_event_fields(ev),
            persons[(ev.project_id, person)],
            device,
            pages.get(_page_of(ev)),
            clients.get(_client_of(ev)),
            source_of_event[id(ev)],
        )


async def _insert_new_events(
    conn: asyncpg.Connection, events: Sequence[EventV1], keys: _Keys
) -> list[EventV1]:
    """The events of `events` never stored before (the first of repeats inside the batch), now
    stored: their id digests inserted into `event_ids`, their rows COPYed (binary) into
    `event_rows`, both in the caller's transaction."""
    first: dict[str, int] = {}  # digest -> the first event carrying it
    for i, ev in enumerate(events):
        first.setdefault(event_id_digest(ev.project_id, ev.event_id), i)
    count, new = await conn.fetchrow(_INSERT_NEW_EVENT_IDS, list(first))
    if count == len(first):  # every id was new (no digest came back): the first event of each
        inserted = list(events) if count == len(events) else [events[i] for i in first.values()]
    else:
        inserted = [events[i] for i in sorted(first[d.hex] for d in new or ())]
    if inserted:
        await conn.copy_records_to_table(
            "event_rows", records=_event_records(inserted, keys), columns=_STORED_COLUMNS
        )
    return inserted


# ---------------------------------------------------------------------------------------------
# Locking

# Every writer of rollups, sessions, session rollups, aliases and persons holds the project's
# derived-tables lock (libs.common.db.lock_derived_tables) from the first of them to COMMIT.


# ---------------------------------------------------------------------------------------------
# Event rollups


def _batch_sketches(tallies: Iterable[Tally]) -> dict[int, hll_sketch]:
    """One sketch per distinct person set (by identity) among the tallies."""
    built: dict[int, hll_sketch] = {}
    for tally in tallies:
        if id(tally.persons) not in built:
            built[id(tally.persons)] = sketches.sketch_from(tally.persons)
    return built


# The batch's keys and counts, the i-th row being key number i (0-based).
_ROLLUP_ROW = ("project_id", "granularity", "bucket", "name", "dim", "value", "bot", "events")
_ROLLUP_TYPES = {"granularity": '"char"', "bucket": "timestamptz", "bot": "boolean"}
_ROLLUP_TYPES["events"] = "bigint"
_ROLLUP_BATCH = _json_rows_sql(_ROLLUP_ROW, _ROLLUP_TYPES)
_ROLLUP_MATCH = " AND ".join(f"r.{c} = k.{c}" for c in _ROLLUP_ROW[:7])
_READ_ROLLUPS = f"""
SELECT (k.ordinality - 1)::int, r.visitors FROM {_ROLLUP_BATCH} k JOIN rollups r ON {_ROLLUP_MATCH}
ORDER BY k.ordinality
FOR UPDATE OF r
"""
# Sketches travel only for keys that are new or whose sketch changed; an empty one means "keep
# the stored sketch". `created` counts the rows inserted rather than updated (xmax = 0).
_UPSERT_ROLLUPS = f"""
WITH upserted AS (
    INSERT INTO rollups AS r ({", ".join(_ROLLUP_ROW)}, visitors)
    SELECT {", ".join("k." + c for c in _ROLLUP_ROW)}, coalesce(s.visitors, ''::bytea)
    FROM {_ROLLUP_BATCH} k
    LEFT JOIN unnest($2::int[], $3::bytea[]) AS s(i, visitors) ON s.i = k.ordinality - 1
    ORDER BY k.ordinality
    ON CONFLICT ({", ".join(_ROLLUP_ROW[:7])}) DO UPDATE SET
        events = r.events + excluded.events,
        visitors = CASE WHEN octet_length(excluded.visitors) = 0 THEN r.visitors
                        ELSE excluded.visitors END
    RETURNING xmax = 0 AS created
)
SELECT count(*) FILTER (WHERE created) FROM upserted
"""


async def _apply_event_rollups(conn: asyncpg.Connection, tallies: dict[RollupKey, Tally]) -> None:
    if not tallies:
        return
    keys = sorted(tallies)  # one key order for every writer
    payload = _json.encode([(*k, tallies[k].events) for k in keys]).decode()
    batch_sketches = _batch_sketches(tallies.values())
    stored: dict[int, bytes] = {r[0]: r[1] for r in await conn.fetch(_READ_ROLLUPS, payload)}
    indexes: list[int] = []
    visitors: list[bytes] = []
    serialized: dict[int, bytes] = {}
    for i, key in enumerate(keys):
        persons = tallies[key].persons
        addition = batch_sketches[id(persons)]
        old = stored.get(i)
        if old is None:
            blob = serialized.get(id(persons))
            if blob is None:
                blob = serialized[id(persons)] = sketches.serialize(addition)
        else:
            merged = sketches.united(old, addition)
            if merged is None:
                continue  # the stored sketch already counts these persons
            blob = merged
        indexes.append(i)
        visitors.append(blob)
    created = await conn.fetchval(_UPSERT_ROLLUPS, payload, indexes, visitors)
    if created != len(keys) - len(stored):
        raise ConcurrentWriteConflict(
            f"{len(keys) - len(stored)} rollup rows expected new, {created} created"
        )


# ---------------------------------------------------------------------------------------------
# Sessions and session rollups

# A session row is a function of its events (docs/storage.md, "Sessions"): merged here in SQL
# from the batch's new events and the stored row, whose old and new contributions to
# session_rollups are moved in the same statement.
SOURCE_ATTRIBUTES = (  # taken from the session's earliest event that carries a channel
    "referrer",
    "referrer_domain",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
)
DEVICE_ATTRIBUTES = ("browser", "os", "device_type", "country", "is_bot")  # earliest event
SESSION_ATTRIBUTES = (*SOURCE_ATTRIBUTES, *DEVICE_ATTRIBUTES)
SESSION_COLUMNS = (
    "project_id",
    "session_id",
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
    *SESSION_ATTRIBUTES,
    # The ids (and times) of the events the ordered values came from: the tie-breaks of a merge.
    "first_event_id",
    "entry_event_id",
    "exit_event_id",
    "user_ts",
    "user_event_id",
    "source_ts",
    "source_event_id",
)
# What the batch's new events say about each session they belong to: one row per session,
# summarised in Python in one pass (cheaper than PostgreSQL parsing every event and sorting the
# batch five times), merged in SQL with the stored row. A *_ts column is null when no event of
# the batch qualifies (no user id, no channel, no pageview).
_SESSION_BATCH_ROW = (
    "project_id",
    "session_id",
    "events",
    "interactive_events",
    "pageviews",
    "end_ts",
    # the first event (in event order)
    "start_ts",
    "first_event_id",
    "distinct_id",
    *DEVICE_ATTRIBUTES,
    # the first event with a user id
    "user_id",
    "user_ts",
    "user_event_id",
    # the first event with a channel
    *SOURCE_ATTRIBUTES,
    "source_ts",
    "source_event_id",
    # the first and the last pageview
    "entry_path",
    "entry_ts",
    "entry_event_id",
    "exit_path",
    "exit_ts",
    "exit_event_id",
)
_SESSION_BATCH_TYPES = {
    **dict.fromkeys(("events", "interactive_events", "pageviews"), "int"),
    **dict.fromkeys(
        ("end_ts", "start_ts", "user_ts", "source_ts", "entry_ts", "exit_ts"), "timestamptz"
    ),
    "is_bot": "boolean",
}
_first_event_values = operator.attrgetter("ts", "event_id", "distinct_id", *DEVICE_ATTRIBUTES)
_source_values = operator.attrgetter(*SOURCE_ATTRIBUTES, "ts", "event_id")


class _SessionBatch:
    """The batch's events of one session, as far as the merge needs them."""

    __slots__ = (
        "end",
        "entry",
        "events",
        "exit",
        "first",
        "interactive",
        "pageviews",
        "source",
        "user",
    )

    def __init__(self, ev: EventV1) -> None:
        self.events = self.interactive = self.pageviews = 0
        self.end = ev.ts
        self.first = ev
        self.user: EventV1 | None = None
        self.source: EventV1 | None = None
        self.entry: EventV1 | None = None
        self.exit: EventV1 | None = None


def _before_event(a: EventV1, b: EventV1) -> bool:
    """Event `a` comes before `b` in event order: time, then event id by code point (as
    COLLATE "C" compares UTF-8, and as a recomputation sorts)."""
    return (a.ts, a.event_id) < (b.ts, b.event_id)


def session_batch_rows(events: Iterable[EventV1]) -> list[tuple[Any, ...]]:
    """One `_SESSION_BATCH_ROW` per session of `events` (those with a session id), in key
    order."""
    sessions: dict[tuple[str, str], _SessionBatch] = {}
    for ev in events:
        if not ev.session_id:
            continue
        key = (ev.project_id, ev.session_id)
        s = sessions.get(key)
        if s is None:
            s = sessions[key] = _SessionBatch(ev)
        elif _before_event(ev, s.first):
            s.first = ev
        s.events += 1
        if not ev.non_interactive:
            s.interactive += 1
        if ev.ts > s.end:
            s.end = ev.ts
        if ev.user_id and (s.user is None or _before_event(ev, s.user)):
            s.user = ev
        if ev.channel and (s.source is None or _before_event(ev, s.source)):
            s.source = ev
        if ev.name == PAGEVIEW:
            s.pageviews += 1
            if s.entry is None or _before_event(ev, s.entry):
                s.entry = ev
            if s.exit is None or _before_event(s.exit, ev):
                s.exit = ev
    no_source = (None,) * (len(SOURCE_ATTRIBUTES) + 2)
    rows = []
    for key in sorted(sessions):
        s = sessions[key]
        user, entry, exit_ = s.user, s.entry, s.exit
        rows.append(
            (
                *key,
                s.events,
                s.interactive,
                s.pageviews,
                s.end,
                *_first_event_values(s.first),
                *((None, None, None) if user is None else (user.user_id, user.ts, user.event_id)),
                *(no_source if s.source is None else _source_values(s.source)),
                *((None, None, None) if entry is None else (entry.path, entry.ts, entry.event_id)),
                *((None, None, None) if exit_ is None else (exit_.path, exit_.ts, exit_.event_id)),
            )
        )
    return rows


# What a session contributes to session_rollups (the old row's, subtracted, is prefixed old_).
_CONTRIBUTION = (
    "start_ts",
    "end_ts",
    "interactive_events",
    "pageviews",
    "events",
    *SESSION_KEY_COLUMNS,
)
_COUNTERS = ("start_ts", "end_ts", "interactive_events", "pageviews", "events")
# What places a session's contribution: its start hour (from start_ts) and these.
_KEY_ATTRIBUTES = SESSION_KEY_COLUMNS
# Ties on equal timestamps are broken by event id in code-point order (COLLATE "C"), as a
# recomputation in Python sorts them; every comparison of a merge uses this order, so merging
# batches in any order gives the row a recomputation from all the events gives.


def _before(ts: str, event_id: str, other_ts: str, other_id: str) -> str:
    """SQL: the event (ts, event_id) comes before (other_ts, other_id) in event order."""
    return f'({ts}, {event_id} COLLATE "C") < ({other_ts}, {other_id} COLLATE "C")'


# The batch's first event of a session precedes the stored row's (or there is no row).
_NEW_FIRST = "o.session_id IS NULL OR " + _before(
    "b.start_ts", "b.first_event_id", "o.start_ts", "coalesce(o.first_event_id, '')"
)
# The stored row's source, read back (session_encoding): rows from before the tie keys count
# theirs as of their start.
_STORED_SOURCE_TS = "o.source_ts"
_STORED_SOURCE_ID = "coalesce(o.source_event_id, '')"
_NEW_SOURCE = (
    "b.source_ts IS NOT NULL AND (o.channel IS NULL OR "
    + _before("b.source_ts", "b.source_event_id", _STORED_SOURCE_TS, _STORED_SOURCE_ID)
    + ")"
)
_NEW_USER = (
    "b.user_ts IS NOT NULL AND (coalesce(o.user_id, '') = '' OR (o.user_ts IS NOT NULL AND "
    + _before("b.user_ts", "b.user_event_id", "o.user_ts", "coalesce(o.user_event_id, '')")
    + "))"
)
_NEW_ENTRY = (
    "b.entry_ts IS NOT NULL AND (o.entry_ts IS NULL OR "
    + _before("b.entry_ts", "b.entry_event_id", "o.entry_ts", "coalesce(o.entry_event_id, '')")
    + ")"
)
_NEW_EXIT = (
    "b.exit_ts IS NOT NULL AND (o.exit_ts IS NULL OR "
    + _before("o.exit_ts", "coalesce(o.exit_event_id, '')", "b.exit_ts", "b.exit_event_id")
    + ")"
)


def _taken(condition: str, columns: Sequence[str]) -> str:
    """Each of `columns` from the batch's row `b` when `condition` holds, else the stored
    row's."""
    return ", ".join(f"CASE WHEN {condition} THEN b.{c} ELSE o.{c} END AS {c}" for c in columns)


_TAKEN = ",\n        ".join(
    (
        _taken("f.new_user", ("user_id", "user_ts", "user_event_id")),
        _taken("f.new_entry", ("entry_path", "entry_ts", "entry_event_id")),
        _taken("f.new_exit", ("exit_path", "exit_ts", "exit_event_id")),
        _taken("f.new_source", (*SOURCE_ATTRIBUTES, "source_ts", "source_event_id")),
        _taken("f.new_first", ("distinct_id", "first_event_id", *DEVICE_ATTRIBUTES)),
    )
)
# Which of a session's ordered values the batch replaces, decided once per session (OFFSET 0
# keeps PostgreSQL from inlining each test into every column it picks: up to 8 times).
_FLAGS = ",\n        ".join(
    f"{condition} AS {flag}"
    for flag, condition in (
        ("new_first", _NEW_FIRST),
        ("new_user", _NEW_USER),
        ("new_entry", _NEW_ENTRY),
        ("new_exit", _NEW_EXIT),
        ("new_source", _NEW_SOURCE),
    )
)
# A replaced row that stays in the same buckets (the usual case: only its counters grew) nets
# its -old/+new into one row of differences, so fewer rows are expanded into dimensions.
_STAYS = "\n        AND ".join(
    ["replaces", "hour = old_hour"]
    + [f"{c} IS NOT DISTINCT FROM old_{c}" for c in _CONTRIBUTION if c not in _COUNTERS]
)


def _indent(sql: str, by: str = "    ") -> str:
    """`sql` with its lines after the first indented, to read well inside a CTE."""
    return sql.replace("\n", "\n" + by)


_APPLY_SESSIONS = f"""
WITH merged AS (
    SELECT b.project_id, b.session_id,
        least(o.start_ts, b.start_ts) AS start_ts,
        greatest(o.end_ts, b.end_ts) AS end_ts,
        coalesce(o.events, 0) + b.events AS events,
        coalesce(o.interactive_events, 0) + b.interactive_events AS interactive_events,
        coalesce(o.pageviews, 0) + b.pageviews AS pageviews,
        {_TAKEN},
        o.session_id IS NOT NULL AS replaces, o.ctid AS stored_ctid,
        {", ".join(f"o.{c} AS old_{c}" for c in _CONTRIBUTION)}
    FROM {_json_rows_sql(_SESSION_BATCH_ROW, _SESSION_BATCH_TYPES)} b
    -- One primary-key probe per session (a subquery with FOR UPDATE is never flattened into a
    -- hash join that would scan every session), locking the stored row.
    LEFT JOIN LATERAL (
        SELECT s.ctid, {decoded_columns_sql(SESSION_COLUMNS)} FROM sessions s
        WHERE s.project_id = b.project_id AND s.session_id = b.session_id
        FOR UPDATE
    ) o ON true
    CROSS JOIN LATERAL (
        SELECT {_FLAGS}
        OFFSET 0
    ) f
), inserted AS (  -- sessions not stored: a plain insert (see _apply_sessions)
    INSERT INTO sessions ({", ".join(SESSION_COLUMNS)})
    SELECT {encoded_columns_sql(SESSION_COLUMNS)} FROM merged WHERE NOT replaces
    ORDER BY project_id, session_id
), updated AS (  -- stored ones: the version read and locked above, found by its ctid
    UPDATE sessions AS s SET ({", ".join(SESSION_COLUMNS[2:])})
        = ({encoded_columns_sql(SESSION_COLUMNS[2:], "m")})
    FROM merged AS m WHERE m.replaces AND s.ctid = m.stored_ctid
    RETURNING 1
), counted AS (  -- what each session's new row and the row it replaces count
    SELECT project_id, replaces,
        {", ".join(_CONTRIBUTION)}, {", ".join("old_" + c for c in _CONTRIBUTION)},
        date_trunc('hour', start_ts, 'UTC') AS hour,
        date_trunc('hour', old_start_ts, 'UTC') AS old_hour,
        {bounce_sql("interactive_events")}::int AS bounces,
        {bounce_sql("old_interactive_events")}::int AS old_bounces,
        {duration_sql("start_ts", "end_ts")} AS duration_s,
        {duration_sql("old_start_ts", "old_end_ts")} AS old_duration_s
    FROM merged
), contribution AS (  -- each session's new row counts +1, the row it replaces -1
    SELECT project_id, hour, {", ".join(_KEY_ATTRIBUTES)},
        CASE WHEN stays THEN 0 ELSE 1 END AS sessions,
        bounces - CASE WHEN stays THEN old_bounces ELSE 0 END AS bounces,
        duration_s - CASE WHEN stays THEN old_duration_s ELSE 0 END AS duration_s,
        pageviews - CASE WHEN stays THEN old_pageviews ELSE 0 END AS pageviews,
        events - CASE WHEN stays THEN old_events ELSE 0 END AS events
    FROM (SELECT *, {_STAYS} AS stays FROM counted) c
    UNION ALL
    SELECT project_id, old_hour, {", ".join("old_" + c for c in _KEY_ATTRIBUTES)},
        -1, -old_bounces, -old_duration_s, -old_pageviews, -old_events
    FROM counted WHERE replaces AND NOT ({_STAYS})
), deltas AS (  -- the rollup rules (libs/common/rollup_rules.py) over the contributions
    {_indent(session_rollup_rows_sql("contribution"))}
), rolled AS (
    INSERT INTO session_rollups AS r (project_id, granularity, bucket, dim, value, bot,
                                      sessions, bounces, duration_s, pageviews, events)
    SELECT project_id, granularity, bucket, dim, value, bot, {", ".join(SESSION_ROLLUP_COUNTERS)}
    FROM deltas
    WHERE {" OR ".join(f"{c} <> 0" for c in SESSION_ROLLUP_COUNTERS)}
    ORDER BY project_id, granularity, bucket, dim, value, bot
    ON CONFLICT (project_id, granularity, bucket, dim, value, bot) DO UPDATE SET
        sessions = r.sessions + excluded.sessions,
        bounces = r.bounces + excluded.bounces,
        duration_s = r.duration_s + excluded.duration_s,
        pageviews = r.pageviews + excluded.pageviews,
        events = r.events + excluded.events
    RETURNING project_id, granularity::text AS g, bucket, dim, value, bot, sessions
)
SELECT (SELECT count(*) FROM merged WHERE replaces) AS stored,
    (SELECT count(*) FROM updated) AS updated,
    (SELECT jsonb_agg(jsonb_build_array(project_id, g, bucket, dim, value, bot))
     FROM rolled WHERE sessions = 0) AS emptied
"""
# A bucket a session moved out of keeps no empty row behind.
_DELETE_EMPTY_SESSION_ROLLUPS = f"""
DELETE FROM session_rollups r
USING {
    _json_rows_sql(
        ("project_id", "granularity", "bucket", "dim", "value", "bot"),
        {"granularity": '"char"', "bucket": "timestamptz", "bot": "boolean"},
    )
} k
WHERE r.project_id = k.project_id AND r.granularity = k.granularity AND r.bucket = k.bucket
  AND r.dim = k.dim AND r.value = k.value AND r.bot = k.bot AND r.sessions = 0
"""


async def _apply_sessions(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Merge the sessions summarised by `session_batch_rows` into the stored ones."""
    if not rows:
        return
    try:
        row = await conn.fetchrow(_APPLY_SESSIONS, _json.encode(rows).decode())
    except asyncpg.UniqueViolationError as exc:
        # A session the merge read as not stored was inserted meanwhile (by a writer outside
        # the locking protocol): retried, and the retry merges into it.
        raise ConcurrentWriteConflict(f"a session appeared meanwhile: {exc}") from exc
    if row["updated"] != row["stored"]:
        raise ConcurrentWriteConflict(f"{row['stored']} sessions read, {row['updated']} updated")
    if row["emptied"] is not None:
        await conn.execute(_DELETE_EMPTY_SESSION_ROLLUPS, row["emptied"])


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


def _columns_of(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def person_rows(events: Iterable[EventV1]) -> list[tuple[str, str, str, datetime, datetime]]:
    """(project_id, person_id, traits JSON, first seen, last seen) per identified user, in key
    order; traits merged from `$identify` events in event order."""
    persons: dict[tuple[str, str], list[EventV1]] = {}
    for ev in events:
        if ev.user_id:
            persons.setdefault((ev.project_id, ev.user_id), []).append(ev)
    rows = []
    for key in sorted(persons):
        evs = sorted(persons[key], key=lambda e: (e.ts, e.event_id))
        traits: dict[str, Any] = {}
        for ev in evs:
            if ev.name == IDENTIFY:
                traits.update(ev.traits)
        rows.append((*key, _json.encode(traits).decode(), evs[0].ts, evs[-1].ts))
    return rows


async def _apply_persons(
    conn: asyncpg.Connection,
    links: dict[tuple[str, str], str],
    persons: list[tuple[str, str, str, datetime, datetime]],
) -> None:
    if links:
        keys = sorted(links)
        await conn.execute(
            _INSERT_ALIASES,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [links[k] for k in keys],
        )
    if persons:
        await conn.execute(_UPSERT_PERSONS, *_columns_of(persons, 5))


# ---------------------------------------------------------------------------------------------


async def _write_in_transaction(
    conn: asyncpg.Connection, events: Sequence[EventV1], keys: _Keys
) -> int:
    inserted = await _insert_new_events(conn, events, keys)
    if not inserted:
        return 0
    # The Python share of the work, done before the lock so other writers are not kept waiting.
    tallies = event_rollup_tallies(event_rollup_input(ev) for ev in inserted)
    sessions = session_batch_rows(inserted)
    links = alias_links(inserted)
    persons = person_rows(inserted)
    await lock_derived_tables(conn, (ev.project_id for ev in inserted))
    # A page or source deleted since its key was looked up (an erasure, the sweep) rolls the
    # write back.
    await check_keys(conn, {PAGES: keys.pages.values(), SOURCES: keys.sources.values()})
    await _apply_event_rollups(conn, tallies)
    await _apply_sessions(conn, sessions)
    await _apply_persons(conn, links, persons)
    return len(inserted)


# Look-ups of a batch's keys before it gives up (each after a page or source was deleted
# under it).
_PAGE_ATTEMPTS = 3


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
        keys = await _dictionary_keys(conn, events)
        inserted = await _write_in_transaction(conn, events, keys)
    else:
        # Partitions first, in their own short transaction: creating one locks all of
        # `event_rows`, which must not last as long as the batch's transaction.
        await ensure_partitions(conn, days, partitions)
        # Keys too (persons', pages', clients'), committed on their own: they hold each
        # project's key counter only briefly, and a key assigned for a batch that then fails
        # is the one its replay gets.
        for attempt in range(_PAGE_ATTEMPTS):
            keys = await _dictionary_keys(conn, events)
            try:
                async with conn.transaction():
                    inserted = await _write_in_transaction(conn, events, keys)
                break
            except KeysSwept:
                if attempt == _PAGE_ATTEMPTS - 1:
                    raise
    return WriteResult(received=len(events), inserted=inserted, duplicates=len(events) - inserted)
