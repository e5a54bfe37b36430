"""Paths, rule by rule, on hand-built sessions with nodes and edges worked out by hand (each
answer the same with persons read as ids or as integer keys)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from services.query.analyses.conditions import EventScope
from services.query.analyses.paths import PathsResult, _persons_of, paths_spec, run_paths
from services.query.analyses.requests import CleaningRule, PathsRequest
from services.query.params import ParamError
from tests.support.analysis_events import Ev, at, numbered, scan_connection

FROM, TO = at(-60), at(days=1)
SESSION_MAX = timedelta(days=1)


def session(person: str, sid: str, start: datetime, *steps: str) -> list[Ev]:
    """A session's events a minute apart: `/x` is a pageview, a bare name a custom event."""
    out = []
    for i, step in enumerate(steps):
        ts = start + timedelta(minutes=i)
        if step.startswith("/"):
            out.append(Ev(person, "$pageview", ts, path=step, session_id=sid))
        else:
            out.append(Ev(person, step, ts, session_id=sid))
    return out


def paths(events: list[Ev], **request: Any) -> PathsResult:
    """The answer, the same whether persons are read as ids or as integer keys."""
    con = scan_connection(numbered(events))
    spec = paths_spec(PathsRequest(**request))
    by_id, by_key = (
        run_paths(
            con,
            spec,
            EventScope(FROM - SESSION_MAX, TO + SESSION_MAX, person_keys=keys),
            FROM,
            TO,
            SESSION_MAX,
        )
        for keys in (False, True)
    )
    assert by_key == by_id
    return by_id


def edges(result: PathsResult) -> dict[str, int]:
    return {f"{e.step}_{e.source} -> {e.step + 1}_{e.target}": e.value for e in result.edges}


def nodes(result: PathsResult) -> dict[str, tuple[int, int]]:
    return {f"{n.step}_{n.name}": (n.count, n.drop_offs) for n in result.nodes}


def test_nodes_are_step_indexed_and_edges_count_occurrences_not_persons() -> None:
    # One person, two sessions taking / -> /pricing: the edge counts 2.
    events = session("p", "s1", at(0), "/", "/pricing") + session(
        "p", "s2", at(120), "/", "/pricing", "/signup"
    )
    result = paths(events)
    assert edges(result) == {"1_/ -> 2_/pricing": 2, "2_/pricing -> 3_/signup": 1}
    assert nodes(result) == {"1_/": (2, 0), "2_/pricing": (2, 1), "3_/signup": (1, 1)}
    assert (result.paths, result.persons) == (2, 1)


def test_cleaning_rules_trailing_slashes_and_repeats() -> None:
    events = session("p", "s1", at(0), "/user/12/", "/user/7", "/pricing/", "/pricing")
    result = paths(events, cleaning_rules=[CleaningRule(r"^/user/\d+$", "/user/:id")])
    # /user/12/ -> /user/12 -> /user/:id; /user/7 too: one node; /pricing/ == /pricing.
    assert edges(result) == {"1_/user/:id -> 2_/pricing": 1}
    assert nodes(result) == {"1_/user/:id": (1, 0), "2_/pricing": (1, 1)}


def test_a_label_depends_on_the_value_and_on_whether_it_is_a_page() -> None:
    # Labels are made once per distinct (value, pageview or not): a custom event named like a
    # page path keeps its name as given, a page path loses its trailing slash.
    events = session("p", "s1", at(0), "/docs/")
    events.append(Ev("p", "/docs/", at(0, seconds=30), session_id="s1"))
    # A pageview without a path and one with an empty path are both `(none)`, as is a custom
    # event of that name: one node, the repeats collapsed.
    events += [
        Ev("q", "$pageview", at(10), session_id="s2"),
        Ev("q", "$pageview", at(10, seconds=10), path="", session_id="s2"),
        Ev("q", "(none)", at(10, seconds=20), session_id="s2"),
        Ev("q", "$pageview", at(10, seconds=30), path="/x", session_id="s2"),
    ]
    result = paths(events, event_types=["pageview", "custom"])
    assert edges(result) == {"1_/docs -> 2_/docs/": 1, "1_(none) -> 2_/x": 1}
    assert nodes(result)["1_(none)"] == (1, 0)


