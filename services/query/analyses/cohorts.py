"""Saved cohorts: their definitions, validation, and membership (the person ids in a cohort,
as an Arrow table an analysis registers and filters on).

- behavioral: did `event` (with conditions) at least `min_count` times within a period
  (`from`/`to`, or the `last_days` before the evaluation);
- first_seen: the person's first_seen (from `persons`) within a period;
- person_property: traits (from identify calls) matching conditions;
- static: a fixed list of persons (typed in, or a funnel step's persons, snapshotted)."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import msgspec
import pyarrow as pa
from multidict import MultiDict

from services.query.analyses.conditions import (
    PERSON_PREFIX,
    cached_view,
    conditions_sql,
    event_match_sql,
    needs_persons,
)
from services.query.analyses.requests import Condition, EventMatch, FunnelRequest, check_range
from services.query.analyses.saved_definitions import COHORTS, SavedVersion, latest
from services.query.analyses.scans import RequestScans, in_thread
from services.query.dependencies import ApiError
from services.query.metric_query import SqlParams
from services.query.params import ParamError, TimeWindow, parse_timezone, parse_window

MAX_STATIC_PERSONS = 1_000_000
MAX_COHORT_FILTERS = 10


class CohortPeriod(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Absolute (`from`/`to`, read like the metrics endpoint's) or the `last_days` before the
    moment the cohort is evaluated."""

    from_: str | None = msgspec.field(name="from", default=None)
    to: str | None = None
    timezone: str | None = None
    last_days: int | None = None


class BehavioralCohort(
    CohortPeriod, tag_field="type", tag="behavioral", forbid_unknown_fields=True, kw_only=True
):
    event: str
    conditions: list[Condition] = []
    min_count: int = 1


class FirstSeenCohort(
    CohortPeriod, tag_field="type", tag="first_seen", forbid_unknown_fields=True, kw_only=True
):
    pass


class PersonPropertyCohort(
    msgspec.Struct, tag_field="type", tag="person_property", forbid_unknown_fields=True
):
    conditions: list[Condition]


class StaticCohort(
    msgspec.Struct, tag_field="type", tag="static", forbid_unknown_fields=True, kw_only=True
):
    person_ids: list[str] = []
    # A funnel whose `persons` page (step, status, breakdown_value) names the persons: they
    # are computed once, when the cohort version is saved.
    from_funnel: FunnelRequest | None = None


CohortDefinition = BehavioralCohort | FirstSeenCohort | PersonPropertyCohort | StaticCohort


class CohortBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """POST/PUT body of /api/v1/analytics/cohorts."""

    id: str | None = None  # POST only: a slug; generated when absent
    name: str
    description: str = ""
    definition: CohortDefinition


def _trait_conditions(conditions: list[Condition]) -> list[Condition]:
    """Person-property cohorts name traits bare (`plan`) or prefixed (`person.plan`)."""
    return [
        c
        if c.property.startswith(PERSON_PREFIX)
        else msgspec.structs.replace(c, property=PERSON_PREFIX + c.property)
        for c in conditions
    ]


def period_window(period: CohortPeriod, now: datetime, field: str) -> TimeWindow:
    """The period a behavioral or first-seen cohort looks at."""
    if period.last_days is not None:
        if period.from_ is not None or period.to is not None:
            raise ParamError(f"{field}.last_days", "give either last_days or from/to, not both")
        check_range(f"{field}.last_days", period.last_days, 1, 3660)
        zone: MultiDict[str] = MultiDict()
        if period.timezone is not None:
            zone["timezone"] = period.timezone
        try:
            tz = parse_timezone(zone)
        except ParamError as exc:
            raise ParamError(f"{field}.timezone", exc.problem) from None
        return TimeWindow(now - timedelta(days=period.last_days), now, tz)
    if period.from_ is None:
        raise ParamError(f"{field}.from", "give from (and optionally to) or last_days")
    query = MultiDict([("from", period.from_)])
    if period.to is not None:
        query["to"] = period.to
    if period.timezone is not None:
        query["timezone"] = period.timezone
    try:
        return parse_window(query, now)
    except ParamError as exc:
        raise ParamError(f"{field}.{exc.param}", exc.problem) from None


