"""The columns of `events` and `sessions`, each declared once with its PostgreSQL type (as the
migrations create it), its Arrow type in day files, and what the query side may do with it.

Order is the table's column order. A new column is a migration plus one entry here; the drift
test (tests/integration/test_model_columns.py) fails until both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

# PostgreSQL type (as SQL casts spell it) -> its Arrow type in day files. jsonb travels as its
# JSON text.
ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "timestamptz": TIMESTAMP,
    "boolean": pa.bool_(),
    "jsonb": pa.string(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
}


@dataclass(frozen=True)
class Column:
    """One stored column.

    `dimension`: the API dimension name it answers (rollups and breakdowns), if any.
    `filterable`: a condition or breakdown of the analyses may name it directly.
    `scanned`: the `events_scan` view over every tier exposes it.
    `hot_only`: bookkeeping of the PostgreSQL hot store (which transaction wrote a row, how its
    properties are encoded), never kept in day files nor scanned.
    `derived`: not a field of the event; the aggregator computes it when it writes the row.
    """

    name: str
    pg_type: str = "text"
    nullable: bool = True
    dimension: str | None = None
    filterable: bool = False
    scanned: bool = False
    hot_only: bool = False
    derived: bool = False

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.pg_type]


EVENT_COLUMNS: tuple[Column, ...] = (
    Column("project_id", nullable=False, scanned=True),
    Column("ts", "timestamptz", nullable=False, scanned=True),
    Column("event_id", nullable=False, scanned=True),
    Column("name", nullable=False, filterable=True, scanned=True),
    Column("type", nullable=False),
    Column("distinct_id", nullable=False, filterable=True, scanned=True),
    Column("user_id", filterable=True, scanned=True),
    Column("anonymous_id"),
    Column("session_id", filterable=True, scanned=True),
    Column("path", dimension="page", filterable=True, scanned=True),
    Column("url", filterable=True, scanned=True),
    Column("title", filterable=True, scanned=True),
    Column("referrer"),
    Column("referrer_domain", dimension="referrer_domain", filterable=True, scanned=True),
    Column("channel", dimension="channel", filterable=True, scanned=True),
    Column("utm_source", dimension="utm_source", filterable=True, scanned=True),
    Column("utm_medium", dimension="utm_medium", filterable=True, scanned=True),
    Column("utm_campaign", dimension="utm_campaign", filterable=True, scanned=True),
    Column("utm_term"),
    Column("utm_content"),
    Column("browser", dimension="browser", filterable=True, scanned=True),
    Column("browser_version"),
    Column("os", dimension="os", filterable=True, scanned=True),
    Column("os_version"),
    Column("device_type", dimension="device_type", filterable=True, scanned=True),
    Column("country", dimension="country", filterable=True, scanned=True),
    Column("region"),
    Column("city"),
    Column("locale"),
    Column("is_bot", "boolean", nullable=False, scanned=True),
    Column("non_interactive", "boolean", nullable=False, scanned=True),
    Column("properties", "jsonb", scanned=True),
    Column("received_at", "timestamptz", nullable=False),
    # Which transaction wrote the row: the day-file export's watermark (the catalog keeps each
    # part's xid range).
    Column("inserted_xid", "bigint", nullable=False, hot_only=True),
    # Dense integer keys of `person_keys` (docs/storage.md, "Person keys"), so analyses group
    # and sort persons as integers: person_key numbers coalesce(user_id, distinct_id), the
    # person an event names before aliases; device_key numbers distinct_id when that differs
    # (NULL otherwise), the id aliases resolve. NULL person_key: a row written before the keys.
    Column("person_key", "bigint", scanned=True, derived=True),
    Column("device_key", "bigint", scanned=True, derived=True),
    # Which properties (and whether anonymous_id) the row leaves out because a column holds
    # them (libs/common/model/event_encoding.py); readers restore them.
    Column("derived_fields", "smallint", hot_only=True),
)

SESSION_COLUMNS: tuple[Column, ...] = (
    Column("project_id", nullable=False),
    Column("session_id", nullable=False),
    Column("distinct_id", nullable=False),
    Column("user_id"),
    Column("start_ts", "timestamptz", nullable=False),
    Column("end_ts", "timestamptz", nullable=False),
    Column("events", "integer", nullable=False),
    Column("interactive_events", "integer", nullable=False),
    Column("pageviews", "integer", nullable=False),
    Column("entry_path", dimension="page"),  # a session's page is its entry page
    Column("entry_ts", "timestamptz"),
    Column("exit_path"),
    Column("exit_ts", "timestamptz"),
    Column("referrer"),
    Column("referrer_domain", dimension="referrer_domain"),
    Column("channel", dimension="channel"),
    Column("utm_source", dimension="utm_source"),
    Column("utm_medium", dimension="utm_medium"),
    Column("utm_campaign", dimension="utm_campaign"),
    Column("browser", dimension="browser"),
    Column("os", dimension="os"),
    Column("device_type", dimension="device_type"),
    Column("country", dimension="country"),
    Column("is_bot", "boolean", nullable=False),
    # Which event each merged value came from, so merges compare (ts, event_id) the way a
    # recomputation orders events (docs/storage.md, "Sessions").
    Column("first_event_id"),
    Column("entry_event_id"),
    Column("exit_event_id"),
    Column("user_ts", "timestamptz"),
    Column("user_event_id"),
    Column("source_ts", "timestamptz"),
    Column("source_event_id"),
)

EVENTS: dict[str, Column] = {c.name: c for c in EVENT_COLUMNS}
SESSIONS: dict[str, Column] = {c.name: c for c in SESSION_COLUMNS}

# The columns the aggregator writes and a day file holds (every column but the hot store's
# bookkeeping), in table order.
STORED_EVENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in EVENT_COLUMNS if not c.hot_only)
# The columns the aggregator computes rather than copies from the event.
DERIVED_EVENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in EVENT_COLUMNS if c.derived)
# The stored columns `events_scan` exposes (it adds the computed person_id).
SCANNED_EVENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in EVENT_COLUMNS if c.scanned)
# Columns a condition or breakdown may name directly.
FILTERABLE_EVENT_COLUMNS: frozenset[str] = frozenset(c.name for c in EVENT_COLUMNS if c.filterable)
# API dimension name -> column, for events and for sessions.
EVENT_DIMENSION_COLUMNS: dict[str, str] = {
    c.dimension: c.name for c in EVENT_COLUMNS if c.dimension is not None
}
SESSION_DIMENSION_COLUMNS: dict[str, str] = {
    c.dimension: c.name for c in SESSION_COLUMNS if c.dimension is not None
}


def event_pg_types(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Column -> PostgreSQL type of the named event columns, in the given order."""
    return {name: EVENTS[name].pg_type for name in names}


def day_file_schema() -> pa.Schema:
    """The Arrow schema of a day file: every stored event column, in table order."""
    return pa.schema(
        [
            pa.field(c.name, c.arrow_type, nullable=c.nullable)
            for c in EVENT_COLUMNS
            if not c.hot_only
        ]
    )