def test_persons_are_those_of_the_nodes_counted() -> None:
    # Each session's third event carries another person (a user id no alias links): counted
    # when the path keeps that node, not when the path is cut before it.
    # (Listed out of time order: rows reach the analysis in any order.)
    events = [
        Ev("q", "$pageview", at(2), path="/b", session_id="s1"),
        Ev("r", "$pageview", at(12), path="/b", session_id="s2"),
    ]
    events += session("p", "s1", at(0), "/", "/a") + session("p", "s2", at(10), "/", "/a")
    assert (paths(events, steps=2).paths, paths(events, steps=2).persons) == (2, 1)
    assert (paths(events, steps=3).paths, paths(events, steps=3).persons) == (2, 3)


def test_persons_are_counted_alike_from_ids_and_from_keys_dense_or_not() -> None:
    # Rows in any order, one person's rows mostly together, as scans hand them over.
    rng = np.random.default_rng(7)
    people = rng.integers(0, 50, 400)
    rows = rng.permutation(400)[:250]
    ids = pa.chunked_array(
        [pa.array([f"u{p}" for p in people[:200]]), [f"u{p}" for p in people[200:]]]
    )
    expected = len({int(p) for p in people[rows]})
    assert _persons_of(ids, rows) == expected
    for scale in (1, 10**12):  # keys of a dense span, and keys too spread for one flag each
        keys = pa.chunked_array([pa.array(people * scale + 5, pa.int64())])
        assert _persons_of(keys, rows) == expected
    assert _persons_of(ids, rows[:0]) == 0


def test_start_point_cuts_everything_before_its_first_match() -> None:
    events = session("p", "s1", at(0), "/", "/docs", "/pricing", "/signup", "/pricing", "/docs")
    events += session("q", "s2", at(10), "/", "/docs")  # never reaches the start point
    result = paths(events, start_point="/pricing", steps=3)
    assert edges(result) == {"1_/pricing -> 2_/signup": 1, "2_/signup -> 3_/pricing": 1}
    assert result.paths == 1


def test_start_and_end_points_are_normalised_like_the_labels() -> None:
    events = session("p", "s1", at(0), "/", "/user/12/", "/pricing", "/signup")
    rules = [CleaningRule(r"^/user/\d+$", "/user/:id")]
    result = paths(events, start_point="/user/7/", end_point="/pricing/", cleaning_rules=rules)
    assert edges(result) == {"1_/user/:id -> 2_/pricing": 1}


def test_points_and_labels_lose_trailing_slashes_alike_without_cleaning_rules() -> None:
    # Without cleaning rules labels are made in Python and the points by the label SQL:
    # `/docs//` finds `/docs/`'s node, `/` stays `/`, and an empty path is `(none)`.
    events = session("p", "s1", at(0), "/", "/docs/", "/", "signup")
    events.append(Ev("p", "$pageview", at(5), path="", session_id="s1"))
    result = paths(events, event_types=["pageview", "custom"], start_point="/docs//", steps=4)
    assert edges(result) == {
        "1_/docs -> 2_/": 1,
        "2_/ -> 3_signup": 1,
        "3_signup -> 4_(none)": 1,
    }
    assert paths(events, end_point="//").paths == 1


def test_per_person_a_path_runs_across_the_persons_sessions() -> None:
    # p's two sessions: / -> /pricing, then /pricing -> /signup (a repeat across sessions
    # collapses too); q has one.
    events = session("p", "s1", at(0), "/", "/pricing") + session(
        "p", "s2", at(120), "/pricing", "/signup"
    )
    events += session("q", "s3", at(10), "/", "/docs")
    result = paths(events, per="person")
    assert edges(result) == {
        "1_/ -> 2_/pricing": 1,
        "2_/pricing -> 3_/signup": 1,
        "1_/ -> 2_/docs": 1,
    }
    assert (result.paths, result.persons) == (2, 2)
    assert nodes(result)["3_/signup"] == (1, 1)


def test_end_point_keeps_the_steps_leading_to_it() -> None:
    events = session("p", "s1", at(0), "/", "/docs", "/pricing", "signup", "/docs")
    events += session("q", "s2", at(10), "/", "signup")
    events += session("r", "s3", at(20), "/", "/docs")  # never reaches the end point
    result = paths(events, event_types=["pageview", "custom"], end_point="signup", steps=3)
    assert edges(result) == {
        "1_/docs -> 2_/pricing": 1,
        "2_/pricing -> 3_signup": 1,
        "1_/ -> 2_signup": 1,
    }
    # Paths that reached the end point did not drop off there.
    assert nodes(result)["3_signup"] == (1, 0)


def test_steps_limit_and_drop_offs() -> None:
    events = session("p", "s1", at(0), "/", "/a", "/b", "/c")
    events += session("q", "s2", at(10), "/", "/a")
    result = paths(events, steps=3)
    assert edges(result) == {"1_/ -> 2_/a": 2, "2_/a -> 3_/b": 1}
    # q's session ended at /a; p's went on past the third step (not a drop-off).
    assert nodes(result) == {"1_/": (2, 0), "2_/a": (2, 1), "3_/b": (1, 0)}


