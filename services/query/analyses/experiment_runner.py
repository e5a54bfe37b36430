"""The experiments endpoint's runner (`POST /api/v1/analytics/experiments/analyze`): exposed
persons per variant and their goal (a funnel or a custom metric) from experiments.py, with
lifts, p-values, probabilities to be best and a sample-ratio-mismatch check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import duckdb
import msgspec

from services.query.analyses import saved_definitions as saved
from services.query.analyses.conditions import EventScope, property_ref
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
from services.query.analyses.funnel_runner import funnel_needs_persons
from services.query.analyses.funnels import funnel_spec
from services.query.analyses.metric_definitions import (
    MetricDefinition,
    metric_needs_persons,
    validate_metric,
)
from services.query.analyses.requests import FunnelRequest
from services.query.analyses.responses import (
    ExperimentGoalEcho,
    ExperimentResponse,
    SrmResult,
    VariantResult,
)
from services.query.analyses.runner import Analysis, AnalysisRunner, epoch_us
from services.query.analyses.runner import rate as rate_of
from services.query.dependencies import ApiError
from services.query.params import ParamError, TimeWindow


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
            rate = rate_of(row.conversions or 0, row.exposures)
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


@dataclass(frozen=True)
class ExperimentWork:
    spec: ExperimentSpec
    metric_id: str | None


@dataclass(frozen=True)
class ExperimentScan:
    """Exposures in the range; a funnel goal's steps may follow for one window after it."""

    window: TimeWindow
    scan_end: datetime
    with_persons: bool

    @property
    def scan_start(self) -> datetime:
        return self.window.start


class ExperimentRunner(
    AnalysisRunner[ExperimentRequest, ExperimentWork, ExperimentScan, list[VariantData]]
):
    """Per-variant results of an A/B test with a sample-ratio-mismatch check."""

    body_type = ExperimentRequest

    async def validate(
        self, body: ExperimentRequest, pool: asyncpg.Pool, project_id: str
    ) -> ExperimentWork:
        spec, metric_id = await _experiment_spec(pool, project_id, body)
        return ExperimentWork(spec, metric_id)

    async def plan(self, spec: ExperimentWork, analysis: Analysis) -> ExperimentScan:
        goal = spec.spec
        end = analysis.window.end
        persons = False
        if goal.funnel is not None:
            end += timedelta(seconds=goal.funnel.window_s)
            persons = funnel_needs_persons(goal.funnel)
        elif goal.metric is not None:
            persons = metric_needs_persons(goal.metric)
        return ExperimentScan(analysis.window, end, persons)

    def run(
        self,
        con: duckdb.DuckDBPyConnection,
        spec: ExperimentWork,
        plan: ExperimentScan,
        scope: EventScope,
    ) -> list[VariantData]:
        window = plan.window
        return experiment_data(con, spec.spec, scope, epoch_us(window.start), epoch_us(window.end))

    def respond(
        self,
        spec: ExperimentWork,
        plan: ExperimentScan,
        result: list[VariantData],
        header: dict[str, Any],
    ) -> ExperimentResponse:
        experiment, window = spec.spec, plan.window
        if not any(d.exposures for d in result):
            exposure = experiment.exposure
            raise ApiError(
                404,
                f"no exposures of experiment {experiment.experiment!r} between "
                f"{window.start.astimezone(window.tz).isoformat()} and "
                f"{window.end.astimezone(window.tz).isoformat()}: exposures are "
                f"{exposure.event!r} events whose property {exposure.experiment_property!r} is "
                f"{experiment.experiment!r} and {exposure.variant_property!r} names the variant "
                "(send them when a person sees a variant, or set `exposure` to the event and "
                "properties you send)",
            )
        results = variant_results(experiment, result)
        names = [r.variant for r in results]
        shares = experiment.traffic_split or {v: 1.0 for v in names}
        total_share = sum(shares.values())
        observed = {r.variant: r.exposures for r in results}
        srm = srm_check(observed, {v: shares.get(v, 0.0) / total_share for v in names})
        return ExperimentResponse(
            **header,
            experiment=experiment.experiment,
            control=experiment.control,
            goal=ExperimentGoalEcho(
                type="funnel" if experiment.funnel is not None else "metric",
                statistic=experiment.statistic,
                metric_id=spec.metric_id,
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
