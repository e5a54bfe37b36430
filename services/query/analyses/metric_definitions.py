"""Custom metric definitions: stored per project and versioned, usable wherever a built-in metric
is (the metrics endpoint's `metrics=metric:<id>`, an experiment's goal).

Kinds: `count` of an event, `unique_persons` doing it, `sum`/`avg`/`min`/`max`/`p50`...`p99`
of a numeric property of it, and `ratio` of two such metrics (inline, or saved ones by
`metric_id`). Each compiles to one DuckDB aggregate over `events_scan` rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import duckdb
import msgspec
import pyarrow as pa

from services.query.analyses.conditions import (
    EventScope,
    dimension_value_sql,
    event_match_sql,
    needs_persons,
    property_ref,
    property_sql,
)
from services.query.analyses.requests import Condition, EventMatch
from services.query.analyses.saved_definitions import METRICS, latest
from services.query.dependencies import ApiError
from services.query.metric_query import SqlParams
from services.query.params import ParamError

PERCENTILES = {"p50": 0.5, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99}
PROPERTY_KINDS = ("sum", "avg", "min", "max", *PERCENTILES)
EVENT_KINDS = ("count", "unique_persons")
KINDS = (*EVENT_KINDS, *PROPERTY_KINDS, "ratio")
CUSTOM_METRIC_PREFIX = "metric:"


class MetricDefinition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A metric: `kind` over `event` with `conditions` (and `property` for sum/avg/...), or a
    `ratio` of `numerator` and `denominator`. Inside a ratio an operand may instead name a
    saved metric by `metric_id`."""

    kind: str | None = None
    event: str | None = None
    conditions: list[Condition] = []
    property: str | None = None
    numerator: MetricDefinition | None = None
    denominator: MetricDefinition | None = None
    metric_id: str | None = None


class MetricBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """POST/PUT body of /api/v1/analytics/metric-definitions."""

    id: str | None = None  # POST only: a slug; generated when absent
    name: str
    description: str = ""
    definition: MetricDefinition


def validate_metric(definition: MetricDefinition, field: str = "definition") -> None:
    """400 naming the field for a definition that cannot be computed."""
    _validate(definition, field, operand=False)


def _validate(d: MetricDefinition, field: str, *, operand: bool) -> None:
    if d.metric_id is not None:
        if not operand:
            raise ParamError(f"{field}.metric_id", "only a ratio's operands may name a metric")
        others = (d.kind, d.event, d.property, d.numerator, d.denominator)
        if any(v is not None for v in others) or d.conditions:
            raise ParamError(f"{field}.metric_id", "an operand naming a metric has no other fields")
        return
    if d.kind not in KINDS:
        raise ParamError(f"{field}.kind", f"must be one of {', '.join(KINDS)}, not {d.kind!r}")
    if d.kind == "ratio":
        if operand:
            raise ParamError(f"{field}.kind", "a ratio's operands cannot be ratios")
        for part in ("numerator", "denominator"):
            value = getattr(d, part)
            if value is None:
                raise ParamError(f"{field}.{part}", "a ratio needs a numerator and a denominator")
            _validate(value, f"{field}.{part}", operand=True)
        if d.event is not None or d.property is not None or d.conditions:
            raise ParamError(f"{field}.event", "a ratio takes only numerator and denominator")
        return
    if d.numerator is not None or d.denominator is not None:
        raise ParamError(f"{field}.numerator", f"only a ratio has operands, not {d.kind}")
    if not d.event:
        raise ParamError(f"{field}.event", f"a {d.kind} metric needs an event")
    event_match_sql(field, EventMatch(d.event, d.conditions), SqlParams())
    if d.kind in PROPERTY_KINDS:
        if not d.property:
            raise ParamError(f"{field}.property", f"a {d.kind} metric needs a numeric property")
        property_ref(f"{field}.property", d.property)
    elif d.property is not None:
        raise ParamError(f"{field}.property", f"a {d.kind} metric takes no property")


async def resolve_metric(
    pool: asyncpg.Pool | asyncpg.Connection,
    project_id: str,
    definition: MetricDefinition,
    field: str = "definition",
) -> MetricDefinition:
    """The definition with every `metric_id` operand replaced by that metric's latest
    version (which must not be a ratio)."""
    if definition.kind != "ratio":
        return definition
    parts = {}
    for part in ("numerator", "denominator"):
        operand = getattr(definition, part)
        assert operand is not None
        if operand.metric_id is not None:
            try:
                saved = await latest(pool, METRICS, project_id, operand.metric_id)
            except ApiError:
                raise ParamError(
                    f"{field}.{part}.metric_id", f"unknown metric {operand.metric_id!r}"
                ) from None
            operand = msgspec.json.decode(saved.definition, type=MetricDefinition)
            if operand.kind == "ratio":
                raise ParamError(f"{field}.{part}.metric_id", "a ratio's operands cannot be ratios")
        parts[part] = operand
    return msgspec.structs.replace(definition, **parts)


