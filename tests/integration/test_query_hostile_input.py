"""The query API against input that once cost 500s: NUL characters anywhere, dates at the edge
of the calendar, forged cursors, person traits where only event properties are read, a paths
cleaning replacement ending in a backslash, empty values of typed parameters. Each is a 400
naming the parameter; and the HTTP layer's own errors keep the JSON shape (405 with Allow)."""

from __future__ import annotations

import base64
from typing import Any

import asyncpg
import pytest

from libs.common.subjects import Subjects
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client

pytestmark = pytest.mark.infra

API = "/api/v1/analytics"
RANGE = {"from": "2025-05-05", "to": "2025-05-11"}


def forged_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


BAD_PARAMETERS = [
    ("/metrics", {"filter": "country:D\u0000E"}, "filter"),
    ("/metrics", {"metrics": "event:a\u0000"}, "metrics"),
    ("/events", {"name": "x\u0000"}, "name"),
    ("/metrics", {"timezone": "UTC\u0000"}, "timezone"),
    ("/metrics", {"to": "9999-12-31"}, "to"),
    ("/metrics", {"from": "0001-01-01T00:00:00+14:00"}, "from"),
    ("/metrics", {"from": "0001-01-01", "timezone": "Pacific/Kiritimati"}, "from"),
    ("/pages", {"from": "9999-12-30", "to": "9999-12-31"}, "to"),
    ("/events", {"cursor": forged_cursor('[1e30,"x"]')}, "cursor"),
    ("/events", {"cursor": forged_cursor('[-99999999999999999999,"x"]')}, "cursor"),
    ("/events", {"cursor": forged_cursor('[1,"a\\u0000"]')}, "cursor"),
    ("/metrics", {"interval": ""}, "interval"),
    ("/metrics", {"limit": ""}, "limit"),
    ("/events", {"limit": ""}, "limit"),
]


async def test_bad_query_parameters_are_400_naming_them(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        for path, params, param in BAD_PARAMETERS:
            status, answer = await get_json(client, API + path, project.read_key, params)
            assert (status, answer["param"]) == (400, param), (path, params, answer)


async def test_nul_in_a_path_segment_or_a_body_is_400(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    headers = {"Authorization": f"Bearer {project.read_key}"}
    async with query_client(pool, nats_url, subjects) as client:
        for path in (f"{API}/sessions/a%00b", f"{API}/users/u%00/journey", f"{API}/cohorts/c%00"):
            async with client.get(path, headers=headers) as response:
                assert response.status == 400, path
                assert "NUL" in (await response.json())["error"]
        body = {**RANGE, "steps": [{"event": "sign\u0000up"}, {"event": "buy"}]}
        async with client.post(f"{API}/funnels", json=body, headers=headers) as response:
            answer = await response.json()
            assert response.status == 400, answer
            assert answer["param"] == "steps[0].event"
            assert "NUL" in answer["error"]


async def post(client: Any, path: str, key: str, body: Any) -> tuple[int, Any]:
    async with client.post(path, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        return response.status, await response.json()


async def test_analysis_bodies_that_once_failed_are_400(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        key = project.read_key
        status, answer = await post(
            client,
            f"{API}/experiments/analyze",
            key,
            {
                **RANGE,
                "experiment": "x",
                "exposure": {"variant_property": "person.plan"},
                "goal": {"funnel": {"steps": [{"event": "a"}, {"event": "b"}]}},
            },
        )
        assert status == 400, answer
        assert answer["param"] == "exposure.variant_property"
        for replacement in ("b\\", "\\2"):  # a lone backslash; a group /a does not have
            status, answer = await post(
                client,
                f"{API}/paths",
                key,
                {**RANGE, "cleaning_rules": [{"regex": "/a", "replacement": replacement}]},
            )
            assert status == 400, answer
            assert answer["param"] == "cleaning_rules[0].replacement"
        status, answer = await post(
            client,
            f"{API}/funnels",
            key,
            {"from": "9999-12-31", "to": "9999-12-31", "steps": [{"event": "a"}, {"event": "b"}]},
        )
        assert status == 400, answer


async def test_405_keeps_allow_and_the_server_hides_its_version(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        async with client.delete(f"{API}/metrics") as response:
            assert response.status == 405
            assert "GET" in response.headers["Allow"]
            assert (await response.json())["error"] == "Method Not Allowed"
            assert response.headers["Server"] == "strata"
