"""Paths (user journeys within sessions) over `events_scan` (when the scan has integer person
keys, `events_scan_stored` per session, persons resolved for the counted nodes only, and
`events_scan_keyed` per person): DuckDB reads the path events once, NumPy puts them in (session, ts,
event id) order (`event_order`), and one vectorised pass collapses repeats, cuts each session's
path and counts nodes and edges.

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

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from libs.common.rollup_keys import NONE_VALUE
from libs.common.schemas.events_v1 import PAGEVIEW
from services.query.analyses.conditions import EventScope, check_regex, check_replacement
from services.query.analyses.event_order import (
    EventOrder,
    TiesNeedEventIds,
    in_event_order,
    run_key_codes,
)
from services.query.analyses.requests import (
    CleaningRule,
    PathsRequest,
    check_choice,
    check_range,
)
from services.query.metric_query import SqlParams
from services.query.params import ParamError
from services.query.person_keys import PERSON_KEY_ALIASES, resolved_person_keys

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


def _raw_label_sql(params: SqlParams) -> tuple[str, str]:
    """What a row's label is made from: the page path of a pageview (its name otherwise) and
    whether it is a pageview. Labels are then made once per distinct pair (`_row_labels`)."""
    pageview = params.add(PAGEVIEW)
    # The flag as a byte, not a BOOLEAN: Arrow holds booleans as bits, which DuckDB packs and
    # NumPy unpacks one by one; a byte column is handed over and read as it is.
    return (
        f"CASE WHEN e.name = {pageview} THEN e.path ELSE e.name END",
        f"(e.name = {pageview})::UTINYINT",
    )


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
    raw, page = _raw_label_sql(params)
    # Persons as integer keys (`events_scan_keyed`, aliases applied) when the scan has them
    # and no cohort filter needs their ids: persons are only grouped and counted.
    by_key = scope.person_keys and not scope.cohort_tables
    view, person = (
        ("events_scan_keyed", "e.person_key") if by_key else ("events_scan", "e.person_id")
    )
    if spec.per == "person":
        where = scope.where(params, start=start) + f" AND e.ts < {params.add(end)}"
        # The key is the person: no second copy of it (with keys, the stored key orders ties).
        columns = f"{person} AS sid" + (", e.stored_key AS pid" if by_key else "")
    else:
        where = scope.where(params, start=start - session_max) + " AND e.session_id IS NOT NULL"
        # Session ids come in runs (day files are sorted by person, then time): their hashes
        # let NumPy number them per run instead of per row (`run_key_codes`).
        if by_key:
            # The stored keys, no alias join: only the counted nodes' persons are resolved
            # (`_resolved_keys`), by a lookup in NumPy.
            view, person = "events_scan_stored", "e.alias_key AS ak, e.person_key"
        columns = f"e.session_id AS sid, hash(e.session_id) AS sh, {person} AS pid"
    kinds = _type_sql(spec, params)

    def read(ties: str) -> pa.Table:
        selected = f"{columns}, epoch_us(e.ts) AS t, {ties}, {raw} AS raw, {page} AS page"
        chosen = scope.view(view, f"{selected} {where} {kinds} e.non_interactive")
        table: pa.Table = con.sql(
            f"""SELECT {selected}
                FROM {chosen} e
                WHERE {where} AND NOT e.non_interactive AND {kinds}""",
            params=params.values,
        ).to_arrow_table()
        return table

    # With person keys, rows tied on (session or person, ts) are ordered by their position in
    # a day file claiming the tie order when they are all of one file and one stored key
    # (the views' tie columns): event ids are read only for PostgreSQL's rows and older
    # files, and for every row in the rare query with other ties (read again).
    # When every row has a position (no PostgreSQL rows, every file claiming the order), the
    # ids (`tie_id`, NULL throughout) are not read either: a NULL string column still costs
    # DuckDB an Arrow append per row.
    by_position = by_key
    ids_read = not (by_position and scope.ties_by_position)
    if not by_position:
        ties = "e.event_id AS eid"
    else:
        ties = "e.tie_row AS tr, e.tie_id AS eid" if ids_read else "e.tie_row AS tr"
    table = read(ties)
    codes = None if spec.per == "person" else run_key_codes(table["sid"], table["sh"])
    try:
        events = in_event_order(
            table,
            key="sid",
            ts="t",
            event_id="eid" if ids_read else None,
            codes=codes,
            tie_row="tr" if by_position else None,
            tie_run="pid" if by_position else None,
        )
    except TiesNeedEventIds:
        table = read("e.event_id AS eid")
        codes = None if spec.per == "person" else run_key_codes(table["sid"], table["sh"])
        events = in_event_order(table, key="sid", ts="t", event_id="eid", codes=codes)
    label_of_row, labels = _row_labels(con, spec, table)
    start_label, end_label = _point_labels(con, spec)
    kept = session_paths(
        events,
        np.take(label_of_row, events.rows),
        labels,
        spec,
        _epoch_us(start),
        _epoch_us(end),
        start_label=start_label,
        end_label=end_label,
    )
    if spec.per == "person":
        persons = kept.paths  # a path per person
    else:
        rows = events.rows[kept.position]
        if by_key:
            persons = _distinct_keys(_resolved_keys(con, table, rows))
        else:
            persons = _persons_of(table["pid"], rows)
    return _summary(kept, spec, persons)


def _resolved_keys(
    con: duckdb.DuckDBPyConnection, table: pa.Table, rows: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """The persons' keys of these rows of a table read from `events_scan_stored` (`ak`,
    `pid`: stored keys), aliases applied as `events_scan_keyed` applies them."""
    aliases = con.sql(f"SELECT device, person FROM {PERSON_KEY_ALIASES}").to_arrow_table()
    return resolved_person_keys(
        np.asarray(table["ak"].to_numpy(), dtype=np.int64)[rows],
        np.asarray(table["pid"].to_numpy(), dtype=np.int64)[rows],
        np.asarray(aliases["device"].to_numpy(), dtype=np.int64),
        np.asarray(aliases["person"].to_numpy(), dtype=np.int64),
    )


def _persons_of(person: pa.ChunkedArray, rows: npt.NDArray[np.int64]) -> int:
    """How many distinct persons these rows of the table hold."""
    if rows.size == 0:
        return 0
    if pa.types.is_integer(person.type):
        return _distinct_keys(np.asarray(person.to_numpy(), dtype=np.int64)[rows])
    # Person ids: rows of one person mostly come together (day files are sorted by person),
    # so only one id per run of equal ids holding a counted row is hashed.
    ids = person.combine_chunks()
    runs, run_heads = _person_runs(ids)
    counted = np.flatnonzero(np.bincount(runs[rows]))
    return int(pc.count_distinct(ids.take(pa.array(run_heads[counted])), mode="all").as_py())


def _distinct_keys(keys: npt.NDArray[np.int64]) -> int:
    """How many distinct person keys `keys` holds."""
    if keys.size == 0:
        return 0
    low = int(keys.min())
    span = int(keys.max()) - low + 1
    if span > max(4 * keys.size, 1 << 20):
        return int(np.unique(keys).size)
    # One flag per key of the span (a project's keys are dense).
    seen = np.zeros(span, dtype=bool)
    seen[keys - low] = True
    return int(np.count_nonzero(seen))


def _person_runs(ids: pa.Array) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each row's run of equal person ids in the rows' order, and each run's first row. Rows
    of one person mostly come together (day files are sorted by person), so only the
    runs' ids are hashed later, not every row's."""
    change = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        differs = pc.fill_null(pc.not_equal(ids[1:], ids[:-1]), True)
        change[1:] = differs.to_numpy(zero_copy_only=False)
    return np.cumsum(change, dtype=np.int64) - 1, np.flatnonzero(change)


