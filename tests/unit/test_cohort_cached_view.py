"""A behavioral cohort reads the scan's cached view when its event match names only cached
columns, and the full view otherwise (services/query/analyses/cohorts.py, column_cache.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import duckdb
import pytest

from services.query.analyses.cohorts import cohort_members
from services.query.analyses.saved_definitions import SavedVersion
from services.query.analyses.scans import RequestScans
from services.query.column_cache import CACHED_VIEW_COLUMNS

NOW = datetime(2024, 3, 10, tzinfo=UTC)


class _Scan:
    """Both views over one connection, each naming a different person who signed up, so the
    answer says which view was read."""

    def __init__(self, cached: bool) -> None:
        self.con = duckdb.connect()
        for view, person in (("events_scan", "from-files"), ("events_scan_cached", "cached")):
            self.con.execute(
                f"CREATE VIEW {view} AS SELECT '{person}' AS person_id, 'signup' AS name,"
                " '/pricing' AS path, '{\"plan\": \"pro\"}'::JSON AS properties"
            )
        self.cached_columns = CACHED_VIEW_COLUMNS if cached else frozenset()
        self.missing_days: list[Any] = []


class _Scans:
    def __init__(self, cached: bool) -> None:
        self.project_id = "acme"
        self.cached = cached

    async def open(self, start: datetime, end: datetime, *, with_persons: bool = True) -> _Scan:
        return _Scan(self.cached)


def _members(definition: str, cached: bool) -> list[str]:
    saved = SavedVersion("c", 1, "c", "", definition, NOW)
    scans = cast(RequestScans, _Scans(cached))
    table = asyncio.run(cohort_members(scans, cast(Any, None), saved, NOW))
    return table.column("person_id").to_pylist()


@pytest.mark.parametrize(
    ("conditions", "cached", "read"),
    [
        ("", True, "cached"),  # the event name alone
        (', "conditions": [{"property": "path", "value": "/pricing"}]', True, "cached"),
        (', "conditions": [{"property": "plan", "value": "pro"}]', True, "from-files"),
        ("", False, "from-files"),  # nothing cached
    ],
)
def test_a_behavioral_cohort_reads_the_cached_view_when_it_covers_the_match(
    conditions: str, cached: bool, read: str
) -> None:
    definition = f'{{"type": "behavioral", "event": "signup", "last_days": 30{conditions}}}'
    assert _members(definition, cached) == [read]
