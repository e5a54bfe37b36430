"""The retention endpoint's runner (`POST /api/v1/analytics/retention`): the cohort x period
matrix from the retention engine (retention.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import duckdb

from services.query.analyses.conditions import EventScope, needs_persons
from services.query.analyses.requests import RetentionRequest
from services.query.analyses.responses import RetentionCohort, RetentionResponse
from services.query.analyses.retention import (
    HISTORY_START,
    RetentionPlan,
    RetentionResult,
    RetentionSpec,
    average_percentages,
    retention_plan,
    retention_spec,
    run_retention,
)
from services.query.analyses.runner import Analysis, AnalysisRunner, rate
from services.query.params import TimeWindow


@dataclass(frozen=True)
class RetentionScan:
    """The periods to count and the events to read: from the first period (or, for
    first-time retention, from the start of history) to the last return period's end."""

    periods: RetentionPlan
    window: TimeWindow
    now: datetime
    scan_start: datetime
    with_persons: bool

    @property
    def scan_end(self) -> datetime:
        return self.periods.scan_end


class RetentionRunner(
    AnalysisRunner[RetentionRequest, RetentionSpec, RetentionScan, RetentionResult]
):
    """The cohort x period retention matrix (docs/analytics.md)."""

    body_type = RetentionRequest

    async def validate(
        self, body: RetentionRequest, pool: asyncpg.Pool, project_id: str
    ) -> RetentionSpec:
        return retention_spec(body)

    async def plan(self, spec: RetentionSpec, analysis: Analysis) -> RetentionScan:
        periods = retention_plan(spec, analysis.window)
        start = HISTORY_START if spec.mode == "first_time" else periods.starts[0]
        persons = needs_persons([*spec.start_event.conditions, *spec.return_event.conditions])
        return RetentionScan(periods, analysis.window, analysis.now, start, persons)

    def run(
        self,
        con: duckdb.DuckDBPyConnection,
        spec: RetentionSpec,
        plan: RetentionScan,
        scope: EventScope,
    ) -> RetentionResult:
        return run_retention(con, spec, plan.periods, scope, plan.now)

    def respond(
        self,
        spec: RetentionSpec,
        plan: RetentionScan,
        result: RetentionResult,
        header: dict[str, Any],
    ) -> RetentionResponse:
        tz = plan.window.tz
        return RetentionResponse(
            **header,
            period=spec.period,
            intervals=spec.intervals,
            week_start=spec.week_start,
            mode=spec.mode,
            cumulative=spec.cumulative,
            matrix=[
                RetentionCohort(
                    period_start=row.start.astimezone(tz),
                    size=row.size,
                    counts=row.counts,
                    percentages=[None if c is None else rate(c, row.size) for c in row.counts],
                )
                for row in result.rows
            ],
            average_percentages=[
                None if p is None else round(p, 3)
                for p in average_percentages(result, spec.intervals)
            ],
        )
