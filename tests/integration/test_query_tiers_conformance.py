"""One dataset with everything hot, split hot/cold after a real cold move, and everything cold:
the events listing (every page), a session's detail and a person's journey answer the same, and
say which tiers they read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.common.subjects import Subjects
from tests.support.analytics_dataset import generate_events
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client
from tests.support.tier_layouts import LAYOUTS, tier_layout

pytestmark = pytest.mark.infra

API = "/api/v1/analytics"
FIRST_DAY = datetime(2025, 5, 1, tzinfo=UTC)
DAYS = 6
FROM, TO = FIRST_DAY + timedelta(hours=3), FIRST_DAY + timedelta(days=DAYS - 1)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


async def every_page(client: Any, key: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Each page of the events listing, following the cursor to the end."""
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        page_params = {**params, **({"cursor": cursor} if cursor else {})}
        status, page = await get_json(client, f"{API}/events", key, page_params)
        assert status == 200, page
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


async def all_pages(
    client: Any, key: str, params: dict[str, str]
) -> tuple[list[dict[str, Any]], set[str]]:
    pages = await every_page(client, key, params)
    events = [e for page in pages for e in page["events"]]
    tiers = {t["tier"] for page in pages for t in page["tiers"] if t["rows"]}
    return events, tiers


@pytest.mark.parametrize("layout_name", LAYOUTS)
async def test_event_endpoints_answer_the_same_in_every_tier_layout(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
    layout_name: str,
) -> None:
    events = generate_events("acme", FIRST_DAY, DAYS, devices=30, seed=3)
    first_day_session = min(
        (e for e in events if e.session_id and e.ts.date() == FIRST_DAY.date()),
        key=lambda e: (e.ts, e.event_id),
    ).session_id
    assert first_day_session is not None
    person = next(e.user_id for e in events if e.user_id)
    async with tier_layout(layout_name, pool, events, tmp_path, move_cold=True) as layout:
        hot_left = await pool.fetchval("SELECT count(*) FROM events")
        if layout_name == "all_hot":
            assert hot_left == len(events)
        elif layout_name == "all_exported":
            assert hot_left == 0
        else:
            assert 0 < hot_left < len(events)
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            key = project.read_key
            listed, tiers = await all_pages(
                client, key, {"from": iso(FROM), "to": iso(TO), "limit": "37"}
            )
            named, _ = await all_pages(
                client,
                key,
                {"name": "signup", "order": "asc", "limit": "5", "include_bots": "true"},
            )
            status, session = await get_json(client, f"{API}/sessions/{first_day_session}", key)
            assert status == 200, session
            status, journey = await get_json(
                client, f"{API}/users/{person}/journey", key, {"limit": "1000"}
            )
            assert status == 200, journey

    expected = sorted(
        (e for e in events if FROM <= e.ts < TO and not e.is_bot),
        key=lambda e: (e.ts, e.event_id),
        reverse=True,
    )
    assert [e["event_id"] for e in listed] == [e.event_id for e in expected]
    by_id = {e.event_id: e for e in events}
    for got in listed[::50]:
        source = by_id[got["event_id"]]
        assert got["properties"] == dict(source.properties)
        assert (got["name"], got["distinct_id"], got["path"]) == (
            source.name,
            source.distinct_id,
            source.path,
        )
    assert (
        tiers
        == {"all_hot": {"hot"}, "split": {"hot", "cold"}, "all_exported": {"cold"}}[layout_name]
    )
    signups = sorted((e for e in events if e.name == "signup"), key=lambda e: (e.ts, e.event_id))
    assert [e["event_id"] for e in named] == [e.event_id for e in signups]

    in_session = sorted(
        (e for e in events if e.session_id == first_day_session and not e.is_bot),
        key=lambda e: (e.ts, e.event_id),
    )
    assert [e["event_id"] for e in session["events"]] == [
        e.event_id
        for e in sorted(
            (e for e in events if e.session_id == first_day_session),
            key=lambda e: (e.ts, e.event_id),
        )
    ]
    assert in_session
    read = {t["tier"] for t in session["tiers"] if t["rows"]}
    assert read == ({"hot"} if layout_name == "all_hot" else {"cold"})

    ids = set(journey["distinct_ids"])
    mine = sorted((e for e in events if e.distinct_id in ids), key=lambda e: (e.ts, e.event_id))
    assert [e["event_id"] for e in journey["events"]] == [e.event_id for e in mine]


async def test_a_page_the_hot_rows_fill_reads_no_day_file(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    """Newest first, with the older days moved cold: while the hot rows fill a page, the moved
    days (all older than its rows) cannot change it, so their day files are not read; the pages
    that reach them read them, and every page is still exact (the test above)."""
    events = generate_events("acme", FIRST_DAY, DAYS, devices=30, seed=3)
    async with tier_layout("split", pool, events, tmp_path, move_cold=True) as layout:
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            pages = [
                (
                    [e["event_id"] for e in page["events"]],
                    {t["tier"]: t["rows"] for t in page["tiers"]},
                )
                for page in await every_page(client, project.read_key, {"limit": "40"})
            ]
    hot_only_from = FIRST_DAY + timedelta(days=DAYS // 2)  # the split layout's later half
    newest_first = sorted(
        (e for e in events if not e.is_bot), key=lambda e: (e.ts, e.event_id), reverse=True
    )
    assert [i for ids, _ in pages for i in ids] == [e.event_id for e in newest_first]
    first_ids, first_tiers = pages[0]
    by_id = {e.event_id: e for e in events}
    assert all(by_id[i].ts >= hot_only_from for i in first_ids)
    assert "cold" not in first_tiers, first_tiers
    assert any(tiers.get("cold") for _, tiers in pages[1:])
