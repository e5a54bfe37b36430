"""The analyses over HTTP against the real query app, PostgreSQL and the event scan: keys,
every endpoint's answer on stored events (persons merged across their ids), 400s naming the
field, cohort CRUD and versioning, cohorts as filters (analyses and the metrics endpoint),
custom metrics in the metrics endpoint, experiments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from libs.common.schemas.events_v1 import IDENTIFY, PAGEVIEW, EventV1
from libs.common.subjects import Subjects
from services.aggregator.writer import write_events
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client

pytestmark = pytest.mark.infra

API = "/api/v1/analytics"
DAY = datetime(2025, 5, 5, tzinfo=UTC)  # a Monday
RANGE = {"from": "2025-05-05", "to": "2025-05-11"}


def ev(
    event_id: str,
    ts: datetime,
    name: str,
    *,
    anon: str | None = None,
    user: str | None = None,
    path: str | None = None,
    session: str = "s",
    **fields: Any,
) -> EventV1:
    return EventV1(
        event_id=event_id,
        project_id="acme",
        type="page" if name == PAGEVIEW else ("identify" if name == IDENTIFY else "track"),
        name=name,
        ts=ts,
        received_at=ts,
        distinct_id=anon or user or "",
        anonymous_id=anon,
        user_id=user,
        session_id=session,
        path=path,
        **fields,
    )


def shop_events() -> list[EventV1]:
    """u1 browses anonymously (a1), signs up (linking a1 to u1) and buys as u1; u2 signs up
    anonymously; u3 only looks; a bot does everything."""
    t = DAY + timedelta(hours=10)
    m = timedelta(minutes=1)
    return [
        ev("e1", t, PAGEVIEW, anon="a1", path="/", session="s1"),
        ev("e2", t + 5 * m, "signup", anon="a1", user="u1", session="s1"),
        ev("e3", t + 6 * m, IDENTIFY, anon="a1", user="u1", session="s1", traits={"plan": "pro"}),
        ev("e4", t + 10 * m, "purchase", user="u1", session="s1", properties={"amount": 30}),
        ev("e5", t + 60 * m, PAGEVIEW, anon="a2", path="/", session="s2"),
        ev("e6", t + 65 * m, "signup", anon="a2", session="s2"),
        ev("e7", t + 120 * m, PAGEVIEW, anon="a3", path="/", session="s3"),
        ev("e8", t + 121 * m, PAGEVIEW, anon="a3", path="/pricing/", session="s3"),
        ev("e9", t, PAGEVIEW, anon="bot", path="/", session="sb", is_bot=True),
        ev("e10", t + m, "signup", anon="bot", session="sb", is_bot=True),
        ev("e11", t + 2 * m, "purchase", anon="bot", session="sb", is_bot=True),
        # u2 comes back the next day
        ev("e12", t + timedelta(days=1), "signup", anon="a2", session="s4"),
    ]


FUNNEL = {
    **RANGE,
    "steps": [
        {"event": PAGEVIEW, "conditions": [{"property": "path", "operator": "eq", "value": "/"}]},
        {"event": "signup"},
        {"event": "purchase"},
    ],
}


async def post_json(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    key: str | None,
    body: Any,
    method: str = "POST",
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with client.request(method, path, json=body, headers=headers) as resp:
        if resp.status == 204:
            return resp.status, None
        return resp.status, await resp.json()


@pytest.fixture
async def shop(pool: asyncpg.Pool, project: TestProject) -> TestProject:
    async with pool.acquire() as conn:
        await write_events(conn, shop_events())
    return project


async def test_funnel_over_http(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, shop: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        url = f"{API}/funnels"
        assert (await post_json(client, url, None, FUNNEL))[0] == 401
        assert (await post_json(client, url, shop.write_key, FUNNEL))[0] == 403
        status, body = await post_json(client, url, shop.read_key, FUNNEL)
        assert status == 200, body
        # u1 is one person across a1 and u1; the bot is left out.
        assert [s["count"] for s in body["steps"]] == [3, 2, 1]
        assert [s["drop_off"] for s in body["steps"]] == [0, 1, 1]
        assert body["steps"][1]["median_time_from_previous_s"] == 300.0
        # u1 took 10 minutes from the home page to the purchase: one bin, one person.
        assert body["time_to_convert"] == {
            "from_step": 1,
            "to_step": 3,
            "persons": 1,
            "avg_s": 600.0,
            "median_s": 600.0,
            "bins": [{"from_s": 600.0, "to_s": 601.0, "persons": 1}],
        }
        assert body["steps"][2]["conversion_from_first"] == 0.333  # rounded to 0.1 point
        assert [t["tier"] for t in body["tiers"]] == ["hot"] and body["tiers"][0]["rows"] > 0
        assert body["window"] == {"value": 14, "unit": "day", "seconds": 14 * 86400}

        paged = {**FUNNEL, "persons": {"step": 3}}
        status, body = await post_json(client, url, shop.read_key, paged)
        assert body["persons"]["person_ids"] == ["u1"] and body["persons"]["next_cursor"] is None
        dropped = {**FUNNEL, "persons": {"step": 2, "status": "dropped"}}
        status, body = await post_json(client, url, shop.read_key, dropped)
        assert body["persons"]["person_ids"] == ["a3"]

        by_path = {**FUNNEL, "breakdown": "path", "include_bots": True}
        status, body = await post_json(client, url, shop.read_key, by_path)
        assert [s["count"] for s in body["steps"]] == [4, 3, 2]
        assert body["breakdown"]["values"] == [
            {"value": "/", "steps": body["breakdown"]["values"][0]["steps"]}
        ]

        filtered = {**FUNNEL, "filters": ["event:$pageview"]}
        status, body = await post_json(client, url, shop.read_key, filtered)
        assert [s["count"] for s in body["steps"]] == [3, 0, 0]


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({**RANGE}, "steps", "missing required field"),
        ({**FUNNEL, "order": "sideways"}, "order", "must be one of"),
        ({**FUNNEL, "window": {"value": 1, "unit": "fortnight"}}, "window.unit", "must be one of"),
        ({**FUNNEL, "steps": [{"event": "a"}]}, "steps", "2 to 20 steps"),
        ({**FUNNEL, "steps": [{"event": 3}, {"event": "b"}]}, "steps[0].event", "Expected `str`"),
        ({**FUNNEL, "colour": "red"}, "colour", "unknown field"),
        ({**FUNNEL, "from": "the day before"}, "from", "not an ISO date"),
        ({**FUNNEL, "date_range": "7d"}, "date_range", "not both"),
        ({**FUNNEL, "timezone": "Mars/Olympus"}, "timezone", "unknown IANA time zone"),
        ({**FUNNEL, "filters": ["planet:mars"]}, "filters", "unknown dimension"),
        ({**FUNNEL, "cohorts": ["nope"]}, "cohorts[0]", "unknown cohort"),
        (
            {
                **FUNNEL,
                "steps": [
                    {
                        "event": "a",
                        "conditions": [{"property": "p", "operator": "gt", "value": "x"}],
                    },
                    {"event": "b"},
                ],
            },
            "steps[0].conditions[0].value",
            "needs a number",
        ),
        ({**FUNNEL, "persons": {"step": 9}}, "persons.step", "between 1 and 3"),
    ],
)
async def test_bad_funnel_bodies_get_a_400_naming_the_field(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    body: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        status, answer = await post_json(client, f"{API}/funnels", project.read_key, body)
    assert status == 400, answer
    assert answer["param"] == field and problem in answer["error"], answer


async def test_malformed_json_is_a_400(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        headers = {"Authorization": f"Bearer {project.read_key}"}
        for url in ("funnels", "retention", "paths", "experiments/analyze", "cohorts"):
            async with client.post(f"{API}/{url}", data=b"{not json", headers=headers) as resp:
                assert resp.status == 400, url
                assert (await resp.json())["param"] == "body"


async def test_retention_and_paths_over_http(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, shop: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        body = {
            "from": "2025-05-05",
            "to": "2025-05-06",
            "start_event": {"event": "signup"},
            "return_event": {"event": "signup"},
            "intervals": 2,
        }
        status, answer = await post_json(client, f"{API}/retention", shop.read_key, body)
        assert status == 200, answer
        # Day 5: u1 and u2 sign up; u2 signs up again on day 6 (offset 1). Day 6: u2.
        assert [(r["period_start"][:10], r["counts"]) for r in answer["matrix"]] == [
            ("2025-05-05", [2, 1, 0]),
            ("2025-05-06", [1, 0, 0]),
        ]
        assert answer["matrix"][0]["percentages"] == [1.0, 0.5, 0.0]
        status, answer = await post_json(
            client, f"{API}/retention", shop.read_key, {**body, "period": "quarter"}
        )
        assert (status, answer["param"]) == (400, "period")

        body = {**RANGE, "event_types": ["pageview", "custom"], "steps": 3}
        status, answer = await post_json(client, f"{API}/paths", shop.read_key, body)
        assert status == 200, answer
        edges = {(e["source"], e["target"]): e["value"] for e in answer["edges"]}
        assert edges == {
            ("1_/", "2_signup"): 2,
            ("2_signup", "3_purchase"): 1,
            ("1_/", "2_/pricing"): 1,
        }
        assert answer["sessions"] == 4 and answer["persons"] == 3
        status, answer = await post_json(
            client,
            f"{API}/paths",
            shop.read_key,
            {**body, "cleaning_rules": [{"regex": "(", "replacement": ""}]},
        )
        assert (status, answer["param"]) == (400, "cleaning_rules[0].regex")


async def test_analyses_from_decades_back_read_only_the_days_that_hold_data(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, shop: TestProject
) -> None:
    """First-time retention scans all history, and any analysis may start in 1970 (the earliest
    date the API accepts): the scan reads the days that hold rows, not one statement term per
    calendar day."""
    async with query_client(pool, nats_url, subjects) as client:
        body = {
            "from": "2025-05-05",
            "to": "2025-05-06",
            "start_event": {"event": "signup"},
            "return_event": {"event": "signup"},
            "intervals": 2,
            "mode": "first_time",
        }
        status, answer = await post_json(client, f"{API}/retention", shop.read_key, body)
        assert status == 200, answer
        # u1 and u2 first signed up on day 5; u2's day-6 signup is not a first one.
        assert [(r["period_start"][:10], r["counts"]) for r in answer["matrix"]] == [
            ("2025-05-05", [2, 1, 0]),
            ("2025-05-06", [0, 0, 0]),
        ]
        status, answer = await post_json(
            client, f"{API}/funnels", shop.read_key, {**FUNNEL, "from": "1970-01-01"}
        )
        assert status == 200, answer
        assert [s["count"] for s in answer["steps"]] == [3, 2, 1]
        paths = {"from": "1990-01-01", "to": "2025-05-11", "start_point": "/pricing/"}
        status, answer = await post_json(client, f"{API}/paths", shop.read_key, paths)
        assert status == 200, answer
        # Trailing slashes are ignored in start and end points as in the path labels.
        assert [(n["id"], n["count"]) for n in answer["nodes"]] == [("1_/pricing", 1)]
        status, answer = await post_json(
            client,
            f"{API}/paths",
            shop.read_key,
            {**paths, "start_point": "/", "end_point": "/pricing/"},
        )
        assert status == 200, answer
        assert {(e["source"], e["target"]) for e in answer["edges"]} == {("1_/", "2_/pricing")}


async def test_cohort_crud_and_versions(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, shop: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        key = shop.read_key
        url = f"{API}/cohorts"
        buyers: dict[str, Any] = {
            "id": "buyers",
            "name": "Buyers",
            "definition": {"type": "behavioral", "event": "purchase", **RANGE},
        }
        status, created = await post_json(client, url, key, buyers)
        assert status == 201, created
        assert (created["id"], created["version"]) == ("buyers", 1)
        assert (await post_json(client, url, key, buyers))[0] == 409
        twice = {
            **buyers,
            "name": "Repeat buyers",
            "definition": {**buyers["definition"], "min_count": 2},
        }
        status, updated = await post_json(client, f"{url}/buyers", key, twice, "PUT")
        assert (status, updated["version"], updated["name"]) == (200, 2, "Repeat buyers")
        status, detail = await get_json(client, f"{url}/buyers", key)
        assert detail["cohort"]["version"] == 2
        assert [v["version"] for v in detail["history"]] == [2, 1]
        assert detail["history"][1]["definition"]["min_count"] == 1
        status, listed = await get_json(client, url, key)
        assert [(c["id"], c["version"]) for c in listed["cohorts"]] == [("buyers", 2)]
        # Bad definitions name the field.
        status, answer = await post_json(
            client, url, key, {"name": "x", "definition": {"type": "behavioral", "event": "a"}}
        )
        assert (status, answer["param"]) == (400, "definition.from")
        status, answer = await post_json(
            client, url, key, {"name": "x", "definition": {"type": "galactic"}}
        )
        assert (status, answer["param"]) == (400, "definition.type")
        status, answer = await post_json(client, url, key, {**buyers, "id": "Bad Id"})
        assert (status, answer["param"]) == (400, "id")
        # Delete: gone, and an analysis naming it is a 400.
        assert (await post_json(client, f"{url}/buyers", key, None, "DELETE"))[0] == 204
        assert (await get_json(client, f"{url}/buyers", key))[0] == 404
        assert (await post_json(client, f"{url}/buyers", key, None, "DELETE"))[0] == 404
        status, answer = await post_json(
            client, f"{API}/funnels", key, {**FUNNEL, "cohorts": ["buyers"]}
        )
        assert (status, answer["param"]) == (400, "cohorts[0]")


async def test_cohorts_filter_analyses_and_the_metrics_endpoint(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, shop: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        key = shop.read_key
        url = f"{API}/cohorts"
        behavioral = {
            "id": "signed-up",
            "name": "Signed up",
            "definition": {"type": "behavioral", "event": "signup", **RANGE},
        }
        traits = {
            "id": "pro",
            "name": "Pro",
            "definition": {
                "type": "person_property",
                "conditions": [{"property": "plan", "value": "pro"}],
            },
        }
        from_funnel = {
            "id": "lookers",
            "name": "Looked, never signed up",
            "definition": {
                "type": "static",
                "from_funnel": {**FUNNEL, "persons": {"step": 2, "status": "dropped"}},
            },
        }
        listed = {
            "id": "listed",
            "name": "Listed",
            "definition": {"type": "static", "person_ids": ["u2", "u3", "u2"]},
        }
        for body in (behavioral, traits, from_funnel, listed):
            status, answer = await post_json(client, url, key, body)
            assert status == 201, answer
        assert answer["static_persons"] == 2

        async def members(cohort: str) -> list[str]:
            status, body = await get_json(client, f"{url}/{cohort}/persons", key)
            assert status == 200, body
            return list(body["person_ids"])

        assert await members("signed-up") == ["a2", "u1"]
        assert await members("pro") == ["u1"]
        assert await members("lookers") == ["a3"]
        assert await members("listed") == ["u2", "u3"]

        status, body = await post_json(
            client, f"{API}/funnels", key, {**FUNNEL, "cohorts": ["signed-up"]}
        )
        assert [s["count"] for s in body["steps"]] == [2, 2, 1]
        assert body["cohorts"] == [{"id": "signed-up", "version": 1, "persons": 2}]
        status, body = await post_json(
            client, f"{API}/funnels", key, {**FUNNEL, "cohorts": ["signed-up", "pro"]}
        )
        assert [s["count"] for s in body["steps"]] == [1, 1, 1]

        metrics = {**RANGE, "metrics": "events,pageviews", "interval": "week"}
        status, body = await get_json(client, f"{API}/metrics", key, {**metrics, "cohort": "pro"})
        assert status == 200, body
        # u1's events under both of their ids: pageview, signup, identify, purchase.
        assert body["source"] == "events"
        assert body["totals"] == {"events": 4, "pageviews": 1}
        status, body = await get_json(
            client, f"{API}/metrics", key, {**metrics, "cohort": "pro", "source": "rollups"}
        )
        assert (status, body["param"]) == (400, "source")
        status, body = await get_json(client, f"{API}/metrics", key, {**metrics, "cohort": "gone"})
        assert (status, body["param"]) == (400, "cohort")


async def test_metric_definitions_in_the_metrics_endpoint(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, shop: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        key = shop.read_key
        url = f"{API}/metric-definitions"
        signups = {
            "id": "signups",
            "name": "Signups",
            "definition": {"kind": "count", "event": "signup"},
        }
        revenue = {
            "id": "revenue",
            "name": "Revenue",
            "definition": {"kind": "sum", "event": "purchase", "property": "amount"},
        }
        per_signup = {
            "id": "buy-rate",
            "name": "Purchases per signup",
            "definition": {
                "kind": "ratio",
                "numerator": {"kind": "count", "event": "purchase"},
                "denominator": {"metric_id": "signups"},
            },
        }
        for body in (signups, revenue, per_signup):
            status, answer = await post_json(client, url, key, body)
            assert status == 201, answer
        status, answer = await post_json(
            client, url, key, {"name": "x", "definition": {"kind": "sum", "event": "purchase"}}
        )
        assert (status, answer["param"]) == (400, "definition.property")
        status, answer = await post_json(
            client,
            url,
            key,
            {
                "name": "x",
                "definition": {
                    "kind": "ratio",
                    "numerator": {"metric_id": "nope"},
                    "denominator": {"metric_id": "signups"},
                },
            },
        )
        assert (status, answer["param"]) == (400, "definition.numerator.metric_id")

        query = {
            **RANGE,
            "interval": "day",
            "metrics": "metric:signups,metric:revenue,metric:buy-rate,pageviews",
        }
        status, body = await get_json(client, f"{API}/metrics", key, query)
        assert status == 200, body
        assert body["totals"] == {
            "metric:signups": 3,
            "metric:revenue": 30.0,
            "metric:buy-rate": pytest.approx(1 / 3),
            "pageviews": 4,
        }
        by_day = {p["bucket"][:10]: p["values"]["metric:signups"] for p in body["series"]}
        assert by_day["2025-05-05"] == 2 and by_day["2025-05-06"] == 1
        status, body = await get_json(
            client,
            f"{API}/metrics",
            key,
            {**query, "metrics": "metric:signups", "breakdown": "event"},
        )
        top = body["breakdown"]["results"][0]
        assert (top["value"], top["totals"]["metric:signups"]) == ("signup", 3)

        # A new version changes what metric:signups means; the history keeps both.
        changed = {**signups, "definition": {"kind": "unique_persons", "event": "signup"}}
        status, answer = await post_json(client, f"{url}/signups", key, changed, "PUT")
        assert (status, answer["version"]) == (200, 2)
        status, body = await get_json(
            client, f"{API}/metrics", key, {**query, "metrics": "metric:signups"}
        )
        assert body["totals"] == {"metric:signups": 2}
        status, detail = await get_json(client, f"{url}/signups", key)
        assert [v["definition"]["kind"] for v in detail["history"]] == ["unique_persons", "count"]
        assert (await post_json(client, f"{url}/signups", key, None, "DELETE"))[0] == 204
        status, body = await get_json(
            client, f"{API}/metrics", key, {**query, "metrics": "metric:signups"}
        )
        assert (status, body["param"]) == (400, "metrics")


def experiment_events() -> list[EventV1]:
    """40 persons in control (10 buy) and 40 in treatment (20 buy), exposed at 9:00."""
    out = []
    t = DAY + timedelta(hours=9)
    for i in range(80):
        variant = "control" if i < 40 else "treatment"
        person = f"x{i}"
        props = {"experiment": "new-checkout", "variant": variant}
        out.append(ev(f"x{i}-exp", t, "$experiment_exposure", user=person, properties=props))
        buys = i < 10 or 40 <= i < 60
        if buys:
            out.append(ev(f"x{i}-cart", t + timedelta(minutes=1), "add_to_cart", user=person))
            out.append(
                ev(
                    f"x{i}-buy",
                    t + timedelta(minutes=2),
                    "purchase",
                    user=person,
                    properties={"amount": 10 + i % 3},
                )
            )
    return out


async def test_experiment_over_http(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with pool.acquire() as conn:
        await write_events(conn, experiment_events())
    async with query_client(pool, nats_url, subjects) as client:
        key = project.read_key
        url = f"{API}/experiments/analyze"
        body = {
            **RANGE,
            "experiment": "new-checkout",
            "goal": {"funnel": {"steps": [{"event": "add_to_cart"}, {"event": "purchase"}]}},
        }
        status, answer = await post_json(client, url, key, body)
        assert status == 200, answer
        control, treatment = answer["variants"]
        assert (control["variant"], control["exposures"], control["conversions"]) == (
            "control",
            40,
            10,
        )
        assert (treatment["exposures"], treatment["conversions"], treatment["rate"]) == (
            40,
            20,
            0.5,
        )
        assert treatment["absolute_lift"] == pytest.approx(0.25)
        assert treatment["relative_lift"] == pytest.approx(1.0)
        assert 0 < treatment["p_value"] < 0.05
        assert treatment["probability_to_be_best"] > 0.95
        assert answer["srm"]["mismatch"] is False and answer["srm"]["p_value"] == pytest.approx(1.0)
        assert answer["goal"] == {"type": "funnel", "statistic": "proportion", "metric_id": None}

        status, _ = await post_json(
            client,
            f"{API}/metric-definitions",
            key,
            {
                "id": "spend",
                "name": "Spend",
                "definition": {"kind": "sum", "event": "purchase", "property": "amount"},
            },
        )
        assert status == 201
        status, answer = await post_json(client, url, key, {**body, "goal": {"metric_id": "spend"}})
        assert status == 200, answer
        assert answer["goal"]["statistic"] == "mean"
        control, treatment = answer["variants"]
        assert control["mean"] == pytest.approx(sum(10 + i % 3 for i in range(10)) / 40)
        assert (
            treatment["p_value"] is not None
            and treatment["absolute_lift_ci"][0] < treatment["absolute_lift"]
        )

        skewed = {**body, "traffic_split": {"control": 0.9, "treatment": 0.1}}
        status, answer = await post_json(client, url, key, skewed)
        assert answer["srm"]["mismatch"] is True

        # An experiment nobody was exposed to is not "0 conversions": 404 with a hint.
        status, answer = await post_json(client, url, key, {**body, "experiment": "new-chekout"})
        assert status == 404, answer
        assert "no exposures of experiment 'new-chekout'" in answer["error"]
        assert "'$experiment_exposure' events" in answer["error"]

        for bad, field in (
            ({**body, "goal": {}}, "goal"),
            (
                {
                    **body,
                    "goal": {"metric": {"kind": "p90", "event": "purchase", "property": "amount"}},
                },
                "goal.metric.kind",
            ),
            ({**body, "goal": {"funnel": {"steps": [{"event": "a"}]}}}, "goal.funnel.steps"),
            ({**body, "variants": ["a", "b"]}, "variants"),
        ):
            status, answer = await post_json(client, url, key, bad)
            assert (status, answer["param"]) == (400, field), answer
