"""HTTP handlers of the analyses (docs/analytics.md): POST funnels, retention, paths and
experiments/analyze, and the versioned CRUD of cohorts and metric definitions. Each handler
authorizes, decodes and validates the body (400 naming the field), opens the event scans it
needs, runs its engine off the event loop, and answers with the tiers it read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pyarrow as pa
from aiohttp import web

from libs.common.users import ANALYST
from services.query.analyses import saved_definitions as saved
from services.query.analyses.cohorts import (
    CohortBody,
    StaticCohort,
    cohort_members,
    cohort_tables,
    validate_definition,
)
from services.query.analyses.conditions import (
    EventScope,
    needs_persons,
    property_ref,
)
from services.query.analyses.experiments import (
    MEAN,
    PROPORTION,
    ExperimentRequest,
    ExperimentSpec,
    SampleStats,
    VariantData,
    check_goal_metric,
    experiment_data,
    mean_lift,
    probability_best_means,
    probability_best_rates,
    proportion_lift,
    srm_check,
)
from services.query.analyses.funnels import (
    FunnelCounts,
    FunnelQuery,
    FunnelSpec,
    TimeToConvert,
    check_persons_page,
    decode_cursor,
    encode_cursor,
    funnel_spec,
    run_funnel,
)
from services.query.analyses.metric_definitions import (
    MetricBody,
    MetricDefinition,
    metric_needs_persons,
    resolve_metric,
    validate_metric,
)
from services.query.analyses.paths import node_id, paths_spec, run_paths
from services.query.analyses.requests import (
    AnalysisRequest,
    FunnelRequest,
    PathsRequest,
    RetentionRequest,
    decode_body,
    mentions_all,
    parse_body_filters,
    parse_range,
)
from services.query.analyses.responses import (
    CohortDetail,
    CohortList,
    CohortPersons,
    CohortRecord,
    CohortRef,
    ConversionTimeBin,
    ExperimentGoalEcho,
    ExperimentResponse,
    FunnelBreakdown,
    FunnelBreakdownValue,
    FunnelPersons,
    FunnelResponse,
    FunnelStepResult,
    FunnelWindow,
    MetricDefinitionDetail,
    MetricDefinitionList,
    PathEdgeResult,
    PathNodeResult,
    PathsResponse,
    RetentionCohort,
    RetentionResponse,
    SavedDefinition,
    SrmResult,
    TimeToConvertResult,
    VariantResult,
)
from services.query.analyses.retention import (
    HISTORY_START,
    average_percentages,
    retention_plan,
    retention_spec,
    run_retention,
)
from services.query.analyses.scans import RequestScans, ScanLike, in_thread, scan_opener
from services.query.auth import authorized_project, project_access
from services.query.dependencies import DEPS, ApiError, QueryDeps
from services.query.freshness import freshness
from services.query.params import Filters, ParamError, TimeWindow, parse_int, single
from services.query.relative_periods import first_event_at
from services.query.responses import json_encoder

API = "/api/v1/analytics"
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


async def _begin(request: web.Request, body: AnalysisRequest, project_id: str) -> Analysis:
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


# ---------------------------------------------------------------------------------------------
# Funnels


def _rate(part: int, whole: int) -> float | None:
    """A share to 0.1 percentage point (three decimals), as every analysis rounds them."""
    return round(part / whole, 3) if whole else None


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
                conversion_from_first=_rate(stats.count, first),
                conversion_from_previous=_rate(stats.count, previous),
                drop_off=previous - stats.count,
                drop_off_rate=_rate(previous - stats.count, previous) if k else 0.0,
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


async def post_funnels(request: web.Request) -> web.Response:
    """A funnel's per-step persons, conversions, drop-offs and times (docs/analytics.md)."""
    project_id = await authorized_project(request)
    body = decode_body(await request.read(), FunnelRequest)
    spec = funnel_spec(body)
    if body.breakdown is not None:
        property_ref("breakdown", body.breakdown)
    if body.persons is not None:
        check_persons_page(body.persons, spec.n)
    analysis = await _begin(request, body, project_id)
    async with analysis.scans:
        window = analysis.window
        end = window.end + timedelta(seconds=spec.window_s)
        scan = await analysis.scans.open(window.start, end, with_persons=funnel_needs_persons(spec))
        scope = analysis.scope(scan, window.start, end)
        con = scan.con
        result = await in_thread(
            lambda: run_funnel(
                con,
                spec,
                scope,
                epoch_us(window.start),
                epoch_us(window.end),
                body.persons,
                body.time_to_convert,
            )
        )
        breakdown = None
        if spec.breakdown is not None:
            breakdown = FunnelBreakdown(
                property=spec.breakdown,
                values=[
                    FunnelBreakdownValue(value=value, steps=step_results(spec, counts))
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
        unit = body.window.unit
        response = FunnelResponse(
            **await analysis.header(),
            order=spec.order,
            window=FunnelWindow(value=body.window.value, unit=unit, seconds=spec.window_s),
            steps=step_results(spec, result.total),
            breakdown=breakdown,
            persons=persons,
            time_to_convert=_time_to_convert(result.time_to_convert),
        )
    return json_response(response)


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
    analysis = await _begin(request, body, project_id)
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


# ---------------------------------------------------------------------------------------------
# Retention


async def post_retention(request: web.Request) -> web.Response:
    """The cohort x period retention matrix (docs/analytics.md)."""
    project_id = await authorized_project(request)
    body = decode_body(await request.read(), RetentionRequest)
    spec = retention_spec(body)
    analysis = await _begin(request, body, project_id)
    async with analysis.scans:
        plan = retention_plan(spec, analysis.window)
        start = HISTORY_START if spec.mode == "first_time" else plan.starts[0]
        persons = needs_persons([*spec.start_event.conditions, *spec.return_event.conditions])
        scan = await analysis.scans.open(start, plan.scan_end, with_persons=persons)
        scope = analysis.scope(scan, start, plan.scan_end)
        con, now = scan.con, analysis.now
        result = await in_thread(lambda: run_retention(con, spec, plan, scope, now))
        tz = analysis.window.tz
        response = RetentionResponse(
            **await analysis.header(),
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
                    percentages=[None if c is None else _rate(c, row.size) for c in row.counts],
                )
                for row in result.rows
            ],
            average_percentages=[
                None if p is None else round(p, 3)
                for p in average_percentages(result, spec.intervals)
            ],
        )
    return json_response(response)


