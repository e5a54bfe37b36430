"""What a day file is: its object name and its Arrow/Parquet schema (every column of `events`,
so a part alone can stand in for the day's rows once the PostgreSQL partition is dropped)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa

from libs.common.model.columns import EVENT_COLUMNS, day_file_schema
from libs.common.model.columns import TIMESTAMP as TIMESTAMP  # re-exported: the files' timestamps

# The layout version is part of every object name: a breaking change to the file schema is a
# new prefix (events/v2/...) with both read during a migration.
FORMAT_PREFIX = "events/v1"
FORMAT_VERSION = "strata.events.v1"

# Column -> Arrow type, in file order: every column of `events` but the hot store's bookkeeping
# (inserted_xid: the catalog keeps each part's xid range), as libs/common/model declares them.
EVENT_FILE_SCHEMA = day_file_schema()
EVENT_FILE_COLUMNS: dict[str, pa.DataType] = {f.name: f.type for f in EVENT_FILE_SCHEMA}
NOT_NULL_COLUMNS = frozenset(f.name for f in EVENT_FILE_SCHEMA if not f.nullable)
# Rows are sorted by person key then time, so one person's events sit together (funnels, paths
# and retention group by person) and their repeated dimensions compress into long runs.
SORT_KEYS = (("person_key", "ascending"), ("ts", "ascending"), ("event_id", "ascending"))
# What a part's footer says about the order of rows equal in (person_key, ts): their event ids
# ascend in code-point order (UTF-8 byte order: PostgreSQL's COLLATE "C", Arrow's string sort),
# the order the analyses break ties in. Every part written since says so; a reader may then
# order such ties by their position in the file instead of reading the ids. Parts without it
# (written when the export compared ids in the database's collation) are ordered by their ids.
TIE_ORDER_KEY = "strata.tie_order"
TIE_ORDER = "event_id_code_points"
# Columns parts written before they existed lack (migration 0024's person keys): such a part
# is still a day file, read as if they were NULL.
LATER_COLUMNS = tuple(c.name for c in EVENT_COLUMNS if c.derived)
_LEGACY_SCHEMA = pa.schema([f for f in EVENT_FILE_SCHEMA if f.name not in LATER_COLUMNS])


def is_day_file_schema(schema: pa.Schema) -> bool:
    """A part's schema is the day-file schema, or that of parts written before LATER_COLUMNS."""
    schema = schema.remove_metadata()
    return bool(schema.equals(EVENT_FILE_SCHEMA) or schema.equals(_LEGACY_SCHEMA))


def with_day_file_schema(table: pa.Table) -> pa.Table:
    """A part's rows in the day-file schema (columns an older part lacks: NULL)."""
    for name in LATER_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(
                EVENT_FILE_SCHEMA.field(name), pa.nulls(table.num_rows, EVENT_FILE_COLUMNS[name])
            )
    return table.select(EVENT_FILE_SCHEMA.names).cast(EVENT_FILE_SCHEMA)


_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PART = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_OBJECT_NAME = re.compile(
    r"^events/v1/project=(?P<project>[a-z0-9][a-z0-9_-]{0,62})/dt=(?P<day>\d{4}-\d{2}-\d{2})/"
    r"part-(?P<part>[0-9A-HJKMNP-TV-Z]{26})\.parquet$"
)


def project_prefix(project_id: str) -> str:
    """The object-name prefix of every part of one project (ends with '/')."""
    if not _PROJECT.match(project_id):
        raise ValueError(f"not a project id: {project_id!r}")
    return f"{FORMAT_PREFIX}/project={project_id}/"


def part_object_name(project_id: str, day: date, part_id: str) -> str:
    """`events/v1/project=<p>/dt=<YYYY-MM-DD>/part-<ulid>.parquet`."""
    if not _PART.match(part_id):
        raise ValueError(f"not a part id (ULID): {part_id!r}")
    return f"{project_prefix(project_id)}dt={day.isoformat()}/part-{part_id}.parquet"


def parse_object_name(name: str) -> tuple[str, date, str] | None:
    """(project, day, part id) of a day-file object name; None for any other name."""
    match = _OBJECT_NAME.match(name)
    if match is None:
        return None
    try:
        day = date.fromisoformat(match["day"])
    except ValueError:
        return None
    return match["project"], day, match["part"]


def day_start(day: date) -> datetime:
    """The first instant of a UTC day."""
    return datetime.combine(day, time(0), tzinfo=UTC)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day."""
    start = day_start(day)
    return start, start + timedelta(days=1)


def days_between(start: datetime, end: datetime) -> list[date]:
    """Every UTC day that overlaps [start, end)."""
    if end <= start:
        return []
    first = start.astimezone(UTC).date()
    last = (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
