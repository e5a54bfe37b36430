"""What a day file is: its object name and its Arrow/Parquet schema (every column of `events`,
so a part alone can stand in for the day's rows once the PostgreSQL partition is dropped)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa

# The layout version is part of every object name: a breaking change to the file schema is a
# new prefix (events/v2/...) with both read during a migration.
FORMAT_PREFIX = "events/v1"
FORMAT_VERSION = "strata.events.v1"

TIMESTAMP = pa.timestamp("us", tz="UTC")

# Column -> Arrow type, in file order. Everything `events` holds except inserted_xid (which
# transaction wrote a row is hot-store bookkeeping; the catalog keeps each part's xid range).
EVENT_FILE_COLUMNS: dict[str, pa.DataType] = {
    "project_id": pa.string(),
    "ts": TIMESTAMP,
    "event_id": pa.string(),
    "name": pa.string(),
    "type": pa.string(),
    "distinct_id": pa.string(),
    "user_id": pa.string(),
    "anonymous_id": pa.string(),
    "session_id": pa.string(),
    "path": pa.string(),
    "url": pa.string(),
    "title": pa.string(),
    "referrer": pa.string(),
    "referrer_domain": pa.string(),
    "channel": pa.string(),
    "utm_source": pa.string(),
    "utm_medium": pa.string(),
    "utm_campaign": pa.string(),
    "utm_term": pa.string(),
    "utm_content": pa.string(),
    "browser": pa.string(),
    "browser_version": pa.string(),
    "os": pa.string(),
    "os_version": pa.string(),
    "device_type": pa.string(),
    "country": pa.string(),
    "region": pa.string(),
    "city": pa.string(),
    "locale": pa.string(),
    "is_bot": pa.bool_(),
    "non_interactive": pa.bool_(),
    "properties": pa.string(),  # the jsonb as JSON text
    "received_at": TIMESTAMP,
}
NOT_NULL_COLUMNS = frozenset(
    {
        "project_id",
        "ts",
        "event_id",
        "name",
        "type",
        "distinct_id",
        "is_bot",
        "non_interactive",
        "received_at",
    }
)
EVENT_FILE_SCHEMA = pa.schema(
    [
        pa.field(name, kind, nullable=name not in NOT_NULL_COLUMNS)
        for name, kind in EVENT_FILE_COLUMNS.items()
    ]
)
# Rows are sorted by device then time, so one person's events sit together (funnels, paths and
# retention group by person) and their repeated dimensions compress into long runs.
SORT_KEYS = (("distinct_id", "ascending"), ("ts", "ascending"), ("event_id", "ascending"))

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
