"""The funnels endpoint's runner (`POST /api/v1/analytics/funnels`): validate the funnel, scan
the range plus one window, run the funnel engine (funnels.py) and shape the steps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import duckdb
from aiohttp import web

from services.query.analyses.conditions import EventScope, needs_persons, property_ref
from services.query.analyses.funnels import (
    FunnelCounts,
    FunnelQuery,
    FunnelResult,
    FunnelSpec,
    TimeToConvert,
    check_persons_page,
    funnel_spec,
    run_funnel,
)
from services.query.analyses.requests import FunnelRequest
from services.query.analyses.responses import (
    ConversionTimeBin,
    FunnelBreakdown,
    FunnelBreakdownValue,
    FunnelPersons,
    FunnelResponse,
    FunnelStepResult,
    FunnelWindow,
    TimeToConvertResult,
)
from services.query.analyses.runner import Analysis, AnalysisRunner, begin, epoch_us, rate
from services.query.analyses.scans import in_thread
from services.query.params import ParamError


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def step_results(spec: FunnelSpec, counts: FunnelCounts) -> list[FunnelStepResult]:
    """Per step: persons, conversion from the first and previous step, drop-off, times."""
    out = []
    first = counts.steps[0].count
    unordered = spec.order == "unordered"
    for k, stats in enumerate(counts.steps):
        step = spec.steps[k]
        previous = counts.steps[k - 1].count if k else stats.count
        out.append(
            FunnelStepResult(
                step=k + 1,
                event=None if unordered else step.event,
                label=f"{k + 1} of {spec.n} steps" if unordered else (step.label or step.event),
                count=stats.count,
                conversion_from_first=rate(stats.count, first),
                conversion_from_previous=rate(stats.count, previous),
                drop_off=previous - stats.count,
                drop_off_rate=rate(previous - stats.count, previous) if k else 0.0,
                median_time_from_previous_s=_seconds(stats.median_s),
                avg_time_from_previous_s=_seconds(stats.avg_s),
            )
        )
    return out


def funnel_needs_persons(spec: FunnelSpec) -> bool:
    conditions = [c for s in spec.steps for c in s.conditions]
    conditions += [c for x in spec.exclusions for c in x.match.conditions]
    breakdown = (
        spec.breakdown is not None and property_ref("breakdown", spec.breakdown).needs_persons
    )
    return needs_persons(conditions) or breakdown


@dataclass(frozen=True)
class FunnelPlan:
    """Attempts start in [start, end); their steps may follow for one window after `end`."""

    start: datetime
    end: datetime
    window_s: int
    with_persons: bool

    @property
    def scan_start(self) -> datetime:
        return self.start

    @property
    def scan_end(self) -> datetime:
        return self.end + timedelta(seconds=self.window_s)


def _time_to_convert(histogram: TimeToConvert | None) -> TimeToConvertResult | None:
    if histogram is None:
        return None
    return TimeToConvertResult(
        from_step=histogram.from_step,
        to_step=histogram.to_step,
        persons=histogram.persons,
        avg_s=_seconds(histogram.avg_s),
        median_s=_seconds(histogram.median_s),
        bins=[
            ConversionTimeBin(from_s=b.from_s, to_s=b.to_s, persons=b.persons)
            for b in histogram.bins
        ],
    )


@dataclass(frozen=True)
class FunnelWork:
    """The spec with the request it came from (persons page, histogram, window echo)."""

    spec: FunnelSpec
    request: FunnelRequest


class FunnelRunner(AnalysisRunner[FunnelRequest, FunnelWork, FunnelPlan, FunnelResult]):
    """A funnel's per-step persons, conversions, drop-offs and times (docs/analytics.md)."""

    body_type = FunnelRequest

    async def validate(
        self, body: FunnelRequest, pool: asyncpg.Pool, project_id: str
    ) -> FunnelWork:
        spec = funnel_spec(body)
        if body.breakdown is not None:
            property_ref("breakdown", body.breakdown)
        if body.persons is not None:
            check_persons_page(body.persons, spec.n)
        return FunnelWork(spec, body)

    async def plan(self, spec: FunnelWork, analysis: Analysis) -> FunnelPlan:
        window = analysis.window
        return FunnelPlan(
            window.start,
            window.end,
            spec.spec.window_s,
            funnel_needs_persons(spec.spec),
        )

    def run(
        self, con: duckdb.DuckDBPyConnection, spec: FunnelWork, plan: FunnelPlan, scope: EventScope
    ) -> FunnelResult:
        return run_funnel(
            con,
            spec.spec,
            scope,
            epoch_us(plan.start),
            epoch_us(plan.end),
            spec.request.persons,
            spec.request.time_to_convert,
        )

    def respond(
        self, spec: FunnelWork, plan: FunnelPlan, result: FunnelResult, header: dict[str, Any]
    ) -> FunnelResponse:
        funnel, body = spec.spec, spec.request
        breakdown = None
        if funnel.breakdown is not None:
            breakdown = FunnelBreakdown(
                property=funnel.breakdown,
                values=[
                    FunnelBreakdownValue(value=value, steps=step_results(funnel, counts))
                    for value, counts in result.breakdown
                ],
                truncated=result.breakdown_truncated,
            )
        persons = None
        if body.persons is not None:
            persons = FunnelPersons(
                step=body.persons.step,
                status=body.persons.status,
                breakdown_value=body.persons.breakdown_value,
                person_ids=result.persons or [],
                next_cursor=result.next_cursor,
            )
        return FunnelResponse(
            **header,
            order=funnel.order,
            window=FunnelWindow(
                value=body.window.value, unit=body.window.unit, seconds=funnel.window_s
            ),
            steps=step_results(funnel, result.total),
            breakdown=breakdown,
            persons=persons,
            time_to_convert=_time_to_convert(result.time_to_convert),
        )


async def funnel_person_ids(
    request: web.Request, project_id: str, body: FunnelRequest, field: str
) -> list[str]:
    """Every person of a funnel's `persons` step/status (for a static cohort)."""
    try:
        spec = funnel_spec(body)
        if body.persons is None:
            raise ParamError("persons", "name the step (and status) whose persons to save")
        check_persons_page(body.persons, spec.n)
    except ParamError as exc:
        raise ParamError(f"{field}.{exc.param}", exc.problem) from None
    analysis = await begin(request, body, project_id)
    async with analysis.scans:
        window = analysis.window
        end = window.end + timedelta(seconds=spec.window_s)
        scan = await analysis.scans.open(window.start, end, with_persons=funnel_needs_persons(spec))
        scope = analysis.scope(scan, window.start, end)
        con = scan.con
        page = body.persons

        def persons() -> list[str]:
            query = FunnelQuery(spec, scope)
            query.prepare(con, epoch_us(window.start), epoch_us(window.end))
            ids, _ = query.person_ids(con, page, everyone=True)
            return ids

        return await in_thread(persons)
