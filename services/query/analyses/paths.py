"""Paths (user journeys within sessions) over `events_scan`: DuckDB reads the path events once,
NumPy puts them in (session, ts, event id) order (`event_order`), and one vectorised pass
collapses repeats, cuts each session's path and counts nodes and edges.

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
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from libs.common.rollup_keys import NONE_VALUE
from libs.common.schemas.events_v1 import PAGEVIEW
from services.query.analyses.conditions import EventScope, check_regex, check_replacement
from services.query.analyses.event_order import EventOrder, in_event_order
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
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    table: pa.Table = con.sql(
        f"""SELECT {key} AS sid, e.person_id AS pid, epoch_us(e.ts) AS t, e.event_id AS eid,
                   {label} AS label
            FROM events_scan e
            WHERE {where} AND NOT e.non_interactive AND {kinds}""",
        params=params.values,
    ).to_arrow_table()
    events = in_event_order(table, key="sid", ts="t", event_id="eid")
    # The start and end points as labels, cleaned by the same rules as the nodes.
    points = SqlParams()
    named = [
        _point_sql(spec, points, point) if point is not None else "NULL::VARCHAR"
        for point in (spec.start_point, spec.end_point)
    ]
    # fetchall: a result left unfinished (fetchone) would block the next run's `con.sql`.
    ((start_label, end_label),) = con.execute(
        f"SELECT {', '.join(named)}", points.values
    ).fetchall()
    kept = session_paths(
        events, spec, _epoch_us(start), _epoch_us(end), start_label=start_label, end_label=end_label
    )
    return _summary(kept, spec)


def _epoch_us(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class KeptNodes:
    """The nodes of every counted path, in path order: session, person, label (codes into
    `labels`), step (1-based) and whether the path ended there because the session did."""

    session: npt.NDArray[np.int64]
    person: npt.NDArray[np.int64]
    label: npt.NDArray[np.int64]
    step: npt.NDArray[np.int64]
    ended: npt.NDArray[np.bool_]
    labels: list[str]


def _codes(column: pa.ChunkedArray) -> tuple[npt.NDArray[np.int64], list[Any]]:
    encoded = pc.dictionary_encode(column).combine_chunks()
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return codes, encoded.dictionary.to_pylist()


def _first_hit(
    hits: npt.NDArray[np.bool_], run: npt.NDArray[np.int64], idx: npt.NDArray[np.int64], runs: int
) -> npt.NDArray[np.int64]:
    """Per run, the smallest `idx` where `hits` holds, else 0 (rows come in run, idx order)."""
    first = np.zeros(runs, dtype=np.int64)
    rows = np.flatnonzero(hits)
    owners, at = np.unique(run[rows], return_index=True)
    first[owners] = idx[rows[at]]
    return first


def session_paths(
    events: EventOrder,
    spec: PathsSpec,
    start_us: int,
    end_us: int,
    *,
    start_label: str | None,
    end_label: str | None,
) -> KeptNodes:
    """One pass over path events in (session, ts, event id) order: keep the sessions whose
    first event is in [start_us, end_us), collapse repeats, cut at the start and end points
    and to `spec.steps` nodes."""
    n = events.table.num_rows
    person, _ = _codes(events.table["pid"])
    label, labels = _codes(events.table["label"])
    person, label = person[events.rows], label[events.rows]
    t = events.ints("t")
    # Sessions arrive grouped: a run starts where the key changes.
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = ~events.same_key
    run_starts = np.flatnonzero(new_run)
    run_of = np.cumsum(new_run, dtype=np.int64) - 1
    started = (t[run_starts] >= start_us) & (t[run_starts] < end_us)
    # Consecutive repeats of one node collapse into the first.
    keep = started[run_of] if n else np.zeros(0, dtype=bool)
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = ~new_run[1:] & (label[1:] == label[:-1])
    keep &= ~repeat
    rows = np.flatnonzero(keep)
    run, label, person = run_of[rows], label[rows], person[rows]
    first_row = np.ones(rows.size, dtype=bool)
    first_row[1:] = run[1:] != run[:-1]
    firsts = np.flatnonzero(first_row)
    idx = (
        np.arange(rows.size, dtype=np.int64)
        - np.repeat(firsts, np.diff(np.append(firsts, rows.size)))
        + 1
    )
    runs = int(run_of[-1]) + 1 if n else 0
    total = np.zeros(runs, dtype=np.int64)
    np.maximum.at(total, run, idx)
    code = {name: i for i, name in enumerate(labels)}
    steps = spec.steps
    if spec.start_point is None:
        s = np.where(total > 0, 1, 0)
    else:
        s = _first_hit(label == code.get(start_label, -1), run, idx, runs)
    if spec.end_point is not None:
        # The first end point at or after the start point.
        hit = (label == code.get(end_label, -1)) & (idx >= np.maximum(s, 1)[run])
        en = _first_hit(hit, run, idx, runs)
    if spec.end_point is None:
        lo, hi, present = s, np.minimum(total, s + steps - 1), s > 0
    elif spec.start_point is None:
        lo, hi, present = np.maximum(1, en - steps + 1), en, en > 0
    else:
        lo, hi, present = s, np.minimum(en, s + steps - 1), (s > 0) & (en > 0)
    inside = present[run] & (idx >= lo[run]) & (idx <= hi[run])
    ended = (idx == total[run]) if spec.end_point is None else np.zeros(idx.size, dtype=bool)
    return KeptNodes(
        session=run[inside],
        person=person[inside],
        label=label[inside],
        step=(idx - lo[run] + 1)[inside],
        ended=ended[inside],
        labels=[str(v) for v in labels],
    )


def _summary(kept: KeptNodes, spec: PathsSpec) -> PathsResult:
    """Counts of paths, persons, nodes and edges (ranked) from the kept nodes."""
    width = len(kept.labels) + 1
    names = kept.labels
    same = np.zeros(kept.session.size, dtype=bool)
    same[:-1] = kept.session[1:] == kept.session[:-1]
    sources = np.flatnonzero(same)
    edge_key = (kept.step[sources] * width + kept.label[sources]) * width + kept.label[sources + 1]
    keys, values = np.unique(edge_key, return_counts=True)
    edges_all = [
        (int(k // width // width), names[int(k // width % width)], names[int(k % width)], int(v))
        for k, v in zip(keys, values, strict=True)
    ]
    edges_all.sort(key=lambda e: (-e[3], e[0], e[1], e[2]))
    node_key = kept.step * width + kept.label
    node_keys, counts = np.unique(node_key, return_counts=True)
    ended_keys, ended_counts = np.unique(node_key[kept.ended], return_counts=True)
    ended_of = dict(zip(ended_keys.tolist(), ended_counts.tolist(), strict=True))
    node_rows = [
        (int(k // width), names[int(k % width)], int(c), int(ended_of.get(int(k), 0)))
        for k, c in zip(node_keys, counts, strict=True)
    ]
    node_rows.sort(key=lambda r: (r[0], -r[2], r[1]))
    kept_edges = edges_all[: spec.edge_limit]
    edges = [PathEdge(step=s, source=a, target=b, value=v) for s, a, b, v in kept_edges]
    shown = {(e.step, e.source) for e in edges} | {(e.step + 1, e.target) for e in edges}
    entries = [(s, name) for s, name, _, _ in node_rows if s == 1][: spec.edge_limit]
    shown |= set(entries)
    nodes = [
        PathNode(step=s, name=name, count=count, drop_offs=ended)
        for s, name, count, ended in node_rows
        if (s, name) in shown
    ]
    return PathsResult(
        paths=_distinct_runs(kept.session),
        persons=_distinct_codes(kept.person),
        nodes=nodes,
        edges=edges,
        edges_truncated=len(edges_all) > spec.edge_limit,
    )


def _distinct_runs(values: npt.NDArray[np.int64]) -> int:
    """Distinct values of a non-decreasing array (kept nodes come in session order)."""
    return int(np.count_nonzero(values[1:] != values[:-1])) + 1 if values.size else 0


def _distinct_codes(codes: npt.NDArray[np.int64]) -> int:
    """Distinct dictionary codes, in one pass (np.unique would sort or hash them)."""
    return int(np.count_nonzero(np.bincount(codes))) if codes.size else 0


def node_id(step: int, name: str) -> str:
    """A node's id: its step and name, as `2_/signup`."""
    return f"{step}_{name}"
