"""Paths (user journeys within sessions) over `events_scan`, in DuckDB SQL.

Semantics (docs/analytics.md, "Paths"): a session's path is its pageviews (cleaned path) and/or
custom events (name), in time order, interactive events only, consecutive repeats of one node
collapsed. Sessions count when their first path event lies in [from, to) (their later events are
followed up to the project's session length past `to`). `start_point` cuts everything before
its first occurrence, `end_point` everything after its first occurrence (after the start), and
paths are cut to `steps` nodes (with only an end point: the last `steps` nodes up to it). Nodes
are step-indexed (`1_/pricing`); an edge's value is the number of paths taking that transition;
a node's drop-offs are the paths that ended there because the session did."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from libs.common.rollup_keys import NONE_VALUE
from libs.common.schemas.events_v1 import PAGEVIEW
from services.query.analyses.conditions import EventScope, check_regex, check_replacement
from services.query.analyses.requests import (
    CleaningRule,
    PathsRequest,
    check_choice,
    check_range,
)
from services.query.metric_query import SqlParams
from services.query.params import ParamError

EVENT_TYPES = ("pageview", "custom")
PER = ("session", "person")
MIN_STEPS, MAX_STEPS = 2, 20
MAX_EDGES = 1000
MAX_RULES = 50


@dataclass(frozen=True)
class PathsSpec:
    event_types: tuple[str, ...] = ("pageview",)
    steps: int = 5
    start_point: str | None = None
    end_point: str | None = None
    cleaning_rules: tuple[CleaningRule, ...] = ()
    edge_limit: int = 50
    per: str = "session"


def paths_spec(request: PathsRequest) -> PathsSpec:
    """Validate a paths request; a ParamError names the offending field."""
    types = tuple(dict.fromkeys(request.event_types))
    if not types:
        raise ParamError("event_types", f"name at least one of {', '.join(EVENT_TYPES)}")
    for i, kind in enumerate(types):
        if kind not in EVENT_TYPES:
            raise ParamError(
                f"event_types[{i}]", f"must be one of {', '.join(EVENT_TYPES)}, not {kind!r}"
            )
    check_range("steps", request.steps, MIN_STEPS, MAX_STEPS)
    check_range("edge_limit", request.edge_limit, 1, MAX_EDGES)
    if len(request.cleaning_rules) > MAX_RULES:
        raise ParamError("cleaning_rules", f"at most {MAX_RULES} rules")
    for i, rule in enumerate(request.cleaning_rules):
        if not rule.regex:
            raise ParamError(f"cleaning_rules[{i}].regex", "must not be empty")
        check_regex(f"cleaning_rules[{i}].regex", rule.regex)
        check_replacement(f"cleaning_rules[{i}].replacement", rule.regex, rule.replacement)
    for name in ("start_point", "end_point"):
        if getattr(request, name) == "":
            raise ParamError(name, "must not be empty")
    return PathsSpec(
        event_types=types,
        steps=request.steps,
        start_point=request.start_point,
        end_point=request.end_point,
        cleaning_rules=tuple(request.cleaning_rules),
        edge_limit=request.edge_limit,
        per=check_choice("per", request.per, PER),
    )


@dataclass(frozen=True)
class PathNode:
    step: int
    name: str
    count: int  # paths passing this node
    drop_offs: int  # paths whose session ended at this node


@dataclass(frozen=True)
class PathEdge:
    step: int  # of the source node
    source: str
    target: str
    value: int  # paths taking this transition


@dataclass(frozen=True)
class PathsResult:
    paths: int  # sessions, or persons with `per=person`
    persons: int
    nodes: list[PathNode]
    edges: list[PathEdge]
    edges_truncated: bool


def _strip_slashes(sql: str) -> str:
    """Trailing slashes ignored: `/docs/` is `/docs`, `/` stays `/`."""
    return f"coalesce(nullif(rtrim({sql}, '/'), ''), '/')"


def _cleaned_sql(spec: PathsSpec, params: SqlParams, sql: str) -> str:
    """A page path as its label: trailing slashes ignored, then the cleaning rules."""
    path = _strip_slashes(sql)
    for rule in spec.cleaning_rules:
        path = (
            f"regexp_replace({path}, {params.add(rule.regex)}, {params.add(rule.replacement)}, 'g')"
        )
    if spec.cleaning_rules:
        path = _strip_slashes(path)
    return path


def _point_sql(spec: PathsSpec, params: SqlParams, point: str) -> str:
    """A start or end point as a label: a page path (`/...`) normalised like the labels,
    so `/pricing/` finds `/pricing`; an event name as given."""
    value = params.add(point)
    return _cleaned_sql(spec, params, value) if point.startswith("/") else value


def _label_sql(spec: PathsSpec, params: SqlParams) -> str:
    path = _cleaned_sql(spec, params, "e.path")
    page_label = f"CASE WHEN coalesce(e.path, '') = '' THEN '{NONE_VALUE}' ELSE {path} END"
    pageview = params.add(PAGEVIEW)
    return f"CASE WHEN e.name = {pageview} THEN {page_label} ELSE e.name END"


def _type_sql(spec: PathsSpec, params: SqlParams) -> str:
    terms = []
    if "pageview" in spec.event_types:
        terms.append(f"e.name = {params.add(PAGEVIEW)}")
    if "custom" in spec.event_types:
        # Custom events are the ones without the reserved `$` prefix.
        terms.append("NOT starts_with(e.name, '$')")
    return "(" + " OR ".join(terms) + ")"


def run_paths(
    con: duckdb.DuckDBPyConnection,
    spec: PathsSpec,
    scope: EventScope,
    start: datetime,
    end: datetime,
    session_max: timedelta,
) -> PathsResult:
    """Paths of sessions whose first path event is in [start, end), on a connection holding
    `events_scan` over [start - session_max, end + session_max); with `per=person`, each
    person's path events in [start, end) across their sessions."""
    params = SqlParams()
    label = _label_sql(spec, params)
    if spec.per == "person":
        where = scope.where(params, start=start) + f" AND e.ts < {params.add(end)}"
        key = "e.person_id"
    else:
        where = scope.where(params, start=start - session_max) + " AND e.session_id IS NOT NULL"
        key = "e.session_id"
    kinds = _type_sql(spec, params)
    lo, hi = params.add(start), params.add(end)
    steps = spec.steps
    start_idx = "1"
    if spec.start_point is not None:
        start_idx = f"min(idx) FILTER (WHERE label = {_point_sql(spec, params, spec.start_point)})"
    end_idx = "NULL::BIGINT"  # (no end point: never read)
    end_point = _point_sql(spec, params, spec.end_point) if spec.end_point is not None else None
    if end_point is not None:
        # The first end point at or after the start point (a window over the session).
        end_idx = (
            f"min(idx) FILTER (WHERE label = {end_point} AND idx >= s) OVER (PARTITION BY n.sid)"
        )
    # The kept index range [lo, hi] of each session's deduplicated path.
    if spec.end_point is None:
        lo_sql, hi_sql, present = "s", f"least(total, s + {steps - 1})", "s IS NOT NULL"
    elif spec.start_point is None:
        lo_sql, hi_sql, present = f"greatest(1, en - {steps - 1})", "en", "en IS NOT NULL"
    else:
        lo_sql, hi_sql = "s", f"least(en, s + {steps - 1})"
        present = "s IS NOT NULL AND en IS NOT NULL"
    ends_sql = "idx = total" if spec.end_point is None else "false"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE path_nodes AS
        WITH ev AS (
            SELECT {key} AS sid, e.person_id AS pid, e.ts, e.event_id, {label} AS label
            FROM events_scan e
            WHERE {where} AND NOT e.non_interactive AND {kinds}
        ), started AS (
            SELECT * FROM ev WHERE sid IN (
                SELECT sid FROM ev GROUP BY sid HAVING min(ts) >= {lo} AND min(ts) < {hi})
        ), deduped AS (
            SELECT sid, pid, ts, event_id, label FROM (
                SELECT *, lag(label) OVER (PARTITION BY sid ORDER BY ts, event_id) AS prev
                FROM started
            ) WHERE prev IS DISTINCT FROM label
        ), numbered AS (
            SELECT sid, pid, label,
                   row_number() OVER (PARTITION BY sid ORDER BY ts, event_id) AS idx,
                   count(*) OVER (PARTITION BY sid) AS total
            FROM deduped
        ), starts AS (
            SELECT sid, {start_idx} AS s FROM numbered GROUP BY sid
        ), cut AS (
            SELECT n.*, st.s, {end_idx} AS en
            FROM numbered n JOIN starts st USING (sid)
        )
        SELECT sid, pid, label, idx - lo + 1 AS step, {ends_sql} AS ended
        FROM (
            SELECT *, {lo_sql} AS lo, {hi_sql} AS hi FROM cut WHERE {present}
        ) WHERE idx >= lo AND idx <= hi""",
        params.values,
    )
    paths, persons = con.execute(
        "SELECT count(DISTINCT sid), count(DISTINCT pid) FROM path_nodes"
    ).fetchone() or (0, 0)
    edges_all = con.execute(
        """SELECT step, label, next_label, count(*) AS value FROM (
               SELECT step, label, lead(label) OVER (PARTITION BY sid ORDER BY step) AS next_label
               FROM path_nodes)
           WHERE next_label IS NOT NULL
           GROUP BY step, label, next_label
           ORDER BY value DESC, step, label, next_label"""
    ).fetchall()
    node_rows = con.execute(
        """SELECT step, label, count(*), count(*) FILTER (WHERE ended)
           FROM path_nodes GROUP BY step, label ORDER BY step, count(*) DESC, label"""
    ).fetchall()
    con.execute("DROP TABLE path_nodes")
    kept = edges_all[: spec.edge_limit]
    edges = [PathEdge(step=s, source=a, target=b, value=v) for s, a, b, v in kept]
    shown = {(e.step, e.source) for e in edges} | {(e.step + 1, e.target) for e in edges}
    entries = [(s, name) for s, name, _, _ in node_rows if s == 1][: spec.edge_limit]
    shown |= set(entries)
    nodes = [
        PathNode(step=s, name=name, count=count, drop_offs=ended)
        for s, name, count, ended in node_rows
        if (s, name) in shown
    ]
    return PathsResult(
        paths=int(paths),
        persons=int(persons),
        nodes=nodes,
        edges=edges,
        edges_truncated=len(edges_all) > spec.edge_limit,
    )


def node_id(step: int, name: str) -> str:
    """A node's id: its step and name, as `2_/signup`."""
    return f"{step}_{name}"
