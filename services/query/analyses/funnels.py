"""Funnels over `events_scan`: DuckDB reads the funnel's events once, NumPy sorts them
(event_order.py), and each order's strategy (funnel_orders.py) finds every attempt's steps in
vectorised passes over that sorted stream, never a Python loop over events.

Semantics (docs/analytics.md, "Funnels"):
- A person's events are taken in the order (ts, first step the event satisfies, event_id): at
  one timestamp, step events come in step order, so two different steps there count as in order.
- Every first-step event inside [from, to) starts an attempt whose window ends at its time plus
  the window (a fixed duration, inclusive).
- ordered: step k is the first later event satisfying it within the window; strict: the very
  next event of the person's interactive sequence must satisfy it; unordered: an attempt starts
  at any step's event and completes every step with an event in its window, each event
  crediting one step. A step identical to the step it repeats needs a strictly later timestamp.
- An exclusion event strictly between the times of its two steps of an attempt (or, when the
  attempt never reached the second, after the first and inside the window) removes the person.
- A person counts once, at the furthest step of their best attempt (the earliest attempt that
  got furthest), with that attempt's times and breakdown value.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from services.query.analyses.cached_rows import funnel_rows
from services.query.analyses.conditions import (
    ANY_EVENT,
    NON_ACTION_EVENTS,
    EventScope,
    breakdown_sql,
    conditions_sql,
    event_match_sql,
    named_columns,
    needs_persons,
    property_ref,
)
from services.query.analyses.event_order import (
    EventOrder,
    Ints,
    TiesNeedEventIds,
    in_event_order,
    key_codes,
)
from services.query.analyses.funnel_orders import (
    ORDER_STRATEGIES,
    BestAttempts,
    EventStream,
    FunnelShape,
)
from services.query.analyses.requests import (
    EventMatch,
    FunnelRequest,
    FunnelStep,
    PersonsPage,
    TimeToConvertSpec,
    check_choice,
    check_range,
)
from services.query.metric_query import SqlParams
from services.query.params import ParamError
from services.query.person_keys import PERSON_KEY_ALIASES, PersonKeyResolver

ORDERS = ("ordered", "strict", "unordered")
WINDOW_UNITS: dict[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "week": 7 * 86_400,
    "month": 30 * 86_400,  # a fixed 30 days: calendar months differ in length
}
MAX_WINDOW_S = 366 * 86_400
PERSON_STATUSES = ("converted", "dropped")
MIN_STEPS, MAX_STEPS = 2, 20
MAX_EXCLUSIONS = 20
MAX_PERSONS_PAGE = 10_000
_US = 1_000_000


@dataclass(frozen=True)
class Exclusion:
    match: EventMatch
    from_step: int  # 1-based
    to_step: int


@dataclass(frozen=True)
class FunnelSpec:
    """A validated funnel definition."""

    steps: tuple[FunnelStep, ...]
    order: str = "ordered"
    window_s: int = 14 * 86_400
    exclusions: tuple[Exclusion, ...] = ()
    breakdown: str | None = None
    breakdown_limit: int = 25

    @property
    def n(self) -> int:
        return len(self.steps)


def identical(a: EventMatch, b: EventMatch) -> bool:
    """Same event with the same conditions (in any order)."""
    if a.event != b.event:
        return False

    def key(match: EventMatch) -> list[bytes]:
        return sorted(msgspec.json.encode(c) for c in match.conditions)

    return key(a) == key(b)


def funnel_spec(request: FunnelRequest) -> FunnelSpec:
    """Validate a request's funnel definition; a ParamError names the offending field."""
    if not MIN_STEPS <= len(request.steps) <= MAX_STEPS:
        raise ParamError(
            "steps", f"a funnel has {MIN_STEPS} to {MAX_STEPS} steps, not {len(request.steps)}"
        )
    order = check_choice("order", request.order, ORDERS)
    unit_s = WINDOW_UNITS.get(request.window.unit)
    if unit_s is None:
        raise ParamError(
            "window.unit", f"must be one of {', '.join(WINDOW_UNITS)}, not {request.window.unit!r}"
        )
    window_s = request.window.value * unit_s
    if request.window.value < 1 or window_s > MAX_WINDOW_S:
        raise ParamError("window.value", "the window must be from 1 second to 366 days")
    n = len(request.steps)
    if len(request.exclusions) > MAX_EXCLUSIONS:
        # Each exclusion is one bit of a 64-bit mask per event.
        raise ParamError("exclusions", f"at most {MAX_EXCLUSIONS} exclusions")
    exclusions = []
    for i, x in enumerate(request.exclusions):
        to_step = n if x.to_step is None else x.to_step
        check_range(f"exclusions[{i}].from_step", x.from_step, 1, n - 1)
        check_range(f"exclusions[{i}].to_step", to_step, x.from_step + 1, n)
        exclusions.append(Exclusion(EventMatch(x.event, x.conditions), x.from_step, to_step))
    if exclusions and order == "unordered":
        raise ParamError("exclusions", "exclusions need an ordered or strict funnel")
    check_range("breakdown_limit", request.breakdown_limit, 1, 1000)
    conversion = request.time_to_convert
    check_time_to_convert(conversion.from_step, conversion.to_step, conversion.bins, n)
    return FunnelSpec(
        steps=tuple(request.steps),
        order=order,
        window_s=window_s,
        exclusions=tuple(exclusions),
        breakdown=request.breakdown,
        breakdown_limit=request.breakdown_limit,
    )


