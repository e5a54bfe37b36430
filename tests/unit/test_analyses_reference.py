"""The SQL engines against the plain-Python reference (tests/support/reference_analytics.py)
on generated, tie-heavy data with several seeds: identical funnels (counts, persons, times,
breakdowns), retention matrices and paths."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest

from services.query.analyses.conditions import EventScope
from services.query.analyses.funnel_runner import funnel_needs_persons
from services.query.analyses.funnels import FunnelQuery, FunnelResult, funnel_spec, run_funnel
from services.query.analyses.paths import paths_spec, run_paths
from services.query.analyses.requests import (
    CleaningRule,
    Condition,
    EventMatch,
    FunnelExclusion,
    FunnelRequest,
    FunnelStep,
    PathsRequest,
    PersonsPage,
    RetentionRequest,
    WindowSpec,
)
from services.query.analyses.retention import retention_plan, retention_spec, run_retention
from services.query.params import TimeWindow
from tests.support.analysis_events import T0, Ev, generated_events, scan_connection
from tests.support.reference_analytics import ref_funnel, ref_paths, ref_retention

SEEDS = (1, 2, 3, 4)
DAYS = 35
START = T0 + timedelta(days=2)
END = T0 + timedelta(days=DAYS - 10)


def us(ts: datetime) -> int:
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@pytest.fixture(scope="module", params=SEEDS)
def dataset(request: pytest.FixtureRequest) -> tuple[list[Ev], duckdb.DuckDBPyConnection]:
    events = generated_events(request.param, persons=80, days=DAYS)
    return events, scan_connection(events)


def page(path: str) -> FunnelStep:
    return FunnelStep("$pageview", [Condition("path", "eq", path)])


FUNNELS: dict[str, dict[str, Any]] = {
    "ordered": dict(
        steps=[page("/"), page("/pricing"), FunnelStep("signup"), FunnelStep("purchase")],
        window=WindowSpec(1, "day"),
    ),
    "ordered-repeated-steps": dict(
        steps=[FunnelStep("$pageview"), FunnelStep("$pageview"), FunnelStep("signup")],
        window=WindowSpec(3, "hour"),
    ),
    "ordered-overlapping-steps": dict(
        steps=[
            FunnelStep("$pageview"),
            FunnelStep("$pageview", [Condition("path", "regex", "^/pricing")]),
            FunnelStep("$pageview"),
            FunnelStep("purchase", [Condition("amount", "gt", 10)]),
        ],
        window=WindowSpec(2, "day"),
        breakdown="plan",
    ),
    "ordered-exclusion": dict(
        steps=[FunnelStep("$pageview"), FunnelStep("signup"), FunnelStep("purchase")],
        window=WindowSpec(12, "hour"),
        exclusions=[FunnelExclusion("cancel", from_step=1, to_step=3)],
        breakdown="country",
    ),
    "strict": dict(
        steps=[FunnelStep("$pageview"), FunnelStep("$pageview"), FunnelStep("signup")],
        order="strict",
        window=WindowSpec(1, "day"),
    ),
    "strict-conditions": dict(
        steps=[
            page("/"),
            FunnelStep("search"),
            FunnelStep("$pageview", [Condition("plan", "neq", "free")]),
        ],
        order="strict",
        window=WindowSpec(7, "day"),
        exclusions=[FunnelExclusion("cancel", from_step=2, to_step=3)],
    ),
    "unordered": dict(
        steps=[
            FunnelStep("signup"),
            FunnelStep("$pageview", [Condition("path", "contains", "PRICING")]),
            FunnelStep("purchase"),
            FunnelStep("$pageview"),
        ],
        order="unordered",
        window=WindowSpec(1, "day"),
    ),
    "unordered-identical": dict(
        steps=[FunnelStep("search"), FunnelStep("$pageview"), FunnelStep("search")],
        order="unordered",
        window=WindowSpec(6, "hour"),
        breakdown="plan",
    ),
}


@pytest.mark.parametrize("name", list(FUNNELS))
def test_funnel_in_person_parts_is_the_whole_answer_exactly(
    dataset: tuple[list[Ev], duckdb.DuckDBPyConnection], name: str
) -> None:
    # Parts on threads merge to the unsplit answer to the bit: counts, float medians and
    # means, histogram, breakdown and the persons page.
    _, con = dataset
    request = FunnelRequest(**FUNNELS[name], breakdown_limit=1000)
    spec = funnel_spec(request)
    scope_end = END + timedelta(seconds=spec.window_s)
    page = PersonsPage(step=2, limit=1000)

    def answer(threads: int) -> FunnelResult:
        scope = EventScope(START, scope_end, threads=threads, part_min_events=0)
        return run_funnel(con, spec, scope, us(START), us(END), page)

    whole = answer(1)
    assert whole.total.steps[0].count > 0
    assert answer(2) == whole
    assert answer(3) == whole


@pytest.mark.parametrize("threads", [1, 3], ids=["whole", "parts"])
@pytest.mark.parametrize("person_keys", [False, True], ids=["by-id", "by-key"])
@pytest.mark.parametrize("name", list(FUNNELS))
def test_funnels_match_the_reference(
    dataset: tuple[list[Ev], duckdb.DuckDBPyConnection], name: str, person_keys: bool, threads: int
) -> None:
    events, con = dataset
    request = FunnelRequest(**FUNNELS[name], breakdown_limit=1000)
    spec = funnel_spec(request)
    scope_end = END + timedelta(seconds=spec.window_s)
    # By key: counts, times and breakdowns from integer person keys (`events_scan_keyed`).
    # With threads > 1 the stream is split into person parts (stream_parts.py).
    scope = EventScope(
        START, scope_end, person_keys=person_keys, threads=threads, part_min_events=0
    )
    query = FunnelQuery(spec, scope, lists_persons=not person_keys)
    query.prepare(con, us(START), us(END))
    total, breakdown, truncated = query.counts(con)
    expected = ref_funnel(
        events,
        spec.steps,
        order=spec.order,
        window_s=spec.window_s,
        start=START,
        end=END,
        exclusions=[(x.match, x.from_step, x.to_step) for x in spec.exclusions],
        breakdown=spec.breakdown,
    )
    assert expected.total[0][0] > 0, "the generated data should enter the funnel"
    assert [s.count for s in total.steps] == [c for c, _, _ in expected.total]
    for got, (_, median, mean) in zip(total.steps, expected.total, strict=True):
        assert got.median_s == pytest.approx(median)
        assert got.avg_s == pytest.approx(mean)
    if person_keys:
        # Read by key unless a person's traits are needed (then by id, as before).
        assert query.by_key != funnel_needs_persons(spec)
    else:
        for step in range(1, spec.n + 1):
            ids, _ = query.person_ids(con, PersonsPage(step=step), everyone=True)
            assert ids == sorted(p for p, r in expected.reached.items() if r >= step)
    # Time to convert, first to last step: equal whole-second bins from the shortest time.
    histogram = query.time_to_convert(con, 1, spec.n, None)
    seconds = sorted(expected.conversion_s.values())
    assert histogram.persons == len(seconds)
    if seconds:
        assert histogram.avg_s == pytest.approx(statistics.fmean(seconds))
        assert histogram.median_s == pytest.approx(statistics.median(seconds))
        lo, span = math.floor(seconds[0]), math.floor(seconds[-1]) + 1 - math.floor(seconds[0])
        count = min(60, math.ceil(math.sqrt(len(seconds))))
        width = max(1, math.ceil(span / count))
        count = min(count, math.ceil(span / width))
        counted = [0] * count
        for s in seconds:
            counted[min(int((s - lo) // width), count - 1)] += 1
        assert [(b.from_s, b.persons) for b in histogram.bins] == [
            (lo + i * width, c) for i, c in enumerate(counted)
        ]
    if spec.breakdown is not None:
        assert not truncated
        assert {value: [s.count for s in counts.steps] for value, counts in breakdown} == {
            value: [c for c, _, _ in steps] for value, steps in expected.breakdown.items()
        }


RETENTION = [
    dict(period="day", intervals=5, mode="recurring", cumulative=False, week_start="monday"),
    dict(period="day", intervals=4, mode="first_time", cumulative=True, week_start="monday"),
    dict(period="week", intervals=3, mode="recurring", cumulative=True, week_start="sunday"),
    dict(period="week", intervals=2, mode="first_time", cumulative=False, week_start="monday"),
    dict(period="month", intervals=1, mode="recurring", cumulative=False, week_start="monday"),
]


@pytest.mark.parametrize("options", RETENTION, ids=lambda o: f"{o['period']}-{o['mode']}")
@pytest.mark.parametrize("timezone", ["UTC", "Europe/Berlin", "America/New_York"])
def test_retention_matches_the_reference(
    dataset: tuple[list[Ev], duckdb.DuckDBPyConnection], options: dict[str, Any], timezone: str
) -> None:
    events, con = dataset
    tz = ZoneInfo(timezone)
    start_event = EventMatch("$pageview", [Condition("path", "eq", "/")])
    return_event = EventMatch("signup")
    spec = retention_spec(
        RetentionRequest(start_event=start_event, return_event=return_event, **options)
    )
    window = TimeWindow(START, END, tz)
    plan = retention_plan(spec, window)
    now = T0 + timedelta(days=DAYS - 3)  # the last periods are still in the future
    scope = EventScope(datetime(1970, 1, 1, tzinfo=UTC), plan.scan_end)
    result = run_retention(con, spec, plan, scope, now)
    expected = ref_retention(
        events,
        start_event,
        return_event,
        start=START,
        end=END,
        tz=tz,
        now=now,
        **options,
    )
    assert [(r.start.astimezone(tz).date(), r.size, r.counts) for r in result.rows] == expected
    assert any(size for _, size, _ in expected)


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Kolkata", "Europe/Berlin"])
def test_hourly_retention_of_any_event_matches_the_reference(
    dataset: tuple[list[Ev], duckdb.DuckDBPyConnection], timezone: str
) -> None:
    events, con = dataset
    tz = ZoneInfo(timezone)
    start_event, return_event = EventMatch("$any"), EventMatch("$any")
    options = dict(period="hour", intervals=6, mode="recurring", cumulative=False)
    spec = retention_spec(
        RetentionRequest(start_event=start_event, return_event=return_event, **options)
    )
    start, end = START + timedelta(days=3, minutes=20), START + timedelta(days=4)
    plan = retention_plan(spec, TimeWindow(start, end, tz))
    now = end + timedelta(hours=3)
    scope = EventScope(datetime(1970, 1, 1, tzinfo=UTC), plan.scan_end)
    result = run_retention(con, spec, plan, scope, now)
    expected = ref_retention(
        events,
        start_event,
        return_event,
        start=start,
        end=end,
        tz=tz,
        now=now,
        week_start="monday",
        **options,
    )
    assert [(r.start, r.size, r.counts) for r in result.rows] == expected
    assert sum(size for _, size, _ in expected) > 5
    assert any(counts[-1] is None for _, _, counts in expected)  # later hours not begun


PATHS = [
    PathsRequest(),
    PathsRequest(event_types=["pageview", "custom"], steps=4),
    PathsRequest(
        event_types=["pageview", "custom"],
        cleaning_rules=[CleaningRule(r"^/user/\d+$", "/user/:id"), CleaningRule("^/docs", "/d")],
        start_point="/pricing/",
        steps=6,
    ),
    PathsRequest(event_types=["pageview", "custom"], end_point="signup", steps=3),
    PathsRequest(event_types=["custom"], start_point="search", end_point="purchase", steps=3),
    PathsRequest(event_types=["pageview", "custom"], steps=6, per="person"),
    PathsRequest(per="person", start_point="/pricing", steps=4),
]


@pytest.mark.parametrize(
    ("person_keys", "mixed_sources"),
    [(False, False), (True, False), (True, True)],
    ids=["by-id", "by-key", "by-key-mixed-sources"],
)
@pytest.mark.parametrize("request_body", PATHS, ids=range(len(PATHS)))
def test_paths_match_the_reference(
    dataset: tuple[list[Ev], duckdb.DuckDBPyConnection],
    request_body: PathsRequest,
    person_keys: bool,
    mixed_sources: bool,
) -> None:
    events, con = dataset
    if mixed_sources:
        # Rows of one session from two files, or a file and PostgreSQL, tied at one time:
        # their order needs the event ids (support/analysis_events.py, the tie columns).
        con = scan_connection(events, mixed_sources=True)
    spec = paths_spec(request_body)
    session_max = timedelta(days=1)
    # By key: persons (and per-person paths) from integer person keys (`events_scan_keyed`).
    scope = EventScope(START - session_max, END + session_max, person_keys=person_keys)
    result = run_paths(
        con, spec.__class__(**{**spec.__dict__, "edge_limit": 1000}), scope, START, END, session_max
    )
    nodes, edges, sessions = ref_paths(
        events,
        event_types=spec.event_types,
        steps=spec.steps,
        start=START,
        end=END,
        session_max=session_max,
        start_point=spec.start_point,
        end_point=spec.end_point,
        rules=[(r.regex, r.replacement) for r in spec.cleaning_rules],
        per=spec.per,
    )
    assert sessions > 0
    assert result.paths == sessions
    assert not result.edges_truncated
    assert {(e.step, e.source, e.target): e.value for e in result.edges} == edges
    shown = {(n.step, n.name): (n.count, n.drop_offs) for n in result.nodes}
    assert shown == {k: v for k, v in nodes.items() if k in shown}
    # Every node on a shown edge is shown.
    assert {(s, a) for s, a, _ in edges} | {(s + 1, b) for s, _, b in edges} <= set(shown)
