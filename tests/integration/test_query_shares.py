"""The data-quality metrics bot_share and cookieless_share per day (and per breakdown value),
checked against a recomputation from the generated events; bots stay out of the other metrics
unless include_bots=true."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import pytest

from libs.common.schemas.events_v1 import EventV1
from libs.common.subjects import Subjects
from services.ingest.privacy import COOKIELESS_PROPERTY
from tests.support.analytics_dataset import generate_events, load, utc
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client

pytestmark = pytest.mark.infra

METRICS_URL = "/api/v1/analytics/metrics"
FIRST_DAY = utc(2025, 5, 5)
DAYS = 7
RANGE = {"from": "2025-05-05", "to": "2025-05-12", "interval": "day"}


def with_cookieless(events: list[EventV1]) -> list[EventV1]:
    """Mark every third device's events cookieless, as ingest does."""
    marked = []
    for event in events:
        if int(event.distinct_id.rsplit("-", 1)[1]) % 3 == 1:
            properties = {**event.properties, COOKIELESS_PROPERTY: True}
            event = msgspec.structs.replace(event, properties=properties)
        marked.append(event)
    return marked


@pytest.fixture
async def events(pool: asyncpg.Pool, project: TestProject) -> list[EventV1]:
    generated = with_cookieless(generate_events(project.id, FIRST_DAY, DAYS, devices=80))
    async with pool.acquire() as conn:
        await load(conn, generated)
    assert any(e.is_bot for e in generated)
    assert any(COOKIELESS_PROPERTY in e.properties for e in generated)
    return generated


def expected_shares(
    events: list[EventV1], include_bots: bool, key: Any = None
) -> dict[datetime | None, dict[str, float | None]]:
    """day (None: the whole range) -> the two shares, recomputed from the events."""
    counts: dict[datetime | None, Counter[str]] = {}
    for event in events:
        if key is not None and key(event) is False:
            continue
        day = event.ts.replace(hour=0, minute=0, second=0, microsecond=0)
        for bucket in (day, None):
            tally = counts.setdefault(bucket, Counter())
            tally["all"] += 1
            tally["bots"] += event.is_bot
            if include_bots or not event.is_bot:
                tally["counted"] += 1
                tally["cookieless"] += COOKIELESS_PROPERTY in event.properties
    return {
        bucket: {
            "bot_share": tally["bots"] / tally["all"],
            "cookieless_share": tally["cookieless"] / tally["counted"]
            if tally["counted"]
            else None,
        }
        for bucket, tally in counts.items()
    }


def assert_shares(got: dict[str, Any], want: dict[str, float | None] | None, where: str) -> None:
    for metric in ("bot_share", "cookieless_share"):
        expected = (want or {}).get(metric)
        if expected is None:
            assert got[metric] is None, f"{where} {metric}"
        else:
            # Shares are answered to three decimals (docs/api-query.md, "Rounding").
            assert got[metric] == pytest.approx(round(expected, 3), rel=1e-12), f"{where} {metric}"


@pytest.mark.parametrize("include_bots", [False, True])
async def test_shares_per_day_equal_a_recomputation(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    events: list[EventV1],
    include_bots: bool,
) -> None:
    params = {**RANGE, "metrics": "bot_share,cookieless_share,events"}
    if include_bots:
        params["include_bots"] = "true"
    async with query_client(pool, nats_url, subjects) as client:
        status, body = await get_json(client, METRICS_URL, project.read_key, params)
    assert status == 200, body
    assert body["source"] == "events"
    end = datetime.fromisoformat(body["to"])
    events = [e for e in events if e.ts < end]  # the window: `to` is a whole inclusive day
    want = expected_shares(events, include_bots)
    assert_shares(body["totals"], want[None], "totals")
    assert len(body["series"]) == (end - FIRST_DAY).days
    for point in body["series"]:
        day = datetime.fromisoformat(point["bucket"])
        assert_shares(point["values"], want.get(day), f"day {day:%F}")
    # Bots are kept but the other metrics leave them out unless asked to include them.
    counted = sum(1 for e in events if include_bots or not e.is_bot)
    assert body["totals"]["events"] == counted
    assert 0 < want[None]["bot_share"] < 1  # type: ignore[operator]


async def test_shares_broken_down_by_browser(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    events: list[EventV1],
) -> None:
    params = {**RANGE, "metrics": "bot_share,cookieless_share", "breakdown": "browser"}
    async with query_client(pool, nats_url, subjects) as client:
        status, body = await get_json(client, METRICS_URL, project.read_key, params)
    assert status == 200, body
    end = datetime.fromisoformat(body["to"])
    events = [e for e in events if e.ts < end]
    rows = {row["value"]: row for row in body["breakdown"]["results"]}
    assert rows
    for value, row in rows.items():
        browser = None if value == "(none)" else value
        want = expected_shares(events, False, key=lambda e, b=browser: e.browser == b)
        assert_shares(row["totals"], want[None], f"browser {value}")


async def test_rollups_cannot_answer_shares(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    params = {**RANGE, "metrics": "bot_share", "source": "rollups"}
    async with query_client(pool, nats_url, subjects) as client:
        status, body = await get_json(client, METRICS_URL, project.read_key, params)
        assert status == 400
        assert "bot_share and cookieless_share are computed from raw events" in body["error"]
        status, body = await get_json(
            client, METRICS_URL, project.read_key, {**RANGE, "metrics": "bot_share"}
        )
    assert status == 200
    # No events at all: a share of nothing is null, not zero.
    assert body["totals"] == {"bot_share": None}
    assert all(p["values"]["bot_share"] is None for p in body["series"])
