"""A/B test analysis: persons exposed to an experiment (the variant of their first exposure),
a goal measured after exposure (a funnel completed, or a custom metric), and per variant the
statistics against control with SciPy: two-proportion z-test for rates, Welch's t-test for
means, 95% confidence intervals of the absolute and relative lift, the Bayesian probability
to be best (Beta / normal posteriors, integrated numerically), and a chi-square sample-ratio-
mismatch check flagged at p < 0.001.

SciPy is imported by the functions that use it, not with the module: importing `scipy.stats`
takes seconds, which every start of the query service would otherwise pay before serving
(the warm-up imports it in the background, services/query/warm_up.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb
import msgspec
import numpy as np

from services.query.analyses.conditions import (
    EventScope,
    event_match_sql,
    needs_persons,
    property_ref,
    property_sql,
)
from services.query.analyses.funnels import FunnelQuery, FunnelSpec
from services.query.analyses.metric_definitions import MetricDefinition, metric_needs_persons
from services.query.analyses.requests import (
    AnalysisRequest,
    EventMatch,
    FunnelExclusion,
    FunnelStep,
    WindowSpec,
)
from services.query.metric_query import SqlParams
from services.query.params import ParamError

CONFIDENCE = 0.95
SRM_THRESHOLD = 0.001
PROPORTION, MEAN = "proportion", "mean"
# Metric kinds that make a per-person value an experiment can compare.
GOAL_KINDS = {"unique_persons": PROPORTION, "count": MEAN, "sum": MEAN, "avg": MEAN}


class ExposureSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Which events are exposures: `event` carrying the experiment key in
    `experiment_property` and the variant in `variant_property`."""

    event: str = "$experiment_exposure"
    experiment_property: str = "experiment"
    variant_property: str = "variant"


class FunnelGoal(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    steps: list[FunnelStep]
    order: str = "ordered"
    window: WindowSpec = WindowSpec(14, "day")
    exclusions: list[FunnelExclusion] = []


class ExperimentGoal(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Exactly one of: a funnel to complete, an inline metric, or a saved metric's id."""

    funnel: FunnelGoal | None = None
    metric: MetricDefinition | None = None
    metric_id: str | None = None


class ExperimentRequest(AnalysisRequest, kw_only=True):
    experiment: str
    control: str = "control"
    # Expected variants, control included (default: those seen).
    variants: list[str] = msgspec.field(default_factory=list)
    # Expected shares for the sample-ratio check (default: equal).
    traffic_split: dict[str, float] = msgspec.field(default_factory=dict)
    exposure: ExposureSpec = ExposureSpec()
    goal: ExperimentGoal


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Lift:
    absolute: float | None
    absolute_ci: tuple[float, float] | None
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float | None


_NO_LIFT = Lift(None, None, None, None, None)


def import_statistics() -> None:
    """Import what the statistics below use (the query service's warm-up calls it in a thread,
    so the first experiment does not wait for it)."""
    from scipy import integrate, stats  # noqa: F401


def _z() -> float:
    from scipy import stats  # seconds to import: see the module docstring

    return float(stats.norm.ppf(1 - (1 - CONFIDENCE) / 2))


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def proportion_lift(conv_c: int, n_c: int, conv_v: int, n_v: int) -> Lift:
    """Variant vs control rates: two-sided pooled two-proportion z-test, unpooled (Wald) CI of
    the difference, delta-method CI of the relative lift."""
    from scipy import stats  # seconds to import: see the module docstring

    if n_c == 0 or n_v == 0:
        return _NO_LIFT
    p_c, p_v = conv_c / n_c, conv_v / n_v
    diff = p_v - p_c
    pooled = (conv_c + conv_v) / (n_c + n_v)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_v))
    # Every person converted (or none did) in both groups: nothing differs.
    p_value = 1.0 if se_pooled == 0 else float(2 * stats.norm.sf(abs(diff / se_pooled)))
    var_c, var_v = p_c * (1 - p_c) / n_c, p_v * (1 - p_v) / n_v
    z = _z()
    se = math.sqrt(var_c + var_v)
    relative, relative_ci = None, None
    if p_c > 0:
        relative = p_v / p_c - 1
        se_rel = math.sqrt(var_v / p_c**2 + p_v**2 * var_c / p_c**4)
        relative_ci = (relative - z * se_rel, relative + z * se_rel)
    return Lift(diff, (diff - z * se, diff + z * se), relative, relative_ci, p_value)


@dataclass(frozen=True)
class SampleStats:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation (n - 1)


