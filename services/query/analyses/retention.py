"""Retention over `events_scan`, in DuckDB SQL (period of each event by an ASOF join against the
period starts, then a GROUP BY on (cohort period, offset)).

Semantics (docs/analytics.md, "Retention"): cohort periods are the whole periods (in the query's
time zone) from the one containing `from` through the one containing `to`. `recurring`: a
person is in the cohort of every period in which they did the start event; `first_time`: only
in the period of their first-ever start event, so a person whose first one was before that is in
none. Offset 0 is the cohort size; offset k counts members who did the return event in the k-th
period after (`cumulative`: in period k or any later one up to `intervals`). Offsets whose
period has not begun yet are null."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa

from services.query.analyses.conditions import EventScope, event_match_sql, needs_persons
from services.query.analyses.periods import PERIODS, WEEK_STARTS, count_periods, period_starts
from services.query.analyses.requests import (
    EventMatch,
    RetentionRequest,
    check_choice,
    check_range,
)
from services.query.metric_query import SqlParams
from services.query.params import ParamError, TimeWindow

MODES = ("recurring", "first_time")
MAX_INTERVALS = 400
MAX_PERIODS = 1000
# first_time looks for each person's first start event since the beginning of time.
HISTORY_START = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RetentionSpec:
    start_event: EventMatch
    return_event: EventMatch
    period: str = "day"
    intervals: int = 7
    week_start: str = "monday"
    mode: str = "recurring"
    cumulative: bool = False


def retention_spec(request: RetentionRequest) -> RetentionSpec:
    """Validate a retention request; a ParamError names the offending field."""
    return RetentionSpec(
        start_event=request.start_event,
        return_event=request.return_event,
        period=check_choice("period", request.period, PERIODS),
        intervals=check_range("intervals", request.intervals, 1, MAX_INTERVALS),
        week_start=check_choice("week_start", request.week_start, tuple(WEEK_STARTS)),
        mode=check_choice("mode", request.mode, MODES),
        cumulative=request.cumulative,
    )


@dataclass(frozen=True)
class RetentionPlan:
    """The periods of one retention query: `starts[i]` begins period i (UTC); the first
    `cohorts` periods hold cohorts, the rest only returns; `starts[-1]` ends the last."""

    starts: list[datetime]
    cohorts: int

    @property
    def scan_end(self) -> datetime:
        return self.starts[-1]


def retention_plan(spec: RetentionSpec, window: TimeWindow) -> RetentionPlan:
    """The cohort periods from the one containing `from` to the one containing `to`'s last
    instant, then `intervals` periods of returns."""
    last = window.end - timedelta(microseconds=1)
    if count_periods(window.start, last, spec.period) + spec.intervals > MAX_PERIODS:
        raise ParamError(
            "period", f"more than {MAX_PERIODS} periods; use a longer period or a shorter range"
        )
    starts = period_starts(
        window.start, last, spec.period, window.tz, spec.week_start, spec.intervals
    )
    return RetentionPlan(starts=starts, cohorts=len(starts) - 1 - spec.intervals)


@dataclass(frozen=True)
class CohortRow:
    start: datetime  # UTC start of the cohort period
    size: int
    counts: list[int | None]  # offset 0..intervals; None: that period has not begun


@dataclass(frozen=True)
class RetentionResult:
    rows: list[CohortRow]


def _events_sql(
    params: SqlParams,
    match: EventMatch,
    field: str,
    scope: EventScope,
    lo: datetime,
    hi: datetime,
) -> str:
    join = ""
    if needs_persons(match.conditions):
        join = "LEFT JOIN persons pt ON pt.person_id = e.person_id"
    where = f"""{scope.where(params, start=lo)} AND e.ts < {params.add(hi)}
          AND {event_match_sql(field, match, params)}"""
    view = scope.view("events_scan", f"e.person_id e.ts {join} {where}")
    return f"""
        SELECT e.person_id AS pid, e.ts FROM {view} e {join}
        WHERE {where}"""


_PERIODS_TABLE = "retention_periods"
# Bucket sizes (seconds) tried for mapping events to periods; every period start must be a
# multiple of the size (whole hours for most zones, quarter hours for India or Nepal).
_BUCKET_SECONDS = (3600, 900, 60)
_MAX_BUCKETS = 1_000_000


def _period_mapper(con: duckdb.DuckDBPyConnection, starts: list[datetime]) -> Callable[[str], str]:
    """SQL turning a query of (pid, ts) into its distinct (pid, idx) of period `idx`.

    When every period starts on a whole bucket (an hour, usually), events are first reduced to
    distinct (person, bucket) pairs by hashing and the few buckets are mapped to periods by a
    small join, so no row is sorted; otherwise an ASOF join against the period starts."""
    epochs = [_epoch_us(s) for s in starts]
    for seconds in _BUCKET_SECONDS:
        size = seconds * 1_000_000
        count = (epochs[-1] - epochs[0]) // size
        if all(e % size == 0 for e in epochs) and count <= _MAX_BUCKETS:
            first = epochs[0] // size
            buckets = list(range(first, first + count))
            indexes = [bisect.bisect_right(epochs, b * size) - 1 for b in buckets]
            con.register(
                _PERIODS_TABLE,
                pa.table(
                    {"b": pa.array(buckets, pa.int64()), "idx": pa.array(indexes, pa.int32())}
                ),
            )
            return lambda sql: (
                f"""
                SELECT DISTINCT x.pid, m.idx
                FROM (SELECT DISTINCT pid, epoch_us(ts) // {size} AS b FROM ({sql})) x
                JOIN {_PERIODS_TABLE} m ON m.b = x.b"""
            )
    con.register(
        _PERIODS_TABLE,
        pa.table(
            {
                "idx": pa.array(range(len(starts) - 1), pa.int32()),
                "start_ts": pa.array(starts[:-1], pa.timestamp("us", tz="UTC")),
            }
        ),
    )
    return lambda sql: (
        f"""
        SELECT DISTINCT s.pid, p.idx FROM ({sql}) s
        ASOF JOIN {_PERIODS_TABLE} p ON s.ts >= p.start_ts"""
    )


def _epoch_us(ts: datetime) -> int:
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def run_retention(
    con: duckdb.DuckDBPyConnection,
    spec: RetentionSpec,
    plan: RetentionPlan,
    scope: EventScope,
    now: datetime,
) -> RetentionResult:
    """The cohort x offset matrix on a connection holding `events_scan` (from HISTORY_START
    for first_time, else from the first period's start)."""
    starts = plan.starts
    n_cohorts, intervals = plan.cohorts, spec.intervals
    period_of = _period_mapper(con, starts)
    params = SqlParams()
    if spec.mode == "recurring":
        cohort_sql = _events_sql(
            params, spec.start_event, "start_event", scope, starts[0], starts[n_cohorts]
        )
    else:
        history = _events_sql(
            params, spec.start_event, "start_event", scope, HISTORY_START, starts[n_cohorts]
        )
        cohort_sql = f"""
            SELECT pid, ts FROM (SELECT pid, min(ts) AS ts FROM ({history}) GROUP BY pid)
            WHERE ts >= {params.add(starts[0])}"""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE retention_cohorts AS {period_of(cohort_sql)}",
        params.values,
    )
    params = SqlParams()
    returns_sql = _events_sql(
        params, spec.return_event, "return_event", scope, starts[1], starts[-1]
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE retention_returns AS {period_of(returns_sql)}",
        params.values,
    )
    sizes = dict(con.execute("SELECT idx, count(*) FROM retention_cohorts GROUP BY idx").fetchall())
    offset = "max(r.idx - c.idx)" if spec.cumulative else "r.idx - c.idx"
    grouped = f"""
        SELECT c.pid, c.idx AS cohort, {offset} AS k
        FROM retention_cohorts c JOIN retention_returns r
          ON r.pid = c.pid AND r.idx > c.idx AND r.idx <= c.idx + {intervals}
        {"GROUP BY c.pid, c.idx" if spec.cumulative else ""}"""
    counted: dict[tuple[int, int], int] = {
        (cohort, k): count
        for cohort, k, count in con.execute(
            f"SELECT cohort, k, count(*) FROM ({grouped}) GROUP BY cohort, k"
        ).fetchall()
    }
    con.execute("DROP TABLE retention_cohorts")
    con.execute("DROP TABLE retention_returns")
    con.unregister(_PERIODS_TABLE)
    rows = []
    for cohort in range(n_cohorts):
        size = sizes.get(cohort, 0)
        counts: list[int | None] = [size]
        running = 0
        by_offset = [counted.get((cohort, k), 0) for k in range(1, intervals + 1)]
        if spec.cumulative:
            # Members whose furthest return is at k or later returned "in k or later".
            suffix = []
            for value in reversed(by_offset):
                running += value
                suffix.append(running)
            by_offset = list(reversed(suffix))
        for k, value in enumerate(by_offset, start=1):
            counts.append(value if starts[cohort + k] <= now else None)
        if starts[cohort] > now:
            counts[0] = None
        rows.append(CohortRow(start=starts[cohort], size=size, counts=counts))
    return RetentionResult(rows)


def average_percentages(result: RetentionResult, intervals: int) -> list[float | None]:
    """Per offset, members retained over all cohorts whose offset has begun, as a share of
    those cohorts' sizes (weighted by size)."""
    out: list[float | None] = []
    for k in range(intervals + 1):
        kept = [(row.counts[k], row.size) for row in result.rows if row.counts[k] is not None]
        total = sum(size for _, size in kept)
        out.append(sum(c or 0 for c, _ in kept) / total if total else None)
    return out
