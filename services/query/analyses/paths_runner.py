"""The paths endpoint's runner (`POST /api/v1/analytics/paths`): sessions (or persons) whose
first path event is in the range, read one session length either side (paths.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import duckdb

from services.query.analyses.conditions import EventScope
from services.query.analyses.paths import PathsResult, PathsSpec, node_id, paths_spec, run_paths
from services.query.analyses.requests import PathsRequest
from services.query.analyses.responses import PathEdgeResult, PathNodeResult, PathsResponse
from services.query.analyses.runner import Analysis, AnalysisRunner


@dataclass(frozen=True)
class PathsScan:
    start: datetime
    end: datetime
    session_max: timedelta
    with_persons: bool = False

    @property
    def scan_start(self) -> datetime:
        return self.start - self.session_max

    @property
    def scan_end(self) -> datetime:
        return self.end + self.session_max


class PathsRunner(AnalysisRunner[PathsRequest, PathsSpec, PathsScan, PathsResult]):
    """Step-indexed paths within sessions: nodes, top edges, drop-offs (docs/analytics.md)."""

    body_type = PathsRequest

    async def validate(self, body: PathsRequest, pool: asyncpg.Pool, project_id: str) -> PathsSpec:
        return paths_spec(body)

    async def plan(self, spec: PathsSpec, analysis: Analysis) -> PathsScan:
        session_s = await analysis.pool.fetchval(
            "SELECT session_max_s FROM projects WHERE id = $1", analysis.project_id
        )
        window = analysis.window
        return PathsScan(window.start, window.end, timedelta(seconds=session_s or 86_400))

    def run(
        self, con: duckdb.DuckDBPyConnection, spec: PathsSpec, plan: PathsScan, scope: EventScope
    ) -> PathsResult:
        return run_paths(con, spec, scope, plan.start, plan.end, plan.session_max)

    def respond(
        self, spec: PathsSpec, plan: PathsScan, result: PathsResult, header: dict[str, Any]
    ) -> PathsResponse:
        return PathsResponse(
            **header,
            steps=spec.steps,
            event_types=list(spec.event_types),
            start_point=spec.start_point,
            end_point=spec.end_point,
            per=spec.per,
            paths=result.paths,
            sessions=result.paths if spec.per == "session" else None,
            persons=result.persons,
            nodes=[
                PathNodeResult(
                    id=node_id(n.step, n.name),
                    step=n.step,
                    name=n.name,
                    count=n.count,
                    drop_offs=n.drop_offs,
                )
                for n in result.nodes
            ],
            edges=[
                PathEdgeResult(
                    source=node_id(e.step, e.source),
                    target=node_id(e.step + 1, e.target),
                    value=e.value,
                )
                for e in result.edges
            ],
            edges_truncated=result.edges_truncated,
        )
