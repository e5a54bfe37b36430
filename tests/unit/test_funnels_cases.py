"""Funnels, rule by rule (docs/analytics.md), on small hand-built event sets whose
expected numbers are worked out in each case."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.query.analyses.conditions import EventScope
from services.query.analyses.funnel_runner import step_results
from services.query.analyses.funnels import FunnelQuery, funnel_spec, run_funnel
from services.query.analyses.requests import (
    Condition,
    FunnelExclusion,
    FunnelRequest,
    FunnelStep,
    PersonsPage,
    TimeToConvertSpec,
    WindowSpec,
    parse_body_filters,
)
from services.query.analyses.runner import epoch_us
from services.query.params import ParamError
from tests.support.analysis_events import Ev, at, numbered, scan_connection

A, B, C, X = FunnelStep("A"), FunnelStep("B"), FunnelStep("C"), FunnelStep("X")
HOME = FunnelStep("$pageview", [Condition("path", "eq", "/")])
PRICING = FunnelStep("$pageview", [Condition("path", "eq", "/pricing")])
ANY_PAGE = FunnelStep("$pageview")

FROM, TO = at(-60), at(days=1)


@dataclass
class Case:
    events: list[Ev]
    steps: list[FunnelStep]
    counts: list[int]  # persons reaching each step
    order: str = "ordered"
    window: WindowSpec = field(default_factory=lambda: WindowSpec(14, "day"))
    exclusions: list[FunnelExclusion] = field(default_factory=list)
    start: datetime = FROM
    end: datetime = TO
    times: list[float | None] | None = None  # median seconds from the previous step


def ev(person: str, name: str, ts: datetime, event_id: str = "", **kw: Any) -> Ev:
    return Ev(person, name, ts, event_id=event_id, **kw)


def pv(person: str, path: str, ts: datetime, event_id: str = "") -> Ev:
    return Ev(person, "$pageview", ts, event_id=event_id, path=path)


CASES: dict[str, Case] = {
    # Nobody's events are steps: every order counts nobody (and no attempt starts).
    "no step events (ordered)": Case([ev("p", "X", at(0))], [A, B], [0, 0]),
    "no step events (strict)": Case([ev("p", "X", at(0))], [A, B], [0, 0], order="strict"),
    "no step events (unordered)": Case([ev("p", "X", at(0))], [A, B], [0, 0], order="unordered"),
    "in order": Case(
        [ev("p", "A", at(0)), ev("p", "B", at(1)), ev("p", "C", at(2))],
        [A, B, C],
        [1, 1, 1],
        times=[None, 60.0, 60.0],
    ),
    # The next step event in the stream after p's last event is q's, inside p's window: it
    # is not p's (the step search runs over every person's events at once).
    "another person's step never completes an attempt": Case(
        [ev("p", "A", at(0)), ev("p", "X", at(1)), ev("q", "B", at(2)), ev("q", "C", at(3))],
        [A, B, C],
        [1, 0, 0],
    ),
    "missing middle step": Case([ev("p", "A", at(0)), ev("p", "C", at(2))], [A, B, C], [1, 0, 0]),
    "out of order": Case([ev("p", "B", at(0)), ev("p", "A", at(1))], [A, B], [1, 0]),
    # Ties: B is stored first (smaller id) but shares A's timestamp: still in order.
    "different steps at one timestamp": Case(
        [ev("p", "B", at(0), "e1"), ev("p", "A", at(0), "e2")], [A, B], [1, 1], times=[None, 0.0]
    ),
    "three steps at one timestamp": Case(
        [ev("p", "C", at(0), "e1"), ev("p", "B", at(0), "e2"), ev("p", "A", at(0), "e3")],
        [A, B, C],
        [1, 1, 1],
    ),
    "repeated step at the same timestamp does not count": Case(
        [ev("p", "A", at(0), "e1"), ev("p", "A", at(0), "e2")], [A, A], [1, 0]
    ),
    "repeated step one second later counts": Case(
        [ev("p", "A", at(0)), ev("p", "A", at(seconds=1))], [A, A], [1, 1], times=[None, 1.0]
    ),
    "one event never satisfies two steps": Case(
        [pv("p", "/pricing", at(0))], [ANY_PAGE, PRICING], [1, 0]
    ),
    "overlapping steps need two events": Case(
        [pv("p", "/", at(0)), pv("p", "/pricing", at(1))], [ANY_PAGE, PRICING], [1, 1]
    ),
    "overlapping steps at one timestamp": Case(
        # Both views share a timestamp and both satisfy step 1 first, so event ids order
        # them: the home view (e1) is step 1, the pricing view (e2) step 2.
        [pv("p", "/", at(0), "e1"), pv("p", "/pricing", at(0), "e2")],
        [ANY_PAGE, PRICING],
        [1, 1],
    ),
    "strict: another event in between breaks": Case(
        [ev("p", "A", at(0)), ev("p", "X", at(1)), ev("p", "B", at(2))],
        [A, B],
        [1, 0],
        order="strict",
    ),
    "ordered: another event in between is fine": Case(
        [ev("p", "A", at(0)), ev("p", "X", at(1)), ev("p", "B", at(2))], [A, B], [1, 1]
    ),
    "strict: a same-named event failing the conditions breaks": Case(
        [pv("p", "/", at(0)), pv("p", "/about", at(1)), pv("p", "/pricing", at(2))],
        [HOME, PRICING],
        [1, 0],
        order="strict",
    ),
    "strict: consecutive steps convert": Case(
        [pv("p", "/", at(0)), pv("p", "/pricing", at(1)), ev("p", "signup", at(2))],
        [HOME, PRICING, FunnelStep("signup")],
        [1, 1, 1],
        order="strict",
    ),
    "strict: identify calls and non-interactive events do not break": Case(
        [
            ev("p", "A", at(0)),
            ev("p", "$identify", at(1)),
            ev("p", "scroll", at(2), non_interactive=True),
            ev("p", "B", at(3)),
        ],
        [A, B],
        [1, 1],
        order="strict",
    ),
    "strict: a later attempt may convert": Case(
        [ev("p", "A", at(0)), ev("p", "X", at(1)), ev("p", "A", at(2)), ev("p", "B", at(3))],
        [A, B],
        [1, 1],
        order="strict",
        times=[None, 60.0],
    ),
    "window: a step exactly at the window's end counts": Case(
        [ev("p", "A", at(0)), ev("p", "B", at(0, days=14))], [A, B], [1, 1]
    ),
    "window: one second past the end does not": Case(
        [ev("p", "A", at(0)), ev("p", "B", at(0, days=14, seconds=1))], [A, B], [1, 0]
    ),
    "window: a month is a fixed 30 days": Case(
        [
            ev("p", "A", at(0)),
            ev("p", "B", at(0, days=30)),
            ev("q", "A", at(0)),
            ev("q", "B", at(0, days=30, seconds=1)),
        ],
        [A, B],
        [2, 1],
        window=WindowSpec(1, "month"),
    ),
    "window: daylight saving does not shorten a day": Case(
        # Europe/Berlin springs forward on 2025-03-30: 11:00Z on the 29th to 11:00Z on the
        # 30th is one local calendar day plus an hour, and exactly 24 hours.
        [
            ev("p", "A", datetime(2025, 3, 29, 11, tzinfo=UTC)),
            ev("p", "B", datetime(2025, 3, 30, 11, tzinfo=UTC)),
            ev("q", "A", datetime(2025, 3, 29, 11, tzinfo=UTC)),
            ev("q", "B", datetime(2025, 3, 30, 11, 0, 1, tzinfo=UTC)),
        ],
        [A, B],
        [2, 1],
        window=WindowSpec(1, "day"),
        start=datetime(2025, 3, 29, tzinfo=UTC),
        end=datetime(2025, 3, 30, tzinfo=UTC),
    ),
    "repeated first step: counted once, timed from the first attempt": Case(
        [ev("p", "A", at(0)), ev("p", "A", at(60)), ev("p", "B", at(120))],
        [A, B],
        [1, 1],
        times=[None, 7200.0],
    ),
    "timed-out attempt: a later first step starts a new one": Case(
        [ev("p", "A", at(0)), ev("p", "A", at(120)), ev("p", "B", at(150))],
        [A, B],
        [1, 1],
        window=WindowSpec(1, "hour"),
        times=[None, 1800.0],
    ),
    "timed-out attempt without a new first step": Case(
        [ev("p", "A", at(0)), ev("p", "B", at(120))], [A, B], [1, 0], window=WindowSpec(1, "hour")
    ),
    "a later first step inside the window gets its own window": Case(
        # A@0 times out at 60; the attempt from A@40 reaches B@90.
        [ev("p", "A", at(0)), ev("p", "A", at(40)), ev("p", "B", at(90))],
        [A, B],
        [1, 1],
        window=WindowSpec(1, "hour"),
        times=[None, 3000.0],
    ),
    "attempts start only inside from/to": Case(
        [ev("p", "A", at(-120)), ev("p", "B", at(0))], [A, B], [0, 0]
    ),
    "an attempt begun before to may finish after it": Case(
        [ev("p", "A", at(0, days=1, seconds=-1)), ev("p", "B", at(0, days=3))], [A, B], [1, 1]
    ),
    "best attempt: the first that gets furthest": Case(
        [ev("p", "A", at(0)), ev("p", "B", at(10)), ev("p", "A", at(60)), ev("p", "B", at(65))],
        [A, B],
        [1, 1],
        times=[None, 600.0],
    ),
    "exclusion between the steps removes the person": Case(
        [
            ev("p", "A", at(0)),
            ev("p", "X", at(1)),
            ev("p", "B", at(2)),
            ev("q", "A", at(0)),
            ev("q", "B", at(2)),
        ],
        [A, B],
        [1, 1],
        exclusions=[FunnelExclusion("X", from_step=1, to_step=2)],
    ),
    "exclusion at the same timestamp as a step does not": Case(
        [
            ev("p", "A", at(0)),
            ev("p", "X", at(0)),
            ev("p", "B", at(2)),
            ev("q", "A", at(0)),
            ev("q", "X", at(2)),
            ev("q", "B", at(2)),
        ],
        [A, B],
        [2, 2],
        exclusions=[FunnelExclusion("X", from_step=1, to_step=2)],
    ),
    "exclusion after the window does not": Case(
        [ev("p", "A", at(0)), ev("p", "X", at(61))],
        [A, B],
        [1, 0],
        window=WindowSpec(1, "hour"),
        exclusions=[FunnelExclusion("X")],
    ),
    "exclusion inside the window of an attempt that never converted removes": Case(
        [ev("p", "A", at(0)), ev("p", "X", at(30))],
        [A, B],
        [0, 0],
        window=WindowSpec(1, "hour"),
        exclusions=[FunnelExclusion("X")],
    ),
    "exclusion after the to-step does not": Case(
        [ev("p", "A", at(0)), ev("p", "B", at(1)), ev("p", "X", at(2)), ev("p", "C", at(3))],
        [A, B, C],
        [1, 1, 1],
        exclusions=[FunnelExclusion("X", from_step=1, to_step=2)],
    ),
    "exclusion before the from-step does not": Case(
        [ev("p", "A", at(0)), ev("p", "X", at(1)), ev("p", "B", at(2)), ev("p", "C", at(3))],
        [A, B, C],
        [1, 1, 1],
        exclusions=[FunnelExclusion("X", from_step=2, to_step=3)],
    ),
    "exclusion in any attempt removes the person from the whole funnel": Case(
        [ev("p", "A", at(0)), ev("p", "B", at(1)), ev("p", "A", at(10)), ev("p", "X", at(11))],
        [A, B],
        [0, 0],
        exclusions=[FunnelExclusion("X")],
    ),
    "unordered: any order within the window": Case(
        [
            ev("p", "C", at(0)),
            ev("p", "A", at(1)),
            ev("p", "B", at(2)),
            ev("q", "B", at(0)),
            ev("q", "A", at(0, days=15)),
        ],
        [A, B, C],
        [2, 1, 1],
        order="unordered",
    ),
    "unordered: identical steps need distinct timestamps": Case(
        [
            ev("p", "A", at(0), "e1"),
            ev("p", "A", at(0), "e2"),
            ev("q", "A", at(0)),
            ev("q", "A", at(1)),
        ],
        [A, A],
        [2, 1],
        order="unordered",
    ),
}


def counts_of(
    case: Case, person_keys: bool = False, threads: int = 1
) -> tuple[list[int], list[float | None]]:
    con = scan_connection(numbered(case.events))
    request = FunnelRequest(
        steps=case.steps, order=case.order, window=case.window, exclusions=case.exclusions
    )
    spec = funnel_spec(request)
    # With threads > 1 the stream is split into person parts however small it is.
    scope = EventScope(
        case.start,
        case.end + timedelta(seconds=spec.window_s),
        person_keys=person_keys,
        threads=threads,
        part_min_events=0,
    )
    result = run_funnel(con, spec, scope, epoch_us(case.start), epoch_us(case.end))
    return [s.count for s in result.total.steps], [s.median_s for s in result.total.steps]


@pytest.mark.parametrize("threads", [1, 2, 3], ids=["whole", "two-parts", "three-parts"])
@pytest.mark.parametrize("person_keys", [False, True], ids=["by-id", "by-key"])
@pytest.mark.parametrize("name", list(CASES))
def test_funnel_rule(name: str, person_keys: bool, threads: int) -> None:
    case = CASES[name]
    counts, times = counts_of(case, person_keys, threads)
    assert counts == case.counts
    if case.times is not None:
        assert times == case.times


@pytest.mark.parametrize("name", list(CASES))
def test_funnel_rule_with_the_step_filter_in_sql(name: str, monkeypatch: Any) -> None:
    # Funnels read by event name alone leave the rows no step or exclusion matches to NumPy;
    # the same rules hold when the query filters on the steps' conditions itself.
    monkeypatch.setattr(FunnelQuery, "filters_by_name", lambda self, floor_table=None: False)
    case = CASES[name]
    counts, times = counts_of(case, person_keys=True)
    assert counts == case.counts
    if case.times is not None:
        assert times == case.times


def test_which_funnels_read_by_event_name_alone() -> None:
    def reads_by_name(floor: str | None = None, **request: Any) -> bool:
        query = FunnelQuery(funnel_spec(FunnelRequest(**request)), EventScope(FROM, TO))
        return query.filters_by_name(floor)

    assert reads_by_name(steps=[HOME, PRICING, A])
    assert reads_by_name(steps=[A, B], order="unordered")
    assert reads_by_name(
        steps=[A, B], exclusions=[FunnelExclusion(event="X", from_step=1, to_step=2)]
    )
    # The whole interactive sequence, a step of any event, costly columns: filtered in SQL.
    assert not reads_by_name(steps=[A, B], order="strict")
    assert not reads_by_name(steps=[FunnelStep("$any"), B])
    assert not reads_by_name(
        steps=[A, B], exclusions=[FunnelExclusion(event="$any", from_step=1, to_step=2)]
    )
    assert not reads_by_name(steps=[A, B], breakdown="country")
    assert not reads_by_name(steps=[FunnelStep("A", [Condition("person.plan", "eq", "pro")]), B])
    assert not reads_by_name("experiment_floor", steps=[A, B])


def test_overlapping_steps_at_one_timestamp_follow_event_ids() -> None:
    # The documented tie rule: at one timestamp events go in order of the first step they
    # satisfy, then by event id. With the pricing view first (e1) it is step 1 and no later
    # pricing view remains for step 2; the home view after it starts an attempt of its own.
    swapped = Case(
        [pv("p", "/pricing", at(0), "e1"), pv("p", "/", at(0), "e2")], [ANY_PAGE, PRICING], [1, 0]
    )
    assert counts_of(swapped)[0] == [1, 0]
    # The same events read in the other order: the ids still decide, whatever the read order
    # (the rows differ, so the funnel reads them again with their ids).
    reversed_rows = Case(list(reversed(swapped.events)), swapped.steps, [1, 0])
    assert counts_of(reversed_rows)[0] == [1, 0]
    assert counts_of(reversed_rows, True)[0] == [1, 0]


def test_breakdown_takes_the_value_of_the_first_step() -> None:
    events = numbered(
        [
            ev("p", "A", at(0), properties={"plan": "pro"}),
            ev("p", "B", at(1), properties={"plan": "free"}),
            ev("q", "A", at(0), properties={"plan": "free"}),
            ev("r", "A", at(0)),
            ev("r", "B", at(5)),
        ]
    )
    con = scan_connection(events)
    spec = funnel_spec(FunnelRequest(steps=[A, B], breakdown="plan"))
    result = run_funnel(
        con, spec, EventScope(FROM, TO + timedelta(days=14)), epoch_us(FROM), epoch_us(TO)
    )
    assert [(v, [s.count for s in c.steps]) for v, c in result.breakdown] == [
        ("(none)", [1, 1]),
        ("free", [1, 0]),
        ("pro", [1, 1]),
    ]
    assert [s.count for s in result.total.steps] == [3, 2]


def test_person_trait_breakdown_and_condition() -> None:
    events = numbered(
        [ev("p", "A", at(0)), ev("p", "B", at(1)), ev("q", "A", at(0)), ev("q", "B", at(1))]
    )
    con = scan_connection(events, {"p": {"plan": "pro"}, "q": {"plan": "free"}})
    steps = [A, FunnelStep("B", [Condition("person.plan", "eq", "pro")])]
    spec = funnel_spec(FunnelRequest(steps=steps, breakdown="person.plan"))
    result = run_funnel(
        con, spec, EventScope(FROM, TO + timedelta(days=14)), epoch_us(FROM), epoch_us(TO)
    )
    assert [(v, [s.count for s in c.steps]) for v, c in result.breakdown] == [
        ("free", [1, 0]),
        ("pro", [1, 1]),
    ]


def test_step_results_rates_and_drop_offs() -> None:
    events = []
    for i, reached in enumerate([3, 3, 2, 1]):
        for k, name in enumerate("ABC"[:reached]):
            events.append(ev(f"p{i}", name, at(k)))
    con = scan_connection(numbered(events))
    spec = funnel_spec(FunnelRequest(steps=[A, B, C]))
    result = run_funnel(
        con, spec, EventScope(FROM, TO + timedelta(days=14)), epoch_us(FROM), epoch_us(TO)
    )
    steps = step_results(spec, result.total)
    assert [s.count for s in steps] == [4, 3, 2]
    assert [s.conversion_from_first for s in steps] == [1.0, 0.75, 0.5]
    # Shares are answered to 0.1 percentage point.
    assert [s.conversion_from_previous for s in steps] == [1.0, 0.75, 0.667]
    assert [s.drop_off for s in steps] == [0, 1, 1]
    assert [s.drop_off_rate for s in steps] == [0.0, 0.25, 0.333]
    assert [s.avg_time_from_previous_s for s in steps] == [None, 60.0, 60.0]


def test_time_to_convert_is_a_histogram_of_whole_second_bins() -> None:
    # A to C in 60 s, 120 s, 600 s and 630 s; p4 never reaches C.
    events = []
    for person, seconds in (("p0", 60), ("p1", 120), ("p2", 600), ("p3", 630)):
        events += [
            ev(person, "A", at(0)),
            ev(person, "B", at(0, seconds=30)),
            ev(person, "C", at(0, seconds=seconds)),
        ]
    events += [ev("p4", "A", at(0)), ev("p4", "B", at(1))]
    con = scan_connection(numbered(events))
    spec = funnel_spec(FunnelRequest(steps=[A, B, C]))
    scope = EventScope(FROM, TO + timedelta(days=14))

    def histogram(**wanted: Any) -> Any:
        result = run_funnel(
            con, spec, scope, epoch_us(FROM), epoch_us(TO), None, TimeToConvertSpec(**wanted)
        )
        return result.time_to_convert

    found = histogram()  # first to last step, about sqrt(4) = 2 bins
    assert (found.persons, found.avg_s, found.median_s) == (4, 352.5, 360.0)
    assert [(b.from_s, b.to_s, b.persons) for b in found.bins] == [
        (60.0, 346.0, 2),
        (346.0, 632.0, 2),
    ]
    found = histogram(bins=3)
    assert [b.persons for b in found.bins] == [2, 0, 2] and found.bins[-1].to_s > 630
    found = histogram(from_step=1, to_step=2)  # A to B: everyone who reached B, 30 or 60 s
    assert (found.persons, found.bins[0].from_s) == (5, 30.0)
    assert sum(b.persons for b in found.bins) == 5


def test_any_event_is_every_action_but_identity_calls() -> None:
    events = [
        ev("p", "$pageview", at(0)),
        ev("p", "B", at(1)),
        ev("q", "$identify", at(0)),  # bookkeeping: not an action
        ev("q", "B", at(1)),
    ]
    case = Case(events, [FunnelStep("$any"), B], [2, 1])
    assert counts_of(case)[0] == [2, 1]  # q's B is q's first action; nothing follows it


def test_persons_at_a_step_are_paged_by_id() -> None:
    events = [ev(f"p{i}", "A", at(0)) for i in range(5)]
    events += [ev(f"p{i}", "B", at(1)) for i in (0, 2, 3)]
    con = scan_connection(numbered(events))
    spec = funnel_spec(FunnelRequest(steps=[A, B]))
    query = FunnelQuery(spec, EventScope(FROM, TO + timedelta(days=14)))
    query.prepare(con, epoch_us(FROM), epoch_us(TO))
    first, cursor = query.person_ids(con, PersonsPage(step=2, limit=2))
    assert first == ["p0", "p2"] and cursor is not None
    rest, cursor = query.person_ids(con, PersonsPage(step=2, limit=2, cursor=cursor))
    assert rest == ["p3"] and cursor is None
    dropped, _ = query.person_ids(con, PersonsPage(step=2, status="dropped"))
    assert dropped == ["p1", "p4"]
    everyone, _ = query.person_ids(con, PersonsPage(step=1, limit=1), everyone=True)
    assert everyone == ["p0", "p1", "p2", "p3", "p4"]


def test_filters_and_bots_restrict_the_events() -> None:
    events = numbered(
        [
            ev("p", "A", at(0), country="DE"),
            ev("p", "B", at(1), country="US"),
            ev("q", "A", at(0), country="DE", is_bot=True),
            ev("q", "B", at(1), country="DE", is_bot=True),
        ]
    )
    con = scan_connection(events)
    spec = funnel_spec(FunnelRequest(steps=[A, B]))
    filters = parse_body_filters(FunnelRequest(steps=[A, B], filters=["country:DE"]))
    scope = EventScope(FROM, TO + timedelta(days=14), filters=filters)
    counts = [
        s.count for s in run_funnel(con, spec, scope, epoch_us(FROM), epoch_us(TO)).total.steps
    ]
    assert counts == [1, 0]
    with_bots = EventScope(FROM, TO + timedelta(days=14), include_bots=True)
    counts = [
        s.count for s in run_funnel(con, spec, with_bots, epoch_us(FROM), epoch_us(TO)).total.steps
    ]
    assert counts == [2, 2]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (dict(steps=[A]), "steps"),
        (dict(steps=[A] * 21), "steps"),
        (dict(steps=[A, B], order="sideways"), "order"),
        (dict(steps=[A, B], window=WindowSpec(1, "fortnight")), "window.unit"),
        (dict(steps=[A, B], window=WindowSpec(0, "day")), "window.value"),
        (
            dict(steps=[A, B], exclusions=[FunnelExclusion("X", from_step=2, to_step=2)]),
            "exclusions[0].from_step",
        ),
        (
            dict(steps=[A, B, C], exclusions=[FunnelExclusion("X", from_step=2, to_step=2)]),
            "exclusions[0].to_step",
        ),
        (dict(steps=[A, B], order="unordered", exclusions=[FunnelExclusion("X")]), "exclusions"),
        (dict(steps=[A, B], exclusions=[FunnelExclusion("X")] * 21), "exclusions"),
        (
            dict(
                steps=[A, FunnelStep("B", [Condition("path", "like", "x")])],
            ),
            "steps[1].conditions[0].operator",
        ),
    ],
)
def test_bad_funnels_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as caught:
        spec = funnel_spec(FunnelRequest(**body))
        # Condition problems surface when the SQL is built.
        con = scan_connection([])
        run_funnel(con, spec, EventScope(FROM, TO), epoch_us(FROM), epoch_us(TO))
    assert caught.value.param == field
