"""How every analysis request runs, once: authorize -> decode -> validate -> plan the scan ->
run the engine off the event loop -> answer with the tiers it read. An analysis implements
`AnalysisRunner` in its own module (funnel_runner.py, retention_runner.py, ...) and the route
table (endpoints.py) turns it into a handler with `analysis_handler`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
import duckdb
import msgspec
import pyarrow as pa
from aiohttp import web

from services.query.analyses import saved_definitions as saved
from services.query.analyses.cohorts import cohort_tables
from services.query.analyses.conditions import EventScope
from services.query.analyses.requests import (
    AnalysisRequest,
    decode_body,
    mentions_all,
    parse_body_filters,
    parse_range,
)
from services.query.analyses.responses import CohortRef
from services.query.analyses.scans import RequestScans, ScanLike, in_thread, scan_opener
from services.query.auth import authorized_project
from services.query.dependencies import DEPS, QueryDeps
from services.query.freshness import freshness
from services.query.params import Filters, TimeWindow
from services.query.relative_periods import first_event_at
from services.query.responses import json_encoder

_US = 1_000_000


def now_utc() -> datetime:
    return datetime.now(UTC)


def epoch_us(ts: datetime) -> int:
    """Microseconds since the epoch, exactly (no float rounding)."""
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json_encoder.encode(body), status=status, content_type="application/json"
    )


def rate(part: int, whole: int) -> float | None:
    """A share to 0.1 percentage point (three decimals), as every analysis rounds them."""
    return round(part / whole, 3) if whole else None


@dataclass
class Analysis:
    """What every analysis request shares: project, range, filters and its scans."""

    project_id: str
    window: TimeWindow
    filters: Filters
    request: AnalysisRequest
    scans: RequestScans
    deps: QueryDeps
    now: datetime
    cohort_members: list[tuple[saved.SavedVersion, pa.Table]]

    def scope(self, scan: ScanLike, start: datetime, end: datetime) -> EventScope:
        """Rows of `scan` an engine reads, with the cohort filters registered on it."""
        tables = []
        for i, (_, members) in enumerate(self.cohort_members):
            name = f"analysis_cohort_{i}"
            scan.con.register(name, members)
            tables.append(name)
        return EventScope(
            start=start,
            end=end,
            include_bots=self.request.include_bots,
            filters=self.filters,
            cohort_tables=tuple(tables),
            person_keys=scan.person_keys,
            ties_by_position=scan.ties_by_position,
            cached_columns=scan.cached_columns,
            cached_rows=scan.cached_rows,
            threads=self.deps.analysis_threads,
        )

    @property
    def pool(self) -> asyncpg.Pool:
        return self.deps.pool

    async def header(self) -> dict[str, Any]:
        tz = self.window.tz
        return {
            "freshness": await freshness(self.deps, self.project_id, self.now),
            "tiers": self.scans.tiers(),
            "from_": self.window.start.astimezone(tz),
            "to": self.window.end.astimezone(tz),
            "timezone": self.window.tz_name,
            "filters": list(self.request.filters),
            "include_bots": self.request.include_bots,
            "cohorts": [
                CohortRef(id=v.id, version=v.version, persons=members.num_rows)
                for v, members in self.cohort_members
            ],
            "missing": self.scans.missing(),
        }


async def begin(request: web.Request, body: AnalysisRequest, project_id: str) -> Analysis:
    """Resolve the request's range, filters and cohorts; the caller closes `scans`."""
    now = now_utc()
    deps = request.app[DEPS]
    history = await first_event_at(deps.pool, project_id) if mentions_all(body) else None
    window = parse_range(body, now, history)
    filters = parse_body_filters(body)
    scans = RequestScans(
        scan_opener(request.app),
        deps,
        project_id,
        body.include_bots,
        allow_partial=body.allow_partial,
    )
    analysis = Analysis(project_id, window, filters, body, scans, deps, now, [])
    try:
        analysis.cohort_members = await cohort_tables(scans, deps.pool, body.cohorts, now)
    except BaseException:
        await scans.__aexit__(None, None, None)
        raise
    return analysis


class ScanRange(Protocol):
    """What a plan tells the runner to open: events in [scan_start, scan_end), and whether
    the persons' traits are needed."""

    @property
    def scan_start(self) -> datetime: ...

    @property
    def scan_end(self) -> datetime: ...

    @property
    def with_persons(self) -> bool: ...


BodyT = TypeVar("BodyT", bound=AnalysisRequest)
SpecT = TypeVar("SpecT")
PlanT = TypeVar("PlanT", bound=ScanRange)
ResultT = TypeVar("ResultT")


class AnalysisRunner(Generic[BodyT, SpecT, PlanT, ResultT]):
    """One analysis: parse and validate its body, plan the scan, run the engine (SQL plus its
    kernel) on the scan's connection, and shape the response."""

    body_type: type[BodyT]

    async def validate(self, body: BodyT, pool: asyncpg.Pool, project_id: str) -> SpecT:
        """The validated spec; a ParamError names the offending field (400)."""
        raise NotImplementedError

    async def plan(self, spec: SpecT, analysis: Analysis) -> PlanT:
        raise NotImplementedError

    def run(
        self, con: duckdb.DuckDBPyConnection, spec: SpecT, plan: PlanT, scope: EventScope
    ) -> ResultT:
        """The engine, on a connection holding `events_scan` over the planned range (run in
        a worker thread)."""
        raise NotImplementedError

    def respond(
        self, spec: SpecT, plan: PlanT, result: ResultT, header: dict[str, Any]
    ) -> msgspec.Struct:
        raise NotImplementedError


def analysis_handler(
    runner: AnalysisRunner[Any, Any, Any, Any],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The HTTP handler of an analysis: every step of the protocol, in order."""

    async def handle(request: web.Request) -> web.Response:
        project_id = await authorized_project(request)
        body = decode_body(await request.read(), runner.body_type)
        spec = await runner.validate(body, request.app[DEPS].pool, project_id)
        analysis = await begin(request, body, project_id)
        async with analysis.scans:
            plan = await runner.plan(spec, analysis)
            scan = await analysis.scans.open(
                plan.scan_start, plan.scan_end, with_persons=plan.with_persons
            )
            scope = analysis.scope(scan, plan.scan_start, plan.scan_end)
            con = scan.con
            result = await in_thread(lambda: runner.run(con, spec, plan, scope))
            response = runner.respond(spec, plan, result, await analysis.header())
        return json_response(response)

    handle.__doc__ = runner.__doc__
    return handle