def _row_labels(
    con: duckdb.DuckDBPyConnection, spec: PathsSpec, table: pa.Table
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Each row's label as a code into the returned labels, made once per distinct (value,
    is pageview) pair, not once per row."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64), []
    raw = pc.dictionary_encode(table["raw"].combine_chunks(), null_encoding="encode")
    page = np.asarray(table["page"].to_numpy(), dtype=np.int64)
    pair = np.asarray(raw.indices.to_numpy(zero_copy_only=False), dtype=np.int64) * 2 + page
    present = np.flatnonzero(np.bincount(pair))
    values: list[str | None] = raw.dictionary.take(pa.array(present // 2)).to_pylist()
    is_page = (present % 2 == 1).tolist()
    if spec.cleaning_rules:
        named = _cleaned_labels(con, spec, values, is_page)
    else:
        named = [_page_label(v) if p else str(v) for v, p in zip(values, is_page, strict=True)]
    # Pairs that clean to one label (`/docs/` and `/docs`) share its code.
    code: dict[str, int] = {}
    pair_label = np.zeros(pair.max() + 1, dtype=np.int64)
    pair_label[present] = [code.setdefault(label, len(code)) for label in named]
    return np.take(pair_label, pair), list(code)


def _page_label(path: str | None) -> str:
    """A page path's label without cleaning rules (as `_label_sql` makes it)."""
    if not path:
        return NONE_VALUE
    return path.rstrip("/") or "/"


def _cleaned_labels(
    con: duckdb.DuckDBPyConnection, spec: PathsSpec, values: list[str | None], is_page: list[bool]
) -> list[str]:
    """The labels of (value, is pageview) pairs by the label SQL: the cleaning rules are RE2
    expressions, run by DuckDB's `regexp_replace`."""
    pairs = pa.table(
        {
            "i": pa.array(range(len(values)), pa.int64()),
            "name": pa.array([PAGEVIEW if p else v for v, p in zip(values, is_page, strict=True)]),
            "path": pa.array(
                [v if p else None for v, p in zip(values, is_page, strict=True)], pa.string()
            ),
        }
    )
    params = SqlParams()
    con.register("strata_path_labels", pairs)
    try:
        named: pa.Table = con.sql(
            f"SELECT {_label_sql(spec, params)} FROM strata_path_labels e ORDER BY i",
            params=params.values,
        ).to_arrow_table()
    finally:
        con.unregister("strata_path_labels")
    return [str(v) for v in named.column(0).to_pylist()]


def _point_labels(con: duckdb.DuckDBPyConnection, spec: PathsSpec) -> tuple[str | None, str | None]:
    """The start and end points as labels, cleaned by the same rules as the nodes."""
    if spec.start_point is None and spec.end_point is None:
        return None, None
    points = SqlParams()
    named = [
        _point_sql(spec, points, point) if point is not None else "NULL::VARCHAR"
        for point in (spec.start_point, spec.end_point)
    ]
    # fetchall: a result left unfinished (fetchone) would block the next run's `con.sql`.
    ((start_label, end_label),) = con.execute(
        f"SELECT {', '.join(named)}", points.values
    ).fetchall()
    return start_label, end_label


def _epoch_us(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class KeptNodes:
    """The nodes of every counted path, in path order: the node's position in the event
    order, its label (codes into `labels`), its step (1-based) and whether the path ended
    there because the session did; and how many paths were counted."""

    position: npt.NDArray[np.int64]
    label: npt.NDArray[np.int64]
    step: npt.NDArray[np.int64]
    ended: npt.NDArray[np.bool_]
    paths: int
    labels: list[str]


def _first_at(
    hits: npt.NDArray[np.bool_],
    path: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    paths: int,
) -> npt.NDArray[np.int64]:
    """Per path, the smallest `idx` where `hits` holds, else 0 (rows come in path, idx
    order, so a path's first hit is the first of its hits)."""
    first = np.zeros(paths, dtype=np.int64)
    rows = np.flatnonzero(hits)
    owner = path[rows]
    leads = np.ones(rows.size, dtype=bool)
    leads[1:] = owner[1:] != owner[:-1]
    first[owner[leads]] = idx[rows[leads]]
    return first


def session_paths(
    events: EventOrder,
    label: npt.NDArray[np.int64],
    labels: list[str],
    spec: PathsSpec,
    start_us: int,
    end_us: int,
    *,
    start_label: str | None,
    end_label: str | None,
) -> KeptNodes:
    """One pass over path events in (session, ts, event id) order (`label`: a code per
    position of that order): keep the sessions whose first event is in [start_us, end_us),
    collapse repeats, cut at the start and end points and to `spec.steps` nodes."""
    n = events.t.size
    empty = np.zeros(0, dtype=np.int64)
    nothing = KeptNodes(empty, empty, empty, np.zeros(0, dtype=bool), 0, labels)
    if n == 0:
        return nothing
    # Sessions arrive grouped: one starts where the key changes. Whether it counts is asked
    # once per session (of its first event's time) and spread to its rows by one repeat.
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.logical_not(events.same_key, out=new[1:])
    heads = np.flatnonzero(new)
    first_t = events.t[heads]
    keep = np.repeat((first_t >= start_us) & (first_t < end_us), np.diff(heads, append=n))
    # Consecutive repeats of a node collapse (a session's first row always stays).
    keep[1:] &= new[1:] | (label[1:] != label[:-1])
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        return nothing
    # Each kept session is now a path of `total` nodes numbered 1.. (idx).
    first = new[rows]
    heads = np.flatnonzero(first)
    total = np.diff(heads, append=rows.size)
    idx = np.arange(1, rows.size + 1, dtype=np.int64) - np.repeat(heads, total)
    last = np.empty(rows.size, dtype=bool)
    last[-1] = True
    last[:-1] = first[1:]
    steps = spec.steps
    paths = heads.size
    if spec.start_point is None and spec.end_point is None:
        # Every path from its first node: the cut is the first `steps` nodes.
        inside = np.flatnonzero(idx <= steps)
        at = rows[inside]
        return KeptNodes(at, label[at], idx[inside], last[inside], paths, labels)
    label = label[rows]
    path = np.repeat(np.arange(paths, dtype=np.int64), total)
    code: dict[str | None, int] = {name: i for i, name in enumerate(labels)}
    if spec.start_point is None:
        s = np.ones(paths, dtype=np.int64)
    else:
        s = _first_at(label == code.get(start_label, -1), path, idx, paths)
    if spec.end_point is not None:
        # The first end point at or after the start point.
        hit = (label == code.get(end_label, -1)) & (idx >= np.maximum(s, 1)[path])
        en = _first_at(hit, path, idx, paths)
    if spec.end_point is None:
        lo, hi, present = s, np.minimum(total, s + steps - 1), s > 0
    elif spec.start_point is None:
        lo, hi, present = np.maximum(1, en - steps + 1), en, en > 0
    else:
        lo, hi, present = s, np.minimum(en, s + steps - 1), (s > 0) & (en > 0)
    inside = np.flatnonzero(present[path] & (idx >= lo[path]) & (idx <= hi[path]))
    step = idx[inside] - lo[path[inside]] + 1
    # With an end point, paths end at it by construction: no drop-offs.
    ended = last[inside] if spec.end_point is None else np.zeros(inside.size, dtype=bool)
    kept = int(np.count_nonzero(present))
    return KeptNodes(rows[inside], label[inside], step, ended, kept, labels)


def _counted(keys: npt.NDArray[np.int64], possible: int) -> tuple[list[int], list[int]]:
    """The distinct keys (ascending, each below `possible`) and how often each occurs."""
    # One counter per possible key while they are few next to the keys (labels are usually
    # a few dozen); else a sort.
    if possible <= max(4 * keys.size, 1 << 16):
        counts = np.bincount(keys, minlength=possible)
        found = np.flatnonzero(counts)
        return found.tolist(), counts[found].tolist()
    found, counts = np.unique(keys, return_counts=True)
    return found.tolist(), counts.tolist()


def _summary(kept: KeptNodes, spec: PathsSpec, persons: int) -> PathsResult:
    """Counts of paths, nodes and edges (ranked) from the kept nodes."""
    width = len(kept.labels) + 1
    names = kept.labels
    steps = spec.steps + 1
    node_key = kept.step * width + kept.label
    # A node's path goes on to the next node when that one is the next step (a path starts
    # at step 1, so a next path's first node never is).
    sources = np.flatnonzero(kept.step[1:] == kept.step[:-1] + 1)
    edge_key = node_key[sources] * width + kept.label[sources + 1]
    keys, values = _counted(edge_key, steps * width * width)
    edges_all = [
        (k // width // width, names[k // width % width], names[k % width], v)
        for k, v in zip(keys, values, strict=True)
    ]
    edges_all.sort(key=lambda e: (-e[3], e[0], e[1], e[2]))
    node_keys, counts = _counted(node_key, steps * width)
    ended_keys, ended_counts = _counted(node_key[kept.ended], steps * width)
    ended_of = dict(zip(ended_keys, ended_counts, strict=True))
    node_rows = [
        (k // width, names[k % width], c, ended_of.get(k, 0))
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
        paths=kept.paths,
        persons=persons,
        nodes=nodes,
        edges=edges,
        edges_truncated=len(edges_all) > spec.edge_limit,
    )


def node_id(step: int, name: str) -> str:
    """A node's id: its step and name, as `2_/signup`."""
    return f"{step}_{name}"