def mean_lift(control: SampleStats, variant: SampleStats) -> Lift:
    """Variant vs control means: Welch's t-test, Welch-Satterthwaite CI of the difference,
    delta-method CI of the relative lift."""
    from scipy import stats  # seconds to import: see the module docstring

    if control.n < 2 or variant.n < 2 or control.mean is None or variant.mean is None:
        return _NO_LIFT
    assert control.std is not None and variant.std is not None
    diff = variant.mean - control.mean
    var_c, var_v = control.std**2 / control.n, variant.std**2 / variant.n
    se = math.sqrt(var_c + var_v)
    if se == 0:
        return Lift(
            diff, (diff, diff), _relative(diff, control.mean), None, 1.0 if diff == 0 else 0.0
        )
    result = stats.ttest_ind_from_stats(
        variant.mean, variant.std, variant.n, control.mean, control.std, control.n, equal_var=False
    )
    df = (var_c + var_v) ** 2 / (var_c**2 / (control.n - 1) + var_v**2 / (variant.n - 1))
    t = float(stats.t.ppf(1 - (1 - CONFIDENCE) / 2, df))
    relative, relative_ci = _relative(diff, control.mean), None
    if relative is not None:
        m_c, m_v = control.mean, variant.mean
        se_rel = math.sqrt(var_v / m_c**2 + m_v**2 * var_c / m_c**4)
        z = _z()
        relative_ci = (relative - z * se_rel, relative + z * se_rel)
    return Lift(diff, (diff - t * se, diff + t * se), relative, relative_ci, _finite(result.pvalue))


def _relative(diff: float, base: float) -> float | None:
    return diff / base if base != 0 else None


def _probability_best(pdfs: list[object], cdfs: list[object], lo: float, hi: float) -> list[float]:
    """P(variant i has the largest value) for independent posteriors given as pdf/cdf."""
    from scipy import integrate  # seconds to import: see the module docstring

    out = []
    for i in range(len(pdfs)):

        def integrand(x: float, i: int = i) -> float:
            value = float(pdfs[i](x))  # type: ignore[operator]
            for j, cdf in enumerate(cdfs):
                if j != i:
                    value *= float(cdf(x))  # type: ignore[operator]
            return value

        value, _ = integrate.quad(integrand, lo, hi, limit=500)
        out.append(min(max(value, 0.0), 1.0))
    return out


def probability_best_rates(conversions: list[int], exposures: list[int]) -> list[float | None]:
    """Beta(1 + conversions, 1 + failures) posteriors (uniform prior), integrated."""
    from scipy import stats  # seconds to import: see the module docstring

    if len(exposures) < 2 or any(n == 0 for n in exposures):
        return [None] * len(exposures)
    dists = [stats.beta(1 + c, 1 + n - c) for c, n in zip(conversions, exposures, strict=True)]
    lo = min(float(d.ppf(1e-12)) for d in dists)
    hi = max(float(d.ppf(1 - 1e-12)) for d in dists)
    return list(_probability_best([d.pdf for d in dists], [d.cdf for d in dists], lo, hi))


def probability_best_means(samples: list[SampleStats]) -> list[float | None]:
    """Normal posteriors N(mean, std^2 / n) of each mean (flat prior), integrated."""
    from scipy import stats  # seconds to import: see the module docstring

    if len(samples) < 2 or any(s.n < 2 or s.mean is None for s in samples):
        return [None] * len(samples)
    scales = [(s.std or 0.0) / math.sqrt(s.n) for s in samples]
    if any(scale == 0 for scale in scales):
        return [None] * len(samples)
    dists = [stats.norm(s.mean, scale) for s, scale in zip(samples, scales, strict=True)]
    lo = min(float(d.ppf(1e-12)) for d in dists)
    hi = max(float(d.ppf(1 - 1e-12)) for d in dists)
    return list(_probability_best([d.pdf for d in dists], [d.cdf for d in dists], lo, hi))


@dataclass(frozen=True)
class SrmCheck:
    chi2: float | None
    p_value: float | None
    expected_shares: dict[str, float]
    mismatch: bool


def srm_check(observed: dict[str, int], shares: dict[str, float]) -> SrmCheck:
    """Chi-square goodness of fit of exposures against the expected traffic split."""
    from scipy import stats  # seconds to import: see the module docstring

    names = list(shares)
    total = sum(observed.get(v, 0) for v in names)
    if len(names) < 2 or total == 0:
        return SrmCheck(None, None, shares, False)
    weight = sum(shares.values())
    expected = np.array([total * shares[v] / weight for v in names])
    counts = np.array([observed.get(v, 0) for v in names], dtype=float)
    result = stats.chisquare(counts, expected)
    p_value = float(result.pvalue)
    return SrmCheck(float(result.statistic), p_value, shares, p_value < SRM_THRESHOLD)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ExperimentSpec:
    experiment: str
    control: str
    variants: tuple[str, ...]  # empty: those seen
    traffic_split: dict[str, float]
    exposure: ExposureSpec
    funnel: FunnelSpec | None
    metric: MetricDefinition | None

    @property
    def statistic(self) -> str:
        if self.funnel is not None:
            return PROPORTION
        assert self.metric is not None and self.metric.kind is not None
        return GOAL_KINDS[self.metric.kind]