def test_top_edges_are_cut_to_the_limit() -> None:
    events = []
    for i in range(3):
        events += session(f"p{i}", f"s{i}", at(i), "/", "/pricing")
    events += session("q", "sq", at(30), "/", "/docs")
    result = paths(events, edge_limit=1)
    assert edges(result) == {"1_/ -> 2_/pricing": 3}
    assert result.edges_truncated


def test_many_distinct_labels_count_the_same() -> None:
    # 300 pages: too many possible (step, label, label) keys for one counter each, so nodes
    # and edges are counted by sorting instead.
    events = []
    for i in range(300):
        events += session(f"p{i}", f"s{i}", at(i), f"/page/{i}", "/x", f"/page/{i % 2}")
    result = paths(events, edge_limit=1000)
    found = edges(result)
    assert len(found) == 302 and sum(found.values()) == 600
    assert found["1_/page/7 -> 2_/x"] == 1
    assert (found["2_/x -> 3_/page/0"], found["2_/x -> 3_/page/1"]) == (150, 150)
    assert nodes(result)["2_/x"] == (300, 0)
    assert nodes(result)["3_/page/1"] == (150, 150)


def test_custom_events_and_event_types() -> None:
    events = session("p", "s1", at(0), "/", "signup", "$identify", "/welcome")
    assert edges(paths(events)) == {"1_/ -> 2_/welcome": 1}
    assert edges(paths(events, event_types=["pageview", "custom"])) == {
        "1_/ -> 2_signup": 1,
        "2_signup -> 3_/welcome": 1,
    }
    assert edges(paths(events, event_types=["custom"])) == {}


def test_sessions_are_those_starting_in_the_range() -> None:
    events = session("p", "s1", FROM - timedelta(minutes=5), "/old", "/a", "/b", "/c", "/d", "/e")
    events += session("q", "s2", TO - timedelta(minutes=1), "/late", "/after")  # crosses `to`
    result = paths(events)
    assert edges(result) == {"1_/late -> 2_/after": 1}


def test_non_interactive_events_are_not_steps() -> None:
    events = session("p", "s1", at(0), "/", "/a")
    events.append(Ev("p", "scroll", at(0, seconds=30), session_id="s1", non_interactive=True))
    assert edges(paths(events, event_types=["pageview", "custom"])) == {"1_/ -> 2_/a": 1}


def test_no_path_events_give_no_paths() -> None:
    events = [Ev("p", "scroll", at(0), session_id="s1", non_interactive=True)]
    result = paths(events, event_types=["pageview", "custom"])
    assert (result.paths, result.persons, result.nodes, result.edges) == (0, 0, [], [])


@pytest.mark.parametrize("per", ["session", "person"])
def test_events_at_one_timestamp_follow_event_ids(per: str) -> None:
    # Two different pages at one timestamp: event ids order them, whichever comes first in
    # the rows read (s1 lists the later id first, s2 the earlier).
    tie = at(0)
    events = [
        Ev("p", "$pageview", tie, event_id="e2", path="/b", session_id="s1"),
        Ev("p", "$pageview", tie, event_id="e1", path="/a", session_id="s1"),
        Ev("p", "$pageview", tie + timedelta(minutes=1), event_id="e3", path="/c", session_id="s1"),
        Ev("q", "$pageview", tie, event_id="e4", path="/a", session_id="s2"),
        Ev("q", "$pageview", tie, event_id="e5", path="/b", session_id="s2"),
        Ev("q", "$pageview", tie + timedelta(minutes=1), event_id="e6", path="/c", session_id="s2"),
    ]
    result = paths(events, per=per)
    assert edges(result) == {"1_/a -> 2_/b": 2, "2_/b -> 3_/c": 2}
    assert (result.paths, result.persons) == (2, 2)


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"event_types": []}, "event_types"),
        ({"event_types": ["screens"]}, "event_types[0]"),
        ({"steps": 21}, "steps"),
        ({"steps": 1}, "steps"),
        ({"cleaning_rules": [CleaningRule("(?=x)", "y")]}, "cleaning_rules[0].regex"),
        ({"edge_limit": 0}, "edge_limit"),
        ({"start_point": ""}, "start_point"),
    ],
)
def test_bad_paths_requests_name_the_field(request_body: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as caught:
        paths_spec(PathsRequest(**request_body))
    assert caught.value.param == field