def validate_definition(definition: CohortDefinition, now: datetime) -> None:
    """400 for a definition that could never be evaluated (checked when it is saved)."""
    field = "definition"
    if isinstance(definition, BehavioralCohort):
        period_window(definition, now, field)
        check_range(f"{field}.min_count", definition.min_count, 1, 1_000_000)
        event_match_sql(field, EventMatch(definition.event, definition.conditions), SqlParams())
    elif isinstance(definition, FirstSeenCohort):
        period_window(definition, now, field)
    elif isinstance(definition, PersonPropertyCohort):
        if not definition.conditions:
            raise ParamError(f"{field}.conditions", "name at least one trait condition")
        conditions_sql(f"{field}.conditions", _trait_conditions(definition.conditions), SqlParams())
    elif definition.from_funnel is None and not definition.person_ids:
        raise ParamError(f"{field}.person_ids", "a static cohort needs person_ids or from_funnel")
    elif definition.from_funnel is not None and definition.person_ids:
        raise ParamError(f"{field}.from_funnel", "give person_ids or from_funnel, not both")
    elif len(definition.person_ids) > MAX_STATIC_PERSONS:
        raise ParamError(f"{field}.person_ids", f"at most {MAX_STATIC_PERSONS} persons")


def decode_definition(saved: SavedVersion) -> CohortDefinition:
    definition: CohortDefinition = msgspec.json.decode(
        saved.definition,
        type=CohortDefinition,
    )
    return definition


def _ids_table(ids: list[str]) -> pa.Table:
    return pa.table({"person_id": pa.array(ids, pa.string())})


async def cohort_members(
    scans: RequestScans, pool: asyncpg.Pool, saved: SavedVersion, now: datetime
) -> pa.Table:
    """The person ids (column `person_id`) in one saved cohort version, as of `now`."""
    definition = decode_definition(saved)
    if isinstance(definition, StaticCohort):
        rows = await pool.fetch(
            """SELECT person_id FROM analysis_cohort_persons
               WHERE project_id = $1 AND cohort_id = $2 AND version = $3""",
            scans.project_id,
            saved.id,
            saved.version,
        )
        return _ids_table([r["person_id"] for r in rows])
    params = SqlParams()
    if isinstance(definition, BehavioralCohort):
        window = period_window(definition, now, "definition")
        match = EventMatch(definition.event, definition.conditions)
        join = ""
        if needs_persons(definition.conditions):
            join = "LEFT JOIN persons pt ON pt.person_id = e.person_id"
        body = f"""e {join}
            WHERE {event_match_sql("definition", match, params)}
            GROUP BY e.person_id HAVING count(*) >= {params.add(definition.min_count)}"""
        scan = await scans.open(
            window.start, window.end, with_persons=needs_persons(definition.conditions)
        )
        # From memory when the column cache holds the days and the event's conditions name
        # only cached columns (an event name alone, a page path).
        view = cached_view(scan.cached_columns, "events_scan", f"e.person_id {body}")
        sql = f"SELECT e.person_id FROM {view} {body}"
    else:
        if isinstance(definition, FirstSeenCohort):
            window = period_window(definition, now, "definition")
            where = (
                f"pt.first_seen >= {params.add(window.start)}"
                f" AND pt.first_seen < {params.add(window.end)}"
            )
        else:
            where = conditions_sql(
                "definition.conditions", _trait_conditions(definition.conditions), params
            )
        sql = f"SELECT pt.person_id FROM persons pt WHERE {where}"
        # Only the persons table is read; the events range is a token second.
        scan = await scans.open(now - timedelta(seconds=1), now, with_persons=True)
    con = scan.con
    return await in_thread(lambda: con.sql(sql, params=params.values).to_arrow_table())


async def cohort_tables(
    scans: RequestScans,
    pool: asyncpg.Pool,
    cohort_ids: list[str],
    now: datetime,
) -> list[tuple[SavedVersion, pa.Table]]:
    """Each named cohort's latest version and members; 400 for an unknown cohort."""
    if len(cohort_ids) > MAX_COHORT_FILTERS:
        raise ParamError("cohorts", f"at most {MAX_COHORT_FILTERS} cohorts")
    out = []
    for i, cohort_id in enumerate(dict.fromkeys(cohort_ids)):
        try:
            saved = await latest(pool, COHORTS, scans.project_id, cohort_id)
        except ApiError as exc:
            if exc.status == 404:
                raise ParamError(f"cohorts[{i}]", f"unknown cohort {cohort_id!r}") from None
            raise
        out.append((saved, await cohort_members(scans, pool, saved, now)))
    return out
