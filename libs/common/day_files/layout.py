"""What a day file is: its object name and its Arrow/Parquet schema (every column of `events`,
so a part alone can stand in for the day's rows once the PostgreSQL partition is dropped)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa

from libs.common.model.columns import TIMESTAMP as TIMESTAMP  # re-exported: the files' timestamps
from libs.common.model.columns import day_file_schema

# The layout version is part of every object name: a breaking change to the file schema is a
# new prefix (events/v2/...) with both read during a migration.
FORMAT_PREFIX = "events/v1"
FORMAT_VERSION = "strata.events.v1"

# Column -> Arrow type, in file order: every column of `events` but the hot store's bookkeeping
# (inserted_xid: the catalog keeps each part's xid range), as libs/common/model declares them.
EVENT_FILE_SCHEMA = day_file_schema()
EVENT_FILE_COLUMNS: dict[str, pa.DataType] = {f.name: f.type for f in EVENT_FILE_SCHEMA}
NOT_NULL_COLUMNS = frozenset(f.name for f in EVENT_FILE_SCHEMA if not f.nullable)
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