def check_goal_metric(metric: MetricDefinition, field: str) -> None:
    if metric.kind not in GOAL_KINDS:
        raise ParamError(
            f"{field}.kind",
            f"an experiment goal is one of {', '.join(GOAL_KINDS)} per person, not {metric.kind}",
        )


@dataclass(frozen=True)
class VariantData:
    variant: str
    exposures: int
    conversions: int | None  # proportion goals
    sample: SampleStats  # the per-person goal values (proportion: 0/1)


def _exposures_sql(spec: ExperimentSpec, scope: EventScope, params: SqlParams) -> str:
    exposure = spec.exposure
    experiment = property_sql(
        property_ref("exposure.experiment_property", exposure.experiment_property), params
    )
    variant = property_sql(
        property_ref("exposure.variant_property", exposure.variant_property), params
    )
    variants = ""
    if spec.variants:
        variants = f"AND list_contains({params.add(list(spec.variants))}::VARCHAR[], variant)"
    return f"""
        SELECT pid, arg_min(variant, row(ts, event_id)) AS variant,
               epoch_us(min(ts)) AS t_floor
        FROM (
            SELECT e.person_id AS pid, e.ts, e.event_id, {variant} AS variant
            FROM events_scan e
            WHERE {scope.where(params)} AND e.name = {params.add(exposure.event)}
              AND {experiment} = {params.add(spec.experiment)}
        ) WHERE variant IS NOT NULL {variants}
        GROUP BY pid"""


def experiment_data(
    con: duckdb.DuckDBPyConnection,
    spec: ExperimentSpec,
    scope: EventScope,
    start_us: int,
    end_us: int,
) -> list[VariantData]:
    """Per variant: exposed persons and their goal values, measured from each person's first
    exposure to the end of the range."""
    params = SqlParams()
    con.execute(
        "CREATE OR REPLACE TEMP TABLE experiment_exposures AS "
        + _exposures_sql(spec, scope, params),
        params.values,
    )
    if spec.funnel is not None:
        funnel = FunnelQuery(spec.funnel, scope, prefix="experiment_funnel")
        funnel.prepare(con, start_us, end_us, floor_table="experiment_exposures")
        rows = con.execute(
            f"""SELECT x.variant, count(*), count(f.pid) FILTER (WHERE f.reached = {spec.funnel.n})
                FROM experiment_exposures x
                LEFT JOIN {funnel.persons_table(con)} f ON f.pid = x.pid
                GROUP BY x.variant"""
        ).fetchall()
        funnel.drop(con)
        data = []
        for variant, exposed, converted in rows:
            rate = converted / exposed
            std = math.sqrt(rate * (1 - rate) * exposed / (exposed - 1)) if exposed > 1 else None
            data.append(VariantData(variant, exposed, converted, SampleStats(exposed, rate, std)))
    else:
        data = _metric_goal(con, spec, scope)
    con.execute("DROP TABLE experiment_exposures")
    return data


def _metric_goal(
    con: duckdb.DuckDBPyConnection, spec: ExperimentSpec, scope: EventScope
) -> list[VariantData]:
    metric = spec.metric
    assert metric is not None and metric.event is not None
    params = SqlParams()
    match = event_match_sql("goal.metric", EventMatch(metric.event, metric.conditions), params)
    join = ""
    if metric_needs_persons(metric) or needs_persons(metric.conditions):
        join = "LEFT JOIN persons pt ON pt.person_id = e.person_id"
    value = "1"
    if metric.property is not None:
        prop = property_sql(property_ref("goal.metric.property", metric.property), params)
        value = f"TRY_CAST({prop} AS DOUBLE)"
    per_person = {
        "unique_persons": "CASE WHEN count(e.pid) > 0 THEN 1.0 ELSE 0.0 END",
        "count": "count(e.pid)::DOUBLE",
        "sum": "coalesce(sum(e.v), 0)::DOUBLE",
        "avg": "avg(e.v)",  # persons without a value have none (left out of the sample)
    }[metric.kind or ""]
    rows = con.execute(
        f"""SELECT variant, count(*) AS exposed,
                   count(*) FILTER (WHERE v > 0) AS converted,
                   count(v), avg(v), stddev_samp(v)
            FROM (
                SELECT x.pid, x.variant, {per_person} AS v
                FROM experiment_exposures x
                LEFT JOIN (
                    SELECT e.person_id AS pid, epoch_us(e.ts) AS t, {value} AS v
                    FROM events_scan e {join}
                    WHERE {scope.where(params)} AND {match}
                ) e ON e.pid = x.pid AND e.t >= x.t_floor
                GROUP BY x.pid, x.variant
            ) GROUP BY variant""",
        params.values,
    ).fetchall()
    proportion = GOAL_KINDS[metric.kind or ""] == PROPORTION
    return [
        VariantData(
            variant,
            exposed,
            converted if proportion else None,
            SampleStats(n, mean, std if std is None else float(std)),
        )
        for variant, exposed, converted, n, mean, std in rows
    ]
