"""Response bodies of the analyses as msgspec Structs: what the handlers encode and what the
OpenAPI document's schemas are generated from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from services.query.analyses.scans import TierUsage
from services.query.responses import Freshness, MissingRange


class AnalysisHeader(msgspec.Struct, kw_only=True):
    tiers: list[TierUsage]  # rows and time per storage tier read
    from_: datetime = msgspec.field(name="from")
    to: datetime
    timezone: str
    filters: list[str]
    include_bots: bool
    cohorts: list[CohortRef]
    # Archived days left out (allow_partial=true only): the answer covers the other days.
    missing: list[MissingRange] = []
    freshness: Freshness | None = None


class CohortRef(msgspec.Struct, kw_only=True):
    """A cohort filter as applied: the version used and how many persons it held."""

    id: str
    version: int
    persons: int


class FunnelStepResult(msgspec.Struct, kw_only=True):
    step: int  # 1-based
    event: str | None  # the step's event (null in an unordered funnel: "any k steps")
    label: str
    count: int  # persons reaching at least this step
    conversion_from_first: float | None
    conversion_from_previous: float | None
    drop_off: int  # persons who reached the previous step but not this one
    drop_off_rate: float | None
    median_time_from_previous_s: float | None
    avg_time_from_previous_s: float | None


class FunnelBreakdownValue(msgspec.Struct, kw_only=True):
    value: str
    steps: list[FunnelStepResult]


class FunnelBreakdown(msgspec.Struct, kw_only=True):
    property: str
    values: list[FunnelBreakdownValue]
    truncated: bool  # more values existed than breakdown_limit


class FunnelPersons(msgspec.Struct, kw_only=True):
    step: int
    status: str  # converted | dropped
    breakdown_value: str | None
    person_ids: list[str]
    next_cursor: str | None  # pass as persons.cursor for the next page


class FunnelWindow(msgspec.Struct, kw_only=True):
    value: int
    unit: str
    seconds: int


class ConversionTimeBin(msgspec.Struct, kw_only=True):
    from_s: float  # inclusive
    to_s: float  # exclusive (the last bin also holds its upper edge's persons)
    persons: int


class TimeToConvertResult(msgspec.Struct, kw_only=True):
    """How long converting took: from `from_step` to `to_step`, over the persons who reached
    `to_step` (at their best attempt), as equal bins of whole seconds."""

    from_step: int
    to_step: int
    persons: int
    avg_s: float | None
    median_s: float | None
    bins: list[ConversionTimeBin]


class FunnelResponse(AnalysisHeader, kw_only=True):
    order: str
    window: FunnelWindow
    steps: list[FunnelStepResult]
    breakdown: FunnelBreakdown | None = None
    persons: FunnelPersons | None = None
    time_to_convert: TimeToConvertResult | None = None


class RetentionCohort(msgspec.Struct, kw_only=True):
    period_start: datetime  # in the request's time zone
    size: int
    counts: list[int | None]  # offset 0..intervals; null: that period has not begun
    percentages: list[float | None]


class RetentionResponse(AnalysisHeader, kw_only=True):
    period: str
    intervals: int
    week_start: str
    mode: str
    cumulative: bool
    matrix: list[RetentionCohort]  # one row per cohort period
    average_percentages: list[float | None]  # per offset, weighted by cohort size


class PathNodeResult(msgspec.Struct, kw_only=True):
    id: str  # `<step>_<name>`
    step: int
    name: str
    count: int
    drop_offs: int


class PathEdgeResult(msgspec.Struct, kw_only=True):
    source: str
    target: str
    value: int  # paths (session occurrences) taking this transition


class PathsResponse(AnalysisHeader, kw_only=True):
    steps: int
    event_types: list[str]
    start_point: str | None
    end_point: str | None
    per: str  # session | person: what one path is
    paths: int  # paths counted: sessions, or persons with per=person
    sessions: int | None  # the sessions counted (null with per=person)
    persons: int
    nodes: list[PathNodeResult]
    edges: list[PathEdgeResult]
    edges_truncated: bool


class VariantResult(msgspec.Struct, kw_only=True):
    variant: str
    exposures: int
    conversions: int | None  # proportion goals only
    rate: float | None  # proportion goals: conversions / exposures
    mean: float | None  # per exposed person (proportion goals: the rate)
    std: float | None
    samples: int  # persons with a goal value
    absolute_lift: float | None  # vs control
    absolute_lift_ci: list[float] | None  # 95%
    relative_lift: float | None
    relative_lift_ci: list[float] | None
    p_value: float | None  # two-sided
    probability_to_be_best: float | None


class SrmResult(msgspec.Struct, kw_only=True):
    chi2: float | None
    p_value: float | None
    expected_shares: dict[str, float]
    observed: dict[str, int]
    mismatch: bool  # p < 0.001: the split differs from the expected one


class ExperimentGoalEcho(msgspec.Struct, kw_only=True):
    type: str  # funnel | metric
    statistic: str  # proportion (z-test) | mean (Welch's t-test)
    metric_id: str | None = None


class ExperimentResponse(AnalysisHeader, kw_only=True):
    experiment: str
    control: str
    goal: ExperimentGoalEcho
    variants: list[VariantResult]
    srm: SrmResult


class SavedDefinition(msgspec.Struct, kw_only=True):
    id: str
    version: int
    name: str
    description: str
    definition: dict[str, Any]
    created_at: datetime


class CohortRecord(SavedDefinition, kw_only=True):
    static_persons: int | None = None  # static cohorts: persons in this version


class CohortList(msgspec.Struct, kw_only=True):
    cohorts: list[CohortRecord]


class CohortDetail(msgspec.Struct, kw_only=True):
    cohort: CohortRecord  # the latest version
    history: list[CohortRecord]  # every version, newest first


class CohortPersons(msgspec.Struct, kw_only=True):
    id: str
    version: int
    tiers: list[TierUsage]
    person_ids: list[str]
    next_cursor: str | None


class MetricDefinitionList(msgspec.Struct, kw_only=True):
    metric_definitions: list[SavedDefinition]


class MetricDefinitionDetail(msgspec.Struct, kw_only=True):
    metric_definition: SavedDefinition  # the latest version
    history: list[SavedDefinition]  # every version, newest first
