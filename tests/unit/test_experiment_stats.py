"""Experiment statistics checked against SciPy run directly on the same counts and samples, and
the exposure/goal rules on hand-built events."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats

from services.query.analyses.conditions import EventScope
from services.query.analyses.experiment_runner import variant_results
from services.query.analyses.experiments import (
    ExperimentSpec,
    ExposureSpec,
    SampleStats,
    experiment_data,
    mean_lift,
    probability_best_means,
    probability_best_rates,
    proportion_lift,
    srm_check,
)
from services.query.analyses.funnels import funnel_spec
from services.query.analyses.metric_definitions import MetricDefinition
from services.query.analyses.requests import FunnelRequest, FunnelStep
from services.query.analyses.runner import epoch_us
from tests.support.analysis_events import Ev, at, numbered, scan_connection


@pytest.mark.parametrize(
    ("conv_c", "n_c", "conv_v", "n_v"),
    [(120, 1000, 150, 1000), (30, 400, 22, 380), (5, 50, 5, 60), (990, 1000, 1000, 1000)],
)
def test_proportion_lift_matches_scipy(conv_c: int, n_c: int, conv_v: int, n_v: int) -> None:
    lift = proportion_lift(conv_c, n_c, conv_v, n_v)
    table = np.array([[conv_v, n_v - conv_v], [conv_c, n_c - conv_c]])
    # The pooled two-proportion z-test is the 2x2 chi-square test without continuity correction.
    expected_p = stats.chi2_contingency(table, correction=False).pvalue
    assert lift.p_value == pytest.approx(expected_p, rel=1e-9)
    p_c, p_v = conv_c / n_c, conv_v / n_v
    se = math.sqrt(p_c * (1 - p_c) / n_c + p_v * (1 - p_v) / n_v)
    lo, hi = stats.norm.interval(0.95, loc=p_v - p_c, scale=se)
    assert lift.absolute == pytest.approx(p_v - p_c)
    assert lift.absolute_ci == pytest.approx((lo, hi))
    assert lift.relative == pytest.approx(p_v / p_c - 1)
    assert lift.relative_ci is not None and lift.relative is not None
    assert lift.relative_ci[0] < lift.relative < lift.relative_ci[1]


def test_proportion_lift_edge_cases() -> None:
    assert proportion_lift(0, 100, 0, 100).p_value == 1.0
    assert proportion_lift(0, 100, 5, 100).relative is None  # no control conversions
    assert proportion_lift(5, 0, 5, 100).p_value is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mean_lift_matches_welch_t_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    control = rng.exponential(3.0, 400)
    variant = rng.exponential(3.4, 350)

    def sample(values: np.ndarray) -> SampleStats:
        return SampleStats(len(values), float(values.mean()), float(values.std(ddof=1)))

    lift = mean_lift(sample(control), sample(variant))
    expected = stats.ttest_ind(variant, control, equal_var=False)
    assert lift.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    ci = expected.confidence_interval(0.95)
    assert lift.absolute_ci == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert lift.absolute == pytest.approx(variant.mean() - control.mean())


def test_probability_to_be_best_for_rates_matches_sampling() -> None:
    conversions, exposures = [120, 135, 128], [1000, 1000, 990]
    computed = probability_best_rates(conversions, exposures)
    rng = np.random.default_rng(7)
    draws = np.stack(
        [rng.beta(1 + c, 1 + n - c, 2_000_000) for c, n in zip(conversions, exposures, strict=True)]
    )
    sampled = np.bincount(draws.argmax(axis=0), minlength=3) / draws.shape[1]
    assert computed == pytest.approx(list(sampled), abs=0.002)
    assert sum(p or 0 for p in computed) == pytest.approx(1.0, abs=1e-6)


def test_probability_to_be_best_for_means_matches_the_closed_form() -> None:
    a, b = SampleStats(500, 10.0, 4.0), SampleStats(450, 10.4, 5.0)
    p_a, p_b = probability_best_means([a, b])
    expected = stats.norm.cdf((b.mean - a.mean) / math.sqrt(16 / 500 + 25 / 450))  # type: ignore[operator]
    assert p_b == pytest.approx(expected, abs=1e-7)
    assert p_a == pytest.approx(1 - expected, abs=1e-7)


def test_srm_check_matches_scipy_and_flags_below_0_001() -> None:
    check = srm_check({"control": 1000, "b": 1200}, {"control": 0.5, "b": 0.5})
    expected = stats.chisquare([1000, 1200], [1100, 1100])
    assert check.p_value == pytest.approx(expected.pvalue)
    assert check.chi2 == pytest.approx(expected.statistic)
    assert check.mismatch  # p ~ 2e-5
    assert not srm_check({"control": 1000, "b": 1040}, {"control": 0.5, "b": 0.5}).mismatch
    skewed = srm_check({"control": 900, "b": 100}, {"control": 0.9, "b": 0.1})
    assert skewed.p_value == pytest.approx(1.0) and not skewed.mismatch


def exposure(person: str, variant: str | None, minutes: float, experiment: str = "checkout") -> Ev:
    props = {"experiment": experiment}
    if variant is not None:
        props["variant"] = variant
    return Ev(person, "$experiment_exposure", at(minutes), properties=props)


EVENTS = numbered(
    [
        exposure("p1", "control", 0),
        exposure("p1", "b", 5),  # p1 stays in control: the first exposure counts
        Ev("p1", "purchase", at(-5), properties={"amount": 100}),  # before exposure: ignored
        Ev("p1", "view", at(10)),
        Ev("p1", "purchase", at(20), properties={"amount": 30}),
        exposure("p2", "b", 0),
        Ev("p2", "view", at(1)),
        Ev("p2", "purchase", at(2), properties={"amount": 10}),
        Ev("p2", "purchase", at(3), properties={"amount": 20}),
        exposure("p3", "b", 0),
        exposure("p4", None, 0),  # no variant: not exposed
        exposure("p5", "control", 0, experiment="other"),  # another experiment
        exposure("p6", "control", 0),
        Ev("p6", "view", at(-10)),  # the funnel's first step before exposure
        Ev("p6", "purchase", at(1), properties={"amount": 5}),
    ]
)


def spec(
    funnel: FunnelRequest | None = None, metric: MetricDefinition | None = None
) -> ExperimentSpec:
    return ExperimentSpec(
        experiment="checkout",
        control="control",
        variants=(),
        traffic_split={},
        exposure=ExposureSpec(),
        funnel=funnel_spec(funnel) if funnel is not None else None,
        metric=metric,
    )


def data(
    experiment: ExperimentSpec, threads: int = 1
) -> dict[str, tuple[int, int | None, SampleStats]]:
    con = scan_connection(EVENTS)
    start, end = at(-60), at(days=1)
    # threads > 1: the goal funnel's stream is split into person parts however small.
    scope = EventScope(start, end + timedelta(days=14), threads=threads, part_min_events=0)
    rows = experiment_data(con, experiment, scope, epoch_us(start), epoch_us(end))
    return {r.variant: (r.exposures, r.conversions, r.sample) for r in rows}


@pytest.mark.parametrize("threads", [1, 2], ids=["whole", "parts"])
def test_funnel_goal_counts_first_exposure_and_attempts_after_it(threads: int) -> None:
    goal = FunnelRequest(steps=[FunnelStep("view"), FunnelStep("purchase")])
    got = data(spec(funnel=goal), threads)
    # control: p1 (view 10 -> purchase 20: converted), p6 (viewed before exposure: not).
    assert {v: (n, c) for v, (n, c, _) in got.items()} == {"control": (2, 1), "b": (2, 1)}


def test_metric_goals_per_exposed_person() -> None:
    count = data(spec(metric=MetricDefinition(kind="count", event="purchase")))
    # control: p1 one purchase after exposure, p6 one: mean 1; b: p2 two, p3 none: mean 1.
    assert count["control"][2] == SampleStats(2, 1.0, 0.0)
    assert count["b"][2].mean == 1.0 and count["b"][2].n == 2
    total = data(spec(metric=MetricDefinition(kind="sum", event="purchase", property="amount")))
    assert total["control"][2].mean == pytest.approx((30 + 5) / 2)
    assert total["b"][2].mean == pytest.approx((30 + 0) / 2)
    average = data(spec(metric=MetricDefinition(kind="avg", event="purchase", property="amount")))
    # Persons without a purchase have no average: p3 is left out of b's sample.
    assert average["b"][2].n == 1 and average["b"][2].mean == pytest.approx(15.0)
    unique = data(spec(metric=MetricDefinition(kind="unique_persons", event="purchase")))
    assert unique["b"][1] == 1 and unique["b"][0] == 2


def test_variant_results_put_control_first_and_compare_against_it() -> None:
    experiment = spec(metric=MetricDefinition(kind="unique_persons", event="purchase"))
    con = scan_connection(EVENTS)
    start, end = at(-60), at(days=1)
    rows = experiment_data(con, experiment, EventScope(start, end), epoch_us(start), epoch_us(end))
    results = variant_results(experiment, rows)
    assert [r.variant for r in results] == ["control", "b"]
    control, b = results
    assert (control.exposures, control.conversions, control.rate) == (2, 2, 1.0)
    assert (b.exposures, b.conversions, b.rate) == (2, 1, 0.5)
    assert control.absolute_lift is None and b.absolute_lift == pytest.approx(-0.5)
    expected = stats.chi2_contingency(np.array([[1, 1], [2, 0]]), correction=False).pvalue
    assert b.p_value == pytest.approx(expected)
    assert (control.probability_to_be_best or 0) > (b.probability_to_be_best or 0)