def check_persons_page(page: PersonsPage, n: int) -> None:
    check_choice("persons.status", page.status, PERSON_STATUSES)
    check_range("persons.step", page.step, 2 if page.status == "dropped" else 1, n)
    check_range("persons.limit", page.limit, 1, MAX_PERSONS_PAGE)
    if page.cursor is not None:
        decode_cursor(page.cursor)


def encode_cursor(person_id: str) -> str:
    return base64.urlsafe_b64encode(person_id.encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ParamError("persons.cursor", "not a cursor this API returned") from None


# ---------------------------------------------------------------------------------------------
# Engine


@dataclass(frozen=True)
class StepStats:
    count: int
    median_s: float | None
    avg_s: float | None


@dataclass(frozen=True)
class FunnelCounts:
    """Per step (index 0 = step 1): persons reaching it and the times from the step before."""

    steps: list[StepStats]


@dataclass(frozen=True)
class ConversionBin:
    from_s: float  # inclusive
    to_s: float  # exclusive, except the last bin's
    persons: int


@dataclass(frozen=True)
class TimeToConvert:
    """How long the persons who reached `to_step` took from `from_step` (their best attempt)."""

    from_step: int
    to_step: int
    persons: int
    avg_s: float | None
    median_s: float | None
    bins: list[ConversionBin]


MAX_TIME_BINS = 90
AUTO_TIME_BINS = 60


def check_time_to_convert(from_step: int, to_step: int | None, bins: int | None, n: int) -> None:
    check_range("time_to_convert.from_step", from_step, 1, n - 1)
    if to_step is not None:
        check_range("time_to_convert.to_step", to_step, from_step + 1, n)
    if bins is not None:
        check_range("time_to_convert.bins", bins, 1, MAX_TIME_BINS)


@dataclass(frozen=True)
class FunnelResult:
    total: FunnelCounts
    breakdown: list[tuple[str, FunnelCounts]]  # ranked by step-1 persons, at most the limit
    breakdown_truncated: bool
    persons: list[str] | None = None
    next_cursor: str | None = None
    time_to_convert: TimeToConvert | None = None


def _steps_by_name_sql(steps: Sequence[FunnelStep], params: SqlParams) -> tuple[str, str] | None:
    """(the step bit mask, whether the event is any step's) with the event's name compared
    once per distinct name, not once per step (DuckDB evaluates a CASE on the name faster than
    an OR of every step's match); None when a step names no event or any event."""
    by_name: dict[str, list[tuple[int, FunnelStep]]] = {}
    for k, step in enumerate(steps):
        if not step.event or step.event == ANY_EVENT:
            return None
        by_name.setdefault(step.event, []).append((k, step))
    branches, plain, conditioned = [], [], []
    for name, named in by_name.items():
        bits = sum(1 << k for k, step in named if not step.conditions)
        terms = [str(bits)] if bits else []
        tests = []
        for k, step in named:
            if step.conditions:
                # A step's conditions only ever sit in CASE WHEN and OR-ed WHERE terms, so
                # positive ones skip their coalesce (NULL is not-matched there): -8 % read.
                test = conditions_sql(
                    f"steps[{k}].conditions", step.conditions, params, in_filter=True
                )
                terms.append(f"(CASE WHEN {test} THEN {1 << k} ELSE 0 END)")
                tests.append(f"({test})")
        name_sql = params.add(name)
        branches.append(f"WHEN {name_sql} THEN {' | '.join(terms)}")
        if bits:
            plain.append(name_sql)
        else:
            conditioned.append(f"(e.name = {name_sql} AND ({' OR '.join(tests)}))")
    mask = f"CASE e.name {' '.join(branches)} ELSE 0 END"
    if plain:
        conditioned.insert(0, f"e.name IN ({', '.join(plain)})")
    return mask, " OR ".join(conditioned)


@dataclass(frozen=True)
class MergedAttempts:
    """Best attempts found in person parts (stream_parts.py), side by side in person order: the
    order one unsplit stream gives them, so every answer is the unsplit one to the bit."""

    reached: Ints
    times: Ints  # (persons, n)
    parts: tuple[BestAttempts, ...]

    @classmethod
    def of(cls, parts: Sequence[BestAttempts]) -> MergedAttempts:
        return cls(
            reached=np.concatenate([b.reached for b in parts]),
            times=np.concatenate([b.times for b in parts]),
            parts=tuple(parts),
        )

    def table(self) -> pa.Table:
        """(pid, reached, t1..tn, bd) as `BestAttempts.table`."""
        return pa.concat_tables([b.table() for b in self.parts])


def first_step(mask: npt.NDArray[np.integer[Any]], n: int) -> Ints:
    """Per event, the first step it satisfies (0-based; `n`: none), which orders events of
    one person and ts: step events in step order, the others after them."""
    if mask.dtype in (np.uint8, np.uint16):
        # One- and two-byte masks (read from the column cache): a gather from every value's
        # answer.
        every = np.arange(1 << (8 * mask.dtype.itemsize), dtype=np.int64)
        return np.take(first_step(every, n), mask)
    mask = mask.astype(np.int64, copy=False)
    # The lowest set bit's index is the count of bits below it (no bit: 64, above any step).
    # (Unsigned: NumPy counts the bits of a negative number's absolute value.)
    below = np.asarray(np.bitwise_count(((mask & -mask) - 1).view(np.uint64)), dtype=np.int64)
    return np.minimum(below, n)


def _marked(table: pa.Table) -> pa.Table:
    """The rows of a stream read by event name alone (`FunnelQuery.filters_by_name`) that
    some step or exclusion matches: a bit in `mask` or `xmask`."""
    # (Before the chunks are combined: only the kept rows are copied into one.)
    marked = pc.not_equal(table["mask"], 0)
    if "xmask" in table.column_names:
        marked = pc.or_(marked, pc.not_equal(table["xmask"], 0))
    return table.filter(marked)


def _resolver(con: duckdb.DuckDBPyConnection) -> PersonKeyResolver:
    """(alias keys, stored person keys) -> the persons' keys as `events_scan_keyed` gives them
    (aliases applied), by the scan's aliases. One lookup in NumPy costs less than DuckDB's
    hash join of every row with the aliases."""
    aliases = con.sql(f"SELECT device, person FROM {PERSON_KEY_ALIASES}").to_arrow_table()
    devices = np.asarray(aliases["device"].to_numpy(), dtype=np.int64)
    persons = np.asarray(aliases["person"].to_numpy(), dtype=np.int64)
    return PersonKeyResolver(devices, persons)


def _resolved(con: duckdb.DuckDBPyConnection, table: pa.Table) -> pa.Table:
    """A stream read from `events_scan_stored` (`ak`, `pid`: the stored keys) with `pid` the
    person's key as `events_scan_keyed` gives it (aliases applied) and `ak` dropped."""
    keys = _resolver(con)(
        np.asarray(table["ak"].to_numpy(), dtype=np.int64),
        np.asarray(table["pid"].to_numpy(), dtype=np.int64),
    )
    at = table.schema.get_field_index("pid")
    return table.set_column(at, "pid", pa.array(keys)).drop_columns(["ak"])


def breakdown_sql_needs_persons(breakdown: str) -> bool:
    return property_ref("breakdown", breakdown).needs_persons


class FunnelQuery:
    """Builds and runs one funnel's SQL on a scan connection. Temp tables are named with
    `prefix`, so an experiment can run several funnels on one connection."""

    def __init__(
        self,
        spec: FunnelSpec,
        scope: EventScope,
        prefix: str = "funnel",
        *,
        lists_persons: bool = True,
    ) -> None:
        self.spec = spec
        self.scope = scope
        # Persons as integer keys (`events_scan_keyed`) when the scan has them and nothing
        # needs their ids: no persons page (`lists_persons`), person property, cohort or floor.
        self.by_key = (
            scope.person_keys
            and not lists_persons
            and not scope.cohort_tables
            and not any(needs_persons(s.conditions) for s in spec.steps)
            and not any(needs_persons(x.match.conditions) for x in spec.exclusions)
            and not (spec.breakdown is not None and breakdown_sql_needs_persons(spec.breakdown))
        )
        self.persons = f"{prefix}_persons"
        self.window_us = spec.window_s * _US
        steps = spec.steps
        # Whether step k (0-based) repeats step k-1 exactly (ordered/strict), or the latest
        # identical earlier step (unordered): it then needs a strictly later timestamp.
        self.repeats_previous = [k > 0 and identical(steps[k], steps[k - 1]) for k in range(spec.n)]
        self._best: BestAttempts | MergedAttempts | None = None
        self._table: str | None = None

    # -- events ---------------------------------------------------------------------------

    def stream_sql(
        self, params: SqlParams, floor_table: str | None = None, *, event_ids: bool = True
    ) -> str:
        """The funnel's events with their step and exclusion bit masks, unsorted: NumPy puts
        them in (person, ts, first step satisfied, event id) order (`in_event_order`). Only the
        columns the funnel uses are read: `eid` with `event_ids`, `xmask` with exclusions,
        `in_sequence` for a strict funnel, `bd` with a breakdown, `floor` with a floor table."""
        spec = self.spec
        joins_persons = any(needs_persons(step.conditions) for step in spec.steps)
        masks, matches, excluding = self._masks(params)
        joins_persons |= any(needs_persons(x.match.conditions) for x in spec.exclusions)
        names_only = self.filters_by_name(floor_table)
        by_key = self.by_key and floor_table is None
        # By key: the stored keys (`events_scan_stored`, no alias join in DuckDB); NumPy
        # resolves them through the aliases as `events_scan_keyed` would (`_resolved`).
        person = "e.alias_key AS ak, e.person_key AS pid" if by_key else "e.person_id AS pid"
        columns = [person, "epoch_us(e.ts) AS t"]
        if event_ids:
            columns.append("e.event_id AS eid")
        if spec.breakdown is not None:
            bd, bd_persons = breakdown_sql("breakdown", spec.breakdown, params)
            joins_persons |= bd_persons
        where = self.scope.where(params)
        # The rows kept: the events the funnel uses. The conditions are spelled out rather
        # than `mask <> 0` on the computed mask, which DuckDB would compute twice, once to
        # filter and once to return. Every step and exclusion match names its event, so no
        # separate `e.name IN (...)` prefilter: it only repeated the name tests (-8 % read).
        if spec.order == "strict":
            # The strict sequence: every interactive action of the person.
            names = ", ".join(params.add(name) for name in NON_ACTION_EVENTS)
            in_sequence = f"(NOT e.non_interactive AND e.name NOT IN ({names}))"
            columns.append(f"CASE WHEN {in_sequence} THEN {masks} ELSE 0 END AS mask")
            selects = [in_sequence]
        else:
            columns.append(f"{masks} AS mask")
            selects = matches
        if excluding:
            xmasks = (
                f"(CASE WHEN {match} THEN {1 << i} ELSE 0 END)" for i, match in enumerate(excluding)
            )
            columns.append(f"{' | '.join(xmasks)} AS xmask")
        if spec.order == "strict":
            columns.append(f"{in_sequence} AS in_sequence")
        if spec.breakdown is not None:
            columns.append(f"{bd} AS bd")
        joins = "LEFT JOIN persons pt ON pt.person_id = e.person_id" if joins_persons else ""
        if floor_table is not None:
            joins += f" LEFT JOIN {floor_table} f ON f.pid = e.person_id"
            columns.append("f.t_floor AS floor")
        kept = [*selects, *excluding]
        rows = kept[0] if len(kept) == 1 else " OR ".join(f"({t})" for t in kept)
        if names_only:
            # Rows of the funnel's event names only, which DuckDB tests in the day files'
            # reader; the steps' and exclusions' conditions are left to the masks, and NumPy
            # drops the rows neither mask marks (`_marked`): the conditions are evaluated
            # once per row instead of twice (-12 % of the read's instructions).
            named = {step.event for step in spec.steps} | {x.match.event for x in spec.exclusions}
            rows = f"e.name IN ({', '.join(params.add(name) for name in sorted(named))})"
        if by_key and joins_persons:
            raise RuntimeError("a funnel reading persons' traits resolves persons by id")
        selected = ", ".join(columns)
        view = "events_scan_stored" if by_key else "events_scan"
        view = self.scope.view(view, f"{selected} {joins} {where} {rows}")
        return f"""
            SELECT {selected}
            FROM {view} e {joins}
            WHERE {where} AND ({rows})"""

    def _masks(self, params: SqlParams) -> tuple[str, list[str], list[str]]:
        """The SQL of each event's step bit mask, of the matches that keep a row for a step,
        and of each exclusion's match."""
        spec = self.spec
        by_name = _steps_by_name_sql(spec.steps, params)
        if by_name is None:
            matches = [
                event_match_sql(f"steps[{k}]", step, params, in_filter=True)
                for k, step in enumerate(spec.steps)
            ]
            masks = " | ".join(
                f"(CASE WHEN {match} THEN {1 << k} ELSE 0 END)" for k, match in enumerate(matches)
            )
        else:
            masks, step_events = by_name
            matches = [step_events]
        excluding = [
            event_match_sql(f"exclusions[{i}]", x.match, params)
            for i, x in enumerate(spec.exclusions)
        ]
        return masks, matches, excluding

    def _cached_stream(self, con: duckdb.DuckDBPyConnection) -> pa.Table | None:
        """The stream as `stream_sql` without event ids gives it, marked rows only, read from
        the scan's in-memory tables (cached_rows.py), when every row of the scan is in one
        and the funnel reads nothing else: persons by key, steps and exclusions by
        event name and page path only, no breakdown, filters or cohorts. None otherwise."""
        scope, spec = self.scope, self.spec
        if (
            scope.cached_rows is None
            or not self.by_key
            or not self.filters_by_name()
            or scope.filters.by_dimension
            or scope.cohort_tables
        ):
            return None
        params = SqlParams()
        masks, _, excluding = self._masks(params)
        selects = [f"{masks} AS mask"]
        if excluding:
            xmasks = (
                f"(CASE WHEN {match} THEN {1 << i} ELSE 0 END)" for i, match in enumerate(excluding)
            )
            selects.append(f"{' | '.join(xmasks)} AS xmask")
        sql = ", ".join(selects)
        named = set(named_columns(sql))
        if not named <= {"name", "path"}:
            return None
        names = [step.event for step in spec.steps] + [x.match.event for x in spec.exclusions]
        return funnel_rows(
            con,
            scope.cached_rows,
            start=scope.start,
            end=scope.end,
            include_bots=scope.include_bots,
            names=[name for name in names if name],
            uses_path="path" in named,
            masks_sql=sql,
            params=params.values,
            resolve=_resolver(con),
            threads=scope.threads,
            min_rows=scope.part_min_events,
        )

    def filters_by_name(self, floor_table: str | None = None) -> bool:
        """Whether the stream's query keeps rows by event name alone, leaving the rows no step
        or exclusion matches for NumPy to drop (`_marked`): when every step and exclusion
        names its event and the rows carry nothing costly per row (no person join, breakdown
        or floor), which the rows matching no step would otherwise pay for too. A strict
        funnel reads its whole interactive sequence anyway."""
        spec = self.spec
        matches = [*spec.steps, *(x.match for x in spec.exclusions)]
        return (
            spec.order != "strict"
            and floor_table is None
            and spec.breakdown is None
            and all(m.event and m.event != ANY_EVENT for m in matches)
            and not any(needs_persons(m.conditions) for m in matches)
        )

    def shape(self) -> FunnelShape:
        spec = self.spec
        steps = spec.steps
        return FunnelShape(
            n=spec.n,
            window_us=self.window_us,
            repeats_previous=tuple(self.repeats_previous),
            identical_before=tuple(
                tuple(j for j in range(k) if identical(steps[j], steps[k])) for k in range(spec.n)
            ),
            same_name_before=tuple(
                tuple(
                    j
                    for j in range(k)
                    if steps[j].event == steps[k].event and not identical(steps[j], steps[k])
                )
                for k in range(spec.n)
            ),
            exclusions=tuple((i, x.from_step, x.to_step) for i, x in enumerate(spec.exclusions)),
        )

    # -- running --------------------------------------------------------------------------

    def prepare(
        self,
        con: duckdb.DuckDBPyConnection,
        start_us: int,
        end_us: int,
        floor_table: str | None = None,
    ) -> None:
        """Find every non-excluded person with an attempt starting in [start_us, end_us) (and
        at or after their `floor_table.t_floor` when given), at their best attempt: (pid,
        reached, t1..tn, bd), kept in memory for `counts` and `time_to_convert` and as the temp
        table `persons_table` names once asked for."""
        # Event ids only order events tied on (person, ts, step) that differ in something the
        # funnel reads; equal ones are interchangeable. Reading the ids costs about a fifth of
        # the read, so the rows are read without them, and again with them only when such
        # ties exist.
        try:
            best = self._best_attempts(con, start_us, end_us, floor_table, event_ids=False)
        except TiesNeedEventIds:
            best = self._best_attempts(con, start_us, end_us, floor_table, event_ids=True)
        self.drop(con)
        self._best = best

    def _best_attempts(
        self,
        con: duckdb.DuckDBPyConnection,
        start_us: int,
        end_us: int,
        floor_table: str | None,
        *,
        event_ids: bool,
    ) -> BestAttempts | MergedAttempts:
        """Every person's best attempt (`TiesNeedEventIds` without `event_ids` when differing
        rows tie); a large stream in person parts on the scope's threads, merged exactly."""
        cached = None if event_ids or floor_table is not None else self._cached_stream(con)
        if cached is not None:
            table = cached
        else:
            params = SqlParams()
            sql = self.stream_sql(params, floor_table, event_ids=event_ids)
            table = con.sql(sql, params=params.values).to_arrow_table()
            if self.filters_by_name(floor_table):
                table = _marked(table)
        # One chunk per column (DuckDB hands over a chunk per row group): every later
        # `to_numpy` is then a view, where each would otherwise copy the column again.
        table = table.combine_chunks()
        if "ak" in table.column_names:
            table = _resolved(con, table)
        shape = self.shape()
        rank = first_step(np.asarray(table["mask"].to_numpy()), self.spec.n)
        # Ordered once, whole, then cut into person parts for the scope's threads.
        events = in_event_order(
            table,
            key="pid",
            ts="t",
            event_id="eid" if event_ids else None,
            rank=rank,
            codes=key_codes(table["pid"]),
        )

        def attempts_of(part: EventOrder) -> BestAttempts:
            stream = EventStream(part)
            starts = (stream.t >= start_us) & (stream.t < end_us)
            if floor_table is not None:
                # No floor (NULL): no attempt starts.
                floor = pc.fill_null(table["floor"], np.iinfo(np.int64).max)
                starts &= stream.t >= np.asarray(floor.to_numpy(), dtype=np.int64)[part.rows]
            return ORDER_STRATEGIES[self.spec.order].best(stream, shape, starts)

        results = self.scope.walk(events, attempts_of)
        if len(results) == 1:
            return results[0]
        return MergedAttempts.of(results)

    def _prepared(self) -> BestAttempts | MergedAttempts:
        if self._best is None:
            raise RuntimeError("prepare the funnel first")
        return self._best

    def persons_table(self, con: duckdb.DuckDBPyConnection) -> str:
        """The name of a temp table holding `prepare`'s persons (pid, reached, t1..tn, bd),
        created on the first call."""
        if self._table is None:
            con.register(f"{self.persons}_arrow", self._prepared().table())
            try:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE {self.persons}"
                    f" AS SELECT * FROM {self.persons}_arrow"
                )
            finally:
                con.unregister(f"{self.persons}_arrow")
            self._table = self.persons
        return self._table

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        """Drop the persons table if `persons_table` made one."""
        if self._table is not None:
            con.execute(f"DROP TABLE IF EXISTS {self._table}")
            self._table = None

    def _breakdown_sql(self, table: str) -> str:
        """Persons per step and the times from the step before, per breakdown value (ranked by
        step-1 persons)."""
        cols = []
        for k in range(self.spec.n):
            cols.append(f"count(*) FILTER (WHERE reached >= {k + 1}) AS c{k + 1}")
            if k:
                gap = f"(t{k + 1} - t{k}) / 1e6"
                cols.append(f"median({gap}) FILTER (WHERE reached >= {k + 1}) AS m{k + 1}")
                cols.append(f"avg({gap}) FILTER (WHERE reached >= {k + 1}) AS a{k + 1}")
        return f"SELECT bd, {', '.join(cols)} FROM {table} GROUP BY bd ORDER BY c1 DESC, bd"

    def _counts_of(self, row: tuple[Any, ...]) -> FunnelCounts:
        stats = [StepStats(int(row[1]), None, None)]
        for k in range(1, self.spec.n):
            base = 2 + (k - 1) * 3
            count, median, avg = row[base], row[base + 1], row[base + 2]
            stats.append(StepStats(int(count), median, avg))
        return FunnelCounts(stats)

    def counts(self, con: duckdb.DuckDBPyConnection) -> tuple[FunnelCounts, list[Any], bool]:
        """Total counts, per-breakdown-value counts (top values) and whether values were cut."""
        best = self._prepared()
        stats = []
        # Each step's times contiguous: gathers from a column, not a boolean mask of 2-D rows.
        steps = np.ascontiguousarray(best.times.T)
        for k in range(self.spec.n):
            reached = best.reached >= k + 1
            count = int(np.count_nonzero(reached))
            if k == 0 or not count:
                stats.append(StepStats(count, None, None))
                continue
            persons = np.flatnonzero(reached)
            gaps = (np.take(steps[k], persons) - np.take(steps[k - 1], persons)) / 1e6
            stats.append(StepStats(count, float(np.median(gaps)), float(np.mean(gaps))))
        total = FunnelCounts(stats)
        breakdown: list[tuple[str, FunnelCounts]] = []
        truncated = False
        if self.spec.breakdown is not None:
            sql = self._breakdown_sql(self.persons_table(con))
            rows = con.execute(sql).fetchall()
            truncated = len(rows) > self.spec.breakdown_limit
            breakdown = [(r[0], self._counts_of(r)) for r in rows[: self.spec.breakdown_limit]]
        return total, breakdown, truncated

    def time_to_convert(
        self, con: duckdb.DuckDBPyConnection, from_step: int, to_step: int, bins: int | None
    ) -> TimeToConvert:
        """The histogram of (t_to - t_from) over persons who reached `to_step`: equal bins of
        whole seconds from the shortest time, the last bin holding the longest."""
        best = self._prepared()
        reached = best.reached >= to_step
        seconds = (best.times[reached, to_step - 1] - best.times[reached, from_step - 1]) / 1e6
        persons = int(seconds.size)
        if not persons:
            return TimeToConvert(from_step, to_step, 0, None, None, [])
        shortest, longest = float(seconds.min()), float(seconds.max())
        count = bins or min(AUTO_TIME_BINS, max(1, math.ceil(math.sqrt(persons))))
        lo = math.floor(shortest)
        width = max(1, math.ceil((math.floor(longest) + 1 - lo) / count))
        count = min(count, max(1, math.ceil((math.floor(longest) + 1 - lo) / width)))
        which = np.minimum(np.floor((seconds - lo) / width).astype(np.int64), count - 1)
        counted = np.bincount(which, minlength=count)
        return TimeToConvert(
            from_step=from_step,
            to_step=to_step,
            persons=persons,
            avg_s=float(np.mean(seconds)),
            median_s=float(np.median(seconds)),
            bins=[
                ConversionBin(
                    from_s=float(lo + i * width),
                    to_s=float(lo + (i + 1) * width),
                    persons=int(counted[i]),
                )
                for i in range(count)
            ],
        )

    def person_ids(
        self, con: duckdb.DuckDBPyConnection, page: PersonsPage | None, *, everyone: bool = False
    ) -> tuple[list[str], str | None]:
        """The persons at a step (`converted`: reached it; `dropped`: reached the step before
        it and no further), ordered by id, one page (or all of them with `everyone`)."""
        assert page is not None
        if self.by_key:
            raise RuntimeError("this funnel was built without listing persons (lists_persons)")
        params = SqlParams()
        if page.status == "converted":
            terms = [f"reached >= {params.add(page.step)}"]
        else:
            terms = [f"reached = {params.add(page.step - 1)}"]
        if page.breakdown_value is not None:
            terms.append(f"bd = {params.add(page.breakdown_value)}")
        if page.cursor is not None and not everyone:
            terms.append(f"pid > {params.add(decode_cursor(page.cursor))}")
        limit = "" if everyone else f" LIMIT {page.limit + 1}"
        table = self.persons_table(con)
        rows = con.execute(
            f"SELECT pid FROM {table} WHERE {' AND '.join(terms)} ORDER BY pid{limit}",
            params.values,
        ).fetchall()
        ids = [r[0] for r in rows]
        if everyone or len(ids) <= page.limit:
            return ids, None
        ids = ids[: page.limit]
        return ids, encode_cursor(ids[-1])


def run_funnel(
    con: duckdb.DuckDBPyConnection,
    spec: FunnelSpec,
    scope: EventScope,
    start_us: int,
    end_us: int,
    page: PersonsPage | None = None,
    conversion: TimeToConvertSpec | None = None,
) -> FunnelResult:
    """The funnel's counts, time-to-convert histogram (and a page of persons) on a
    connection holding `events_scan`; attempts start in [start_us, end_us), rows come from
    `scope`."""
    query = FunnelQuery(spec, scope, lists_persons=page is not None)
    query.prepare(con, start_us, end_us)
    total, breakdown, truncated = query.counts(con)
    conversion = conversion or TimeToConvertSpec()
    histogram = query.time_to_convert(
        con, conversion.from_step, conversion.to_step or spec.n, conversion.bins
    )
    persons, cursor = (None, None)
    if page is not None:
        persons, cursor = query.person_ids(con, page)
    query.drop(con)
    return FunnelResult(total, breakdown, truncated, persons, cursor, histogram)
