"""Property conditions: every operator against a table of values, person traits, nested keys,
values always bound (never pasted into SQL), and a 400 naming the field for bad ones."""

from __future__ import annotations

from typing import Any

import pytest

from services.query.analyses.conditions import conditions_sql
from services.query.analyses.requests import Condition
from services.query.metric_query import SqlParams
from services.query.params import ParamError
from tests.support.analysis_events import Ev, at, numbered, scan_connection
from tests.support.reference_analytics import selector_holds

EVENTS = numbered(
    [
        Ev("p1", "buy", at(0), path="/a", properties={"plan": "pro", "amount": 42, "ok": True}),
        Ev("p2", "buy", at(1), path="/b", properties={"plan": "Free", "amount": "7.5"}),
        Ev("p3", "buy", at(2), properties={"plan": None, "meta": {"tier": "gold"}}),
        Ev("p4", "buy", at(3), properties={"odd key.with dot": "x", "amount": 100}),
    ]
)
TRAITS = {"p1": {"company": {"size": 50}}, "p2": {"company": {"size": 5}}}


def matching(*conditions: Condition, in_filter: bool = False) -> list[str]:
    con = scan_connection(EVENTS, TRAITS)
    params = SqlParams()
    where = conditions_sql("conditions", conditions, params, in_filter=in_filter)
    rows = con.execute(
        "SELECT e.person_id FROM events_scan e LEFT JOIN persons pt"
        f" ON pt.person_id = e.person_id WHERE {where} ORDER BY 1",
        params.values,
    ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize(
    ("condition", "persons"),
    [
        (Condition("plan", "eq", "pro"), ["p1"]),
        (Condition("plan", "eq", ["pro", "Free"]), ["p1", "p2"]),
        (Condition("plan", "neq", "pro"), ["p2", "p3", "p4"]),  # missing/null differ too
        (Condition("amount", "eq", 42), ["p1"]),
        (Condition("amount", "eq", 7.5), ["p2"]),  # "7.5" as text compares numerically
        (Condition("amount", "gt", 7.5), ["p1", "p4"]),
        (Condition("amount", "gte", 7.5), ["p1", "p2", "p4"]),
        (Condition("amount", "lt", 42), ["p2"]),
        (Condition("amount", "lte", 42), ["p1", "p2"]),
        (Condition("ok", "eq", True), ["p1"]),
        (Condition("plan", "contains", "FRE"), ["p2"]),  # case-insensitive
        (Condition("plan", "not_contains", "r"), ["p3", "p4"]),
        (Condition("plan", "regex", "^[pF]"), ["p1", "p2"]),
        (Condition("plan", "not_regex", "^p"), ["p2", "p3", "p4"]),
        (Condition("plan", "is_set"), ["p1", "p2"]),  # JSON null is not set
        (Condition("plan", "is_not_set"), ["p3", "p4"]),
        (Condition("path", "eq", "/b"), ["p2"]),
        (Condition("path", "is_not_set"), ["p3", "p4"]),
        (Condition("properties.meta.tier", "eq", "gold"), ["p3"]),
        (Condition("odd key.with dot", "eq", "x"), ["p4"]),
        (Condition("person.company.size", "gte", 10), ["p1"]),
        (Condition("person.company.size", "is_not_set"), ["p3", "p4"]),
    ],
)
@pytest.mark.parametrize("in_filter", [False, True], ids=["value", "in-filter"])
def test_operator(condition: Condition, persons: list[str], in_filter: bool) -> None:
    # In a filter, positive conditions drop their coalesce; the rows kept must not change
    # (and negative ones still match a missing property).
    assert matching(condition, in_filter=in_filter) == persons


@pytest.mark.parametrize("in_filter", [False, True], ids=["value", "in-filter"])
def test_conditions_are_all_required(in_filter: bool) -> None:
    conditions = (Condition("amount", "gt", 5), Condition("plan", "neq", "pro"))
    assert matching(*conditions, in_filter=in_filter) == ["p2", "p4"]


def test_values_are_bound_never_pasted() -> None:
    hostile = "pro' OR '1'='1"
    assert matching(Condition("plan", "eq", hostile)) == []
    assert matching(Condition("x'); DROP TABLE persons; --", "is_set")) == []
    assert matching(Condition("plan", "is_set")) == ["p1", "p2"]  # persons is still there


@pytest.mark.parametrize(
    ("condition", "field", "problem"),
    [
        (Condition("plan", "like", "x"), "conditions[0].operator", "unknown operator"),
        (Condition("plan", "eq"), "conditions[0].value", "needs a value"),
        (Condition("plan", "eq", []), "conditions[0].value", "at least one"),
        (Condition("amount", "gt", "ten"), "conditions[0].value", "needs a number"),
        (Condition("amount", "gt", [1, 2]), "conditions[0].value", "single value"),
        (Condition("plan", "regex", "(?<=a)b"), "conditions[0].value", "invalid regular"),
        (Condition("plan", "contains", 3), "conditions[0].value", "needs text"),
        (Condition("person.", "is_set"), "conditions[0].property", "not a property name"),
        (Condition('pl"an', "is_set"), "conditions[0].property", "not a property name"),
    ],
)
def test_bad_conditions_name_the_field(condition: Condition, field: str, problem: str) -> None:
    with pytest.raises(ParamError) as caught:
        conditions_sql("conditions", [condition], SqlParams())
    assert caught.value.param == field
    assert problem in caught.value.problem


def test_hostile_property_names_are_rejected_or_bound() -> None:
    # Quotes can not break out of the JSON path: they are refused before any SQL is built.
    with pytest.raises(ParamError):
        conditions_sql("c", [Condition('a"b', "eq", "x")], SqlParams())
    params = SqlParams()
    sql: Any = conditions_sql("c", [Condition("a b'c", "eq", "x")], params)
    assert "a b'c" not in sql and '$."a b\'c"' in params.values


CHAIN = "html > body > main#app > form#signup.card > div.row > button#buy.btn.primary"


@pytest.mark.parametrize(
    ("selector", "holds"),
    [
        ("button", True),
        ("button#buy", True),
        ("button.primary", True),
        (".btn.primary", True),  # classes in any order
        ("button.primary.secondary", False),
        ("form button", True),  # descendant at any depth
        ("form > button", False),  # not a direct child
        ("form > div > button.btn", True),
        ("#signup.card .row > #buy", True),
        ("main#app form.card button", True),
        ("form", False),  # the clicked element is the button
        ("a.btn", False),
        ("*#buy", True),
        ("but", False),  # a tag matches whole
    ],
)
def test_selector_matches_the_clicked_elements_chain(selector: str, holds: bool) -> None:
    clicks = numbered(
        [
            Ev("clicker", "$click", at(0), properties={"tag": "button", "$elements": CHAIN}),
            Ev("other", "$click", at(1), properties={"tag": "a", "$elements": "body > a.btn"}),
        ]
    )
    con = scan_connection(clicks)
    params = SqlParams()
    where = conditions_sql("c", [Condition("element", "selector", selector)], params)
    found = con.execute(f"SELECT e.person_id FROM events_scan e WHERE {where}", params.values)
    assert ("clicker" in [r[0] for r in found.fetchall()]) == holds
    assert selector_holds(selector, CHAIN) == holds


@pytest.mark.parametrize("selector", ["", "button[type=submit]", "a:hover", "form >> a", "> a"])
def test_unsupported_selectors_are_a_400(selector: str) -> None:
    with pytest.raises(ParamError) as raised:
        conditions_sql(
            "steps[0].conditions", [Condition("element", "selector", selector)], SqlParams()
        )
    assert raised.value.param.startswith("steps[0].conditions[0]")