# ---------------------------------------------------------------------------------------------
# Paths


async def post_paths(request: web.Request) -> web.Response:
    """Step-indexed paths within sessions: nodes, top edges, drop-offs (docs/analytics.md)."""
    project_id = await authorized_project(request)
    body = decode_body(await request.read(), PathsRequest)
    spec = paths_spec(body)
    analysis = await _begin(request, body, project_id)
    async with analysis.scans:
        session_s = await analysis.pool.fetchval(
            "SELECT session_max_s FROM projects WHERE id = $1", project_id
        )
        session_max = timedelta(seconds=session_s or 86_400)
        window = analysis.window
        lo, hi = window.start - session_max, window.end + session_max
        scan = await analysis.scans.open(lo, hi, with_persons=False)
        scope = analysis.scope(scan, lo, hi)
        con = scan.con
        result = await in_thread(
            lambda: run_paths(con, spec, scope, window.start, window.end, session_max)
        )
        response = PathsResponse(
            **await analysis.header(),
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
    return json_response(response)


# ---------------------------------------------------------------------------------------------
# Experiments


async def _experiment_spec(
    pool: asyncpg.Pool, project_id: str, body: ExperimentRequest
) -> tuple[ExperimentSpec, str | None]:
    if not body.experiment:
        raise ParamError("experiment", "name the experiment key")
    goal = body.goal
    given = [g for g in (goal.funnel, goal.metric, goal.metric_id) if g is not None]
    if len(given) != 1:
        raise ParamError("goal", "give exactly one of funnel, metric or metric_id")
    funnel, metric = None, None
    if goal.funnel is not None:
        request = FunnelRequest(
            steps=goal.funnel.steps,
            order=goal.funnel.order,
            window=goal.funnel.window,
            exclusions=goal.funnel.exclusions,
        )
        try:
            funnel = funnel_spec(request)
        except ParamError as exc:
            raise ParamError(f"goal.funnel.{exc.param}", exc.problem) from None
    elif goal.metric is not None:
        validate_metric(goal.metric, "goal.metric")
        check_goal_metric(goal.metric, "goal.metric")
        metric = goal.metric
    else:
        assert goal.metric_id is not None
        try:
            stored = await saved.latest(pool, saved.METRICS, project_id, goal.metric_id)
        except ApiError:
            raise ParamError("goal.metric_id", f"unknown metric {goal.metric_id!r}") from None
        metric = msgspec.json.decode(stored.definition, type=MetricDefinition)
        check_goal_metric(metric, "goal.metric_id")
    variants = tuple(dict.fromkeys(body.variants))
    if variants and body.control not in variants:
        raise ParamError("variants", f"must include the control {body.control!r}")
    for name, share in body.traffic_split.items():
        if variants and name not in variants:
            raise ParamError("traffic_split", f"{name!r} is not one of the variants")
        if not share > 0:
            raise ParamError("traffic_split", f"the share of {name!r} must be positive")
    for field in ("experiment_property", "variant_property"):
        ref = property_ref(f"exposure.{field}", getattr(body.exposure, field))
        if ref.source == "person":
            # Read from the exposure event itself; person traits are not joined here.
            raise ParamError(
                f"exposure.{field}",
                "must be an event column or property of the exposure event, not a person trait",
            )
    spec = ExperimentSpec(
        experiment=body.experiment,
        control=body.control,
        variants=variants,
        traffic_split=dict(body.traffic_split),
        exposure=body.exposure,
        funnel=funnel,
        metric=metric,
    )
    return spec, goal.metric_id


def _ci(value: tuple[float, float] | None) -> list[float] | None:
    return None if value is None else [value[0], value[1]]


def variant_results(spec: ExperimentSpec, data: list[VariantData]) -> list[VariantResult]:
    """Each variant's counts and its lift, p-value and probability to be best."""
    by_name = {d.variant: d for d in data}
    names = list(spec.variants) or sorted(by_name, key=lambda v: (v != spec.control, v))
    if spec.control not in names:
        names.insert(0, spec.control)
    rows = [
        by_name.get(v)
        or VariantData(
            v, 0, 0 if spec.statistic == PROPORTION else None, SampleStats(0, None, None)
        )
        for v in names
    ]
    control = rows[names.index(spec.control)]
    if spec.statistic == PROPORTION:
        best = probability_best_rates(
            [r.conversions or 0 for r in rows], [r.exposures for r in rows]
        )
    else:
        best = probability_best_means([r.sample for r in rows])
    out = []
    for row, probability in zip(rows, best, strict=True):
        lift = None
        if row is not control:
            if spec.statistic == PROPORTION:
                lift = proportion_lift(
                    control.conversions or 0, control.exposures, row.conversions or 0, row.exposures
                )
            else:
                lift = mean_lift(control.sample, row.sample)
        rate = None
        if spec.statistic == PROPORTION:
            rate = _rate(row.conversions or 0, row.exposures)
        out.append(
            VariantResult(
                variant=row.variant,
                exposures=row.exposures,
                conversions=row.conversions,
                rate=rate,
                mean=row.sample.mean if spec.statistic == MEAN else rate,
                std=row.sample.std,
                samples=row.sample.n,
                absolute_lift=lift.absolute if lift else None,
                absolute_lift_ci=_ci(lift.absolute_ci) if lift else None,
                relative_lift=lift.relative if lift else None,
                relative_lift_ci=_ci(lift.relative_ci) if lift else None,
                p_value=lift.p_value if lift else None,
                probability_to_be_best=probability,
            )
        )
    return out


async def post_experiment(request: web.Request) -> web.Response:
    """Per-variant results of an A/B test with a sample-ratio-mismatch check."""
    project_id = await authorized_project(request)
    body = decode_body(await request.read(), ExperimentRequest)
    deps = request.app[DEPS]
    spec, metric_id = await _experiment_spec(deps.pool, project_id, body)
    analysis = await _begin(request, body, project_id)
    async with analysis.scans:
        window = analysis.window
        end = window.end
        persons = False
        if spec.funnel is not None:
            end += timedelta(seconds=spec.funnel.window_s)
            persons = funnel_needs_persons(spec.funnel)
        elif spec.metric is not None:
            persons = metric_needs_persons(spec.metric)
        scan = await analysis.scans.open(window.start, end, with_persons=persons)
        scope = analysis.scope(scan, window.start, end)
        con = scan.con
        data = await in_thread(
            lambda: experiment_data(con, spec, scope, epoch_us(window.start), epoch_us(window.end))
        )
        if not any(d.exposures for d in data):
            exposure = spec.exposure
            raise ApiError(
                404,
                f"no exposures of experiment {spec.experiment!r} between "
                f"{window.start.astimezone(window.tz).isoformat()} and "
                f"{window.end.astimezone(window.tz).isoformat()}: exposures are "
                f"{exposure.event!r} events whose property {exposure.experiment_property!r} is "
                f"{spec.experiment!r} and {exposure.variant_property!r} names the variant "
                "(send them when a person sees a variant, or set `exposure` to the event and "
                "properties you send)",
            )
        results = variant_results(spec, data)
        names = [r.variant for r in results]
        shares = spec.traffic_split or {v: 1.0 for v in names}
        total_share = sum(shares.values())
        observed = {r.variant: r.exposures for r in results}
        srm = srm_check(observed, {v: shares.get(v, 0.0) / total_share for v in names})
        response = ExperimentResponse(
            **await analysis.header(),
            experiment=spec.experiment,
            control=spec.control,
            goal=ExperimentGoalEcho(
                type="funnel" if spec.funnel is not None else "metric",
                statistic=spec.statistic,
                metric_id=metric_id,
            ),
            variants=results,
            srm=SrmResult(
                chi2=srm.chi2,
                p_value=srm.p_value,
                expected_shares=srm.expected_shares,
                observed=observed,
                mismatch=srm.mismatch,
            ),
        )
    return json_response(response)


# ---------------------------------------------------------------------------------------------
# Cohorts


async def _cohort_record(
    pool: asyncpg.Pool, project_id: str, version: saved.SavedVersion
) -> CohortRecord:
    definition = msgspec.json.decode(version.definition)
    static = None
    if definition.get("type") == "static":
        static = await pool.fetchval(
            """SELECT count(*) FROM analysis_cohort_persons
               WHERE project_id = $1 AND cohort_id = $2 AND version = $3""",
            project_id,
            version.id,
            version.version,
        )
    return CohortRecord(
        id=version.id,
        version=version.version,
        name=version.name,
        description=version.description,
        definition=definition,
        created_at=version.created_at,
        static_persons=static,
    )


def _check_name(name: str) -> None:
    if not name.strip():
        raise ParamError("name", "must not be empty")
    if len(name) > 200:
        raise ParamError("name", "at most 200 characters")


async def _save_cohort(request: web.Request, cohort_id: str | None) -> web.Response:
    access = await project_access(request, ANALYST)
    project_id = access.project_id
    body = decode_body(await request.read(), CohortBody)
    _check_name(body.name)
    if cohort_id is not None and body.id is not None and body.id != cohort_id:
        raise ParamError("id", "an update keeps the cohort's id")
    definition = body.definition
    now = now_utc()
    validate_definition(definition, now)
    persons: list[str] = []
    if isinstance(definition, StaticCohort):
        if definition.from_funnel is not None:
            persons = await funnel_person_ids(
                request, project_id, definition.from_funnel, "definition.from_funnel"
            )
        else:
            persons = sorted(set(definition.person_ids))
            if any(not p for p in persons):
                raise ParamError("definition.person_ids", "person ids must not be empty")
        # The persons are stored as rows; the definition keeps where they came from.
        definition = msgspec.structs.replace(definition, person_ids=[])
    encoded = msgspec.json.encode(definition).decode()
    pool = request.app[DEPS].pool
    async with pool.acquire() as conn, conn.transaction():
        if cohort_id is None:
            new_id = saved.new_id(saved.COHORTS, body.id)
            version = await saved.create(
                conn,
                saved.COHORTS,
                project_id,
                new_id,
                body.name,
                body.description,
                encoded,
                access.user_id,
            )
        else:
            version = await saved.update(
                conn,
                saved.COHORTS,
                project_id,
                cohort_id,
                body.name,
                body.description,
                encoded,
                access.user_id,
            )
        if persons:
            await conn.copy_records_to_table(
                "analysis_cohort_persons",
                records=[(project_id, version.id, version.version, p) for p in persons],
                columns=["project_id", "cohort_id", "version", "person_id"],
            )
    record = await _cohort_record(pool, project_id, version)
    return json_response(record, status=201 if cohort_id is None else 200)


async def post_cohort(request: web.Request) -> web.Response:
    """Create a cohort (version 1)."""
    return await _save_cohort(request, None)


async def put_cohort(request: web.Request) -> web.Response:
    """Update a cohort: a new version."""
    return await _save_cohort(request, request.match_info["cohort_id"])


async def get_cohorts(request: web.Request) -> web.Response:
    """The latest version of every cohort of the project."""
    project_id = await authorized_project(request)
    pool = request.app[DEPS].pool
    versions = await saved.list_latest(pool, saved.COHORTS, project_id)
    return json_response(
        CohortList(cohorts=[await _cohort_record(pool, project_id, v) for v in versions])
    )


async def get_cohort(request: web.Request) -> web.Response:
    """A cohort's latest version and its history."""
    project_id = await authorized_project(request)
    pool = request.app[DEPS].pool
    versions = await saved.history(pool, saved.COHORTS, project_id, request.match_info["cohort_id"])
    records = [await _cohort_record(pool, project_id, v) for v in versions]
    return json_response(CohortDetail(cohort=records[0], history=records))


async def delete_cohort(request: web.Request) -> web.Response:
    """Delete a cohort (every version; analyses naming it then answer 400)."""
    project_id = (await project_access(request, ANALYST)).project_id
    await saved.delete(
        request.app[DEPS].pool, saved.COHORTS, project_id, request.match_info["cohort_id"]
    )
    return web.Response(status=204)


async def get_cohort_persons(request: web.Request) -> web.Response:
    """The persons in a cohort now (its latest version), by id, one page at a time."""
    project_id = await authorized_project(request)
    limit = parse_int(request.query, "limit", 100, 1, 10_000)
    cursor = single(request.query, "cursor")
    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ParamError:
            raise ParamError("cursor", "not a cursor this API returned") from None
    deps = request.app[DEPS]
    version = await saved.latest(
        deps.pool, saved.COHORTS, project_id, request.match_info["cohort_id"]
    )
    async with RequestScans(scan_opener(request.app), deps, project_id, False) as scans:
        members = await cohort_members(scans, deps.pool, version, now_utc())
        ids = sorted(members.column("person_id").to_pylist())
        tiers = scans.tiers()
    if after is not None:
        ids = [p for p in ids if p > after]
    page, more = ids[:limit], len(ids) > limit
    return json_response(
        CohortPersons(
            id=version.id,
            version=version.version,
            tiers=tiers,
            person_ids=page,
            next_cursor=encode_cursor(page[-1]) if more else None,
        )
    )


# ---------------------------------------------------------------------------------------------
# Metric definitions


def _metric_record(version: saved.SavedVersion) -> SavedDefinition:
    return SavedDefinition(
        id=version.id,
        version=version.version,
        name=version.name,
        description=version.description,
        definition=msgspec.json.decode(version.definition),
        created_at=version.created_at,
    )


async def _save_metric(request: web.Request, metric_id: str | None) -> web.Response:
    access = await project_access(request, ANALYST)
    project_id = access.project_id
    body = decode_body(await request.read(), MetricBody)
    _check_name(body.name)
    if metric_id is not None and body.id is not None and body.id != metric_id:
        raise ParamError("id", "an update keeps the metric's id")
    validate_metric(body.definition)
    pool = request.app[DEPS].pool
    await resolve_metric(pool, project_id, body.definition)  # 400 for an unknown operand id
    encoded = msgspec.json.encode(body.definition).decode()
    async with pool.acquire() as conn:
        if metric_id is None:
            new_id = saved.new_id(saved.METRICS, body.id)
            version = await saved.create(
                conn,
                saved.METRICS,
                project_id,
                new_id,
                body.name,
                body.description,
                encoded,
                access.user_id,
            )
        else:
            version = await saved.update(
                conn,
                saved.METRICS,
                project_id,
                metric_id,
                body.name,
                body.description,
                encoded,
                access.user_id,
            )
    return json_response(_metric_record(version), status=201 if metric_id is None else 200)


async def post_metric_definition(request: web.Request) -> web.Response:
    """Create a custom metric (version 1)."""
    return await _save_metric(request, None)


async def put_metric_definition(request: web.Request) -> web.Response:
    """Update a custom metric: a new version."""
    return await _save_metric(request, request.match_info["metric_id"])


async def get_metric_definitions(request: web.Request) -> web.Response:
    """The latest version of every custom metric of the project."""
    project_id = await authorized_project(request)
    versions = await saved.list_latest(request.app[DEPS].pool, saved.METRICS, project_id)
    return json_response(
        MetricDefinitionList(metric_definitions=[_metric_record(v) for v in versions])
    )


async def get_metric_definition(request: web.Request) -> web.Response:
    """A custom metric's latest version and its history."""
    project_id = await authorized_project(request)
    versions = await saved.history(
        request.app[DEPS].pool, saved.METRICS, project_id, request.match_info["metric_id"]
    )
    records = [_metric_record(v) for v in versions]
    return json_response(MetricDefinitionDetail(metric_definition=records[0], history=records))


async def delete_metric_definition(request: web.Request) -> web.Response:
    """Delete a custom metric (every version)."""
    project_id = (await project_access(request, ANALYST)).project_id
    await saved.delete(
        request.app[DEPS].pool, saved.METRICS, project_id, request.match_info["metric_id"]
    )
    return web.Response(status=204)


def add_analysis_routes(app: web.Application) -> None:
    """Register the analyses' routes on the query app."""
    r = app.router
    r.add_post(f"{API}/funnels", post_funnels)
    r.add_post(f"{API}/retention", post_retention)
    r.add_post(f"{API}/paths", post_paths)
    r.add_post(f"{API}/experiments/analyze", post_experiment)
    r.add_get(f"{API}/cohorts", get_cohorts)
    r.add_post(f"{API}/cohorts", post_cohort)
    r.add_get(f"{API}/cohorts/{{cohort_id}}", get_cohort)
    r.add_put(f"{API}/cohorts/{{cohort_id}}", put_cohort)
    r.add_delete(f"{API}/cohorts/{{cohort_id}}", delete_cohort)
    r.add_get(f"{API}/cohorts/{{cohort_id}}/persons", get_cohort_persons)
    r.add_get(f"{API}/metric-definitions", get_metric_definitions)
    r.add_post(f"{API}/metric-definitions", post_metric_definition)
    r.add_get(f"{API}/metric-definitions/{{metric_id}}", get_metric_definition)
    r.add_put(f"{API}/metric-definitions/{{metric_id}}", put_metric_definition)
    r.add_delete(f"{API}/metric-definitions/{{metric_id}}", delete_metric_definition)