async def saved_metric(pool: asyncpg.Pool, project_id: str, metric_id: str) -> MetricDefinition:
    """The latest version of a saved metric, resolved; 400 naming `metrics` when unknown."""
    try:
        saved = await latest(pool, METRICS, project_id, metric_id)
    except ApiError:
        raise ParamError("metrics", f"unknown custom metric {metric_id!r}") from None
    definition = msgspec.json.decode(saved.definition, type=MetricDefinition)
    return await resolve_metric(pool, project_id, definition, "metrics")


def metric_needs_persons(d: MetricDefinition) -> bool:
    if d.kind == "ratio":
        assert d.numerator is not None and d.denominator is not None
        return metric_needs_persons(d.numerator) or metric_needs_persons(d.denominator)
    prop = d.property is not None and property_ref("property", d.property).needs_persons
    return needs_persons(d.conditions) or prop


def metric_sql(d: MetricDefinition, params: SqlParams, field: str = "definition") -> str:
    """One aggregate expression over rows `e` (with `pt` joined when persons are needed)."""
    if d.kind == "ratio":
        assert d.numerator is not None and d.denominator is not None
        num = metric_sql(d.numerator, params, f"{field}.numerator")
        den = metric_sql(d.denominator, params, f"{field}.denominator")
        return f"(({num})::DOUBLE / nullif(({den})::DOUBLE, 0))"
    assert d.event is not None
    match = event_match_sql(field, EventMatch(d.event, d.conditions), params)
    if d.kind == "count":
        return f"count(*) FILTER (WHERE {match})"
    if d.kind == "unique_persons":
        return f"count(DISTINCT e.person_id) FILTER (WHERE {match})"
    assert d.property is not None
    value = f"TRY_CAST({property_sql(property_ref('property', d.property), params)} AS DOUBLE)"
    if d.kind == "sum":
        return f"coalesce(sum({value}) FILTER (WHERE {match}), 0)"
    if d.kind in PERCENTILES:
        return f"quantile_cont({value}, {PERCENTILES[d.kind]}) FILTER (WHERE {match})"
    return f"{d.kind}({value}) FILTER (WHERE {match})"


@dataclass(frozen=True)
class CustomMetricCells:
    """(bucket index or None for the total, breakdown value or None) -> metric -> value."""

    values: dict[tuple[int | None, str | None], dict[str, float | int | None]]


def run_custom_metrics(
    con: duckdb.DuckDBPyConnection,
    metrics: dict[str, MetricDefinition],
    scope: EventScope,
    bounds: list[datetime],
    breakdown: str | None,
) -> CustomMetricCells:
    """Each metric per output bucket (`bounds[i]` to `bounds[i + 1]`) and breakdown value,
    with the totals over buckets and over values, like the metrics endpoint's cells."""
    params = SqlParams()
    names = list(metrics)
    aggregates = ", ".join(
        f"{metric_sql(metrics[n], params, 'metrics')} AS m{i}" for i, n in enumerate(names)
    )
    joins_persons = any(metric_needs_persons(d) for d in metrics.values())
    join = "LEFT JOIN persons pt ON pt.person_id = e.person_id" if joins_persons else ""
    key = "NULL::VARCHAR" if breakdown is None else dimension_value_sql(breakdown)
    sets = (
        "(b.idx, e.key), (e.key)" if breakdown is None else "(b.idx, e.key), (e.key), (b.idx), ()"
    )
    con.register(
        "custom_metric_buckets",
        pa.table(
            {
                "idx": pa.array(range(len(bounds) - 1), pa.int32()),
                "start_ts": pa.array(bounds[:-1], pa.timestamp("us", tz="UTC")),
            }
        ),
    )
    # Each row's bucket comes from an ASOF join against the bucket starts.
    rows = con.execute(
        f"""SELECT grouping(b.idx) = 1, grouping(e.key) = 1, b.idx, e.key, {aggregates}
            FROM (SELECT e.*, {key} AS key FROM events_scan e
                  WHERE {scope.where(params)}) e
            {join}
            ASOF JOIN custom_metric_buckets b ON e.ts >= b.start_ts
            GROUP BY GROUPING SETS ({sets})""",
        params.values,
    ).fetchall()
    con.unregister("custom_metric_buckets")
    values: dict[tuple[int | None, str | None], dict[str, Any]] = {}
    for row in rows:
        idx = None if row[0] else row[2]
        key_value = None if row[1] else row[3]
        values[(idx, key_value)] = {n: row[4 + i] for i, n in enumerate(names)}
    return CustomMetricCells(values)
