"""The SQL every analysis variant runs, kept as snapshots (tests/snapshots/analysis_*.sql;
`./just snapshots` rewrites them), so a change of query is reviewed as SQL. Each variant runs
on a small connection that records the statements it is given, in order."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import duckdb
import pytest

from services.query.analyses.conditions import EventScope
from services.query.analyses.funnels import FunnelQuery, funnel_spec
from services.query.analyses.paths import paths_spec, run_paths
from services.query.analyses.requests import (
    CleaningRule,
    Condition,
    EventMatch,
    FunnelExclusion,
    FunnelRequest,
    FunnelStep,
    PathsRequest,
    RetentionRequest,
    WindowSpec,
)
from services.query.analyses.retention import retention_plan, retention_spec, run_retention
from services.query.column_cache import CACHED_VIEW_COLUMNS
from services.query.metric_query import SqlParams
from services.query.params import TimeWindow
from tests.support.analysis_events import T0, generated_events, scan_connection
from tests.support.sql_snapshots import assert_sql_snapshot

pytestmark = pytest.mark.sql_snapshot

START, END = T0, T0 + timedelta(days=5)


class RecordingConnection:
    """A DuckDB connection that keeps the text of every statement run on it (`execute` or
    `sql`)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.statements: list[str] = []

    def execute(self, sql: str, parameters: Any = None) -> Any:
        self.statements.append(sql)
        return self.con.execute(sql, parameters)

    def sql(self, query: str, *, params: Any = None) -> Any:
        self.statements.append(query)
        return self.con.sql(query, params=params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)

    def text(self) -> str:
        return "\n\n".join(s.strip() + ";" for s in self.statements)


@pytest.fixture(scope="module")
def scan() -> duckdb.DuckDBPyConnection:
    return scan_connection(generated_events(1, persons=10, days=6))


def recording(scan: duckdb.DuckDBPyConnection) -> RecordingConnection:
    return RecordingConnection(scan.cursor())


def page(path: str) -> FunnelStep:
    return FunnelStep("$pageview", [Condition("path", "eq", path)])


FUNNELS: dict[str, FunnelRequest] = {
    "ordered": FunnelRequest(
        steps=[page("/"), page("/pricing"), FunnelStep("signup"), FunnelStep("purchase")]
    ),
    "strict": FunnelRequest(
        steps=[page("/"), FunnelStep("signup"), FunnelStep("signup")], order="strict"
    ),
    "unordered": FunnelRequest(
        steps=[FunnelStep("signup"), page("/pricing"), FunnelStep("$pageview")],
        order="unordered",
    ),
    "ordered_exclusions_breakdown": FunnelRequest(
        steps=[page("/"), FunnelStep("signup"), FunnelStep("purchase")],
        window=WindowSpec(2, "hour"),
        exclusions=[FunnelExclusion(event="cancel", from_step=1, to_step=3)],
        breakdown="person.plan",
    ),
}


@pytest.mark.parametrize("variant", sorted(FUNNELS))
def test_funnel_sql_matches_its_snapshot(scan: duckdb.DuckDBPyConnection, variant: str) -> None:
    con = recording(scan)
    query = FunnelQuery(funnel_spec(FUNNELS[variant]), EventScope(START, END))
    db = cast(duckdb.DuckDBPyConnection, con)
    query.prepare(db, 0, 2**62)
    query.counts(db)
    query.time_to_convert(db, 1, query.spec.n, None)
    assert_sql_snapshot(f"analysis_funnel_{variant}", con.text())


def test_experiment_funnel_stream_matches_its_snapshot() -> None:
    """An experiment's goal funnel reads each person's exposure time with the events."""
    query = FunnelQuery(funnel_spec(FUNNELS["ordered"]), EventScope(START, END), "experiment")
    sql = query.stream_sql(SqlParams(), floor_table="experiment_exposures")
    assert_sql_snapshot("analysis_funnel_experiment_stream", sql)


def test_keyed_funnel_stream_matches_its_snapshot() -> None:
    """A funnel listing no persons over a keyed scan reads integer person keys."""
    query = FunnelQuery(
        funnel_spec(FUNNELS["ordered"]),
        EventScope(START, END, person_keys=True),
        lists_persons=False,
    )
    assert query.by_key
    assert_sql_snapshot("analysis_funnel_keyed_stream", query.stream_sql(SqlParams()))


def test_keyed_funnel_stream_over_cached_columns_matches_its_snapshot() -> None:
    """With the scan's files in the column cache, the same stream reads the cached view."""
    query = FunnelQuery(
        funnel_spec(FUNNELS["ordered"]),
        EventScope(START, END, person_keys=True, cached_columns=CACHED_VIEW_COLUMNS),
        lists_persons=False,
    )
    # Without event ids: the first read; a read with them (ties) names a column not cached.
    sql = query.stream_sql(SqlParams(), event_ids=False)
    assert_sql_snapshot("analysis_funnel_keyed_cached_stream", sql)


PATHS: dict[str, PathsRequest] = {
    "sessions": PathsRequest(event_types=["pageview", "custom"], steps=5),
    "persons_points_rules": PathsRequest(
        event_types=["pageview"],
        steps=4,
        per="person",
        start_point="/pricing/",
        end_point="/signup",
        cleaning_rules=[CleaningRule(regex="/user/\\d+", replacement="/user/:id")],
    ),
}


@pytest.mark.parametrize("variant", sorted(PATHS))
def test_paths_sql_matches_its_snapshot(scan: duckdb.DuckDBPyConnection, variant: str) -> None:
    con = recording(scan)
    spec = paths_spec(PATHS[variant])
    db = cast(duckdb.DuckDBPyConnection, con)
    run_paths(db, spec, EventScope(START, END), START, END, timedelta(hours=1))
    assert_sql_snapshot(f"analysis_paths_{variant}", con.text())


def test_keyed_paths_sql_matches_its_snapshot(scan: duckdb.DuckDBPyConnection) -> None:
    """Paths over a keyed scan read integer person keys (no cohort needs person ids)."""
    con = recording(scan)
    db = cast(duckdb.DuckDBPyConnection, con)
    scope = EventScope(START, END, person_keys=True)
    run_paths(db, paths_spec(PATHS["sessions"]), scope, START, END, timedelta(hours=1))
    assert_sql_snapshot("analysis_paths_sessions_keyed", con.text())


RETENTION: dict[str, RetentionRequest] = {
    "recurring_daily": RetentionRequest(
        start_event=EventMatch("$pageview"), return_event=EventMatch("signup"), intervals=3
    ),
    "first_time_weekly": RetentionRequest(
        start_event=EventMatch("signup"),
        return_event=EventMatch("$pageview", [Condition("path", "eq", "/pricing")]),
        mode="first_time",
        period="week",
        intervals=2,
    ),
}


@pytest.mark.parametrize("variant", sorted(RETENTION))
def test_retention_sql_matches_its_snapshot(scan: duckdb.DuckDBPyConnection, variant: str) -> None:
    con = recording(scan)
    spec = retention_spec(RETENTION[variant])
    plan = retention_plan(spec, TimeWindow(START, END, ZoneInfo("UTC")))
    db = cast(duckdb.DuckDBPyConnection, con)
    run_retention(db, spec, plan, EventScope(START, plan.scan_end), END)
    assert_sql_snapshot(f"analysis_retention_{variant}", con.text())
