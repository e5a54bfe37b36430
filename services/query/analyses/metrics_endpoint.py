"""What the analyses add to GET /api/v1/analytics/metrics: `cohort=<id>` filters (resolved to
their persons, answered from raw rows) and custom metrics `metric:<id>` (computed from the
event scan per output bucket and breakdown value, so every tier can answer them)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import pyarrow as pa
from aiohttp import web

from services.query.analyses.cohorts import cohort_tables
from services.query.analyses.conditions import EventScope
from services.query.analyses.metric_definitions import (
    CUSTOM_METRIC_PREFIX,
    MetricDefinition,
    metric_needs_persons,
    run_custom_metrics,
    saved_metric,
)
from services.query.analyses.scans import RequestScans, in_thread, scan_opener
from services.query.buckets import OutputBuckets
from services.query.dependencies import DEPS
from services.query.metric_query import Cells, MetricQuery, cell_of
from services.query.params import ParamError


async def resolve_cohort_filter(
    request: web.Request, query: MetricQuery
) -> tuple[MetricQuery, list[date]]:
    """The query with `cohort_persons` set to the persons in all of its cohorts, and the days
    the cohorts' scans left out (allow_partial)."""
    if not query.cohorts:
        return query, []
    deps = request.app[DEPS]
    async with RequestScans(
        scan_opener(request.app),
        deps,
        query.project_id,
        query.include_bots,
        allow_partial=query.allow_partial,
    ) as scans:
        try:
            members = await cohort_tables(scans, deps.pool, list(query.cohorts), datetime.now(UTC))
        except ParamError as exc:
            raise ParamError("cohort", exc.problem) from None
        missing = scans.missing_days()
    persons: set[str] | None = None
    for _, table in members:
        ids = set(table.column("person_id").to_pylist())
        persons = ids if persons is None else persons & ids
    return dataclasses.replace(query, cohort_persons=tuple(sorted(persons or ()))), missing


async def fill_custom_metrics(
    request: web.Request, query: MetricQuery, buckets: OutputBuckets, cells: Cells
) -> tuple[list[str], list[date]]:
    """Put every `metric:<id>` value into `cells`; returns the storage tiers read and the days
    left out (allow_partial)."""
    names = query.custom_metrics
    if not names:
        return [], []
    deps = request.app[DEPS]
    definitions: dict[str, MetricDefinition] = {}
    for name in names:
        definitions[name] = await saved_metric(
            deps.pool, query.project_id, name[len(CUSTOM_METRIC_PREFIX) :]
        )
    start, end = buckets.bounds[0], buckets.bounds[-1]
    async with RequestScans(
        scan_opener(request.app),
        deps,
        query.project_id,
        query.include_bots,
        allow_partial=query.allow_partial,
    ) as scans:
        persons = any(metric_needs_persons(d) for d in definitions.values())
        scan = await scans.open(start, end, with_persons=persons)
        tables: list[str] = []
        if query.cohort_persons is not None:
            scan.con.register(
                "metrics_cohort_persons",
                pa.table({"person_id": pa.array(list(query.cohort_persons), pa.string())}),
            )
            tables.append("metrics_cohort_persons")
        scope = EventScope(
            start=start,
            end=end,
            include_bots=query.include_bots,
            filters=query.filters,
            cohort_tables=tuple(tables),
        )
        con = scan.con
        result = await in_thread(
            lambda: run_custom_metrics(con, definitions, scope, buckets.bounds, query.breakdown)
        )
        tiers = [t.tier for t in scans.tiers()]
        missing = scans.missing_days()
    for key, values in result.values.items():
        cell = cell_of(cells, key)
        cell.custom.update(values)
    return tiers, missing
