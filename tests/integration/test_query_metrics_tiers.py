"""The metrics endpoint's raw-event path (source=events) over days moved to day files: the same
request answers the same with everything hot, split hot/cold and everything cold after a real
cold move, counts a late row both tiers hold once, lists the tiers read, and needs a restore
(202) once the moved days are archived."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from libs.common.day_files import DayExportSettings, export_pending_days
from libs.common.subjects import Subjects
from services.tiering.tier_moves import archive_cold_parts, move_cold_days
from tests.support.analytics_dataset import generate_events
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client
from tests.support.tier_layouts import tier_layout, write

pytestmark = pytest.mark.infra

METRICS_URL = "/api/v1/analytics/metrics"
FIRST_DAY = datetime(2025, 5, 1, tzinfo=UTC)
DAYS = 6
# Off whole hours and in a time zone whose days straddle UTC days.
FROM, TO = FIRST_DAY + timedelta(hours=3, minutes=7), FIRST_DAY + timedelta(days=DAYS - 1)
WINDOW = [
    ("from", FROM.isoformat()),
    ("to", TO.isoformat()),
    ("timezone", "America/New_York"),
    ("source", "events"),
    ("limit", "1000"),
]
CASES: dict[str, list[tuple[str, str]]] = {
    "event and share metrics by hour": [
        ("metrics", "visitors,pageviews,events,event:signup,bot_share,cookieless_share"),
        ("interval", "hour"),
    ],
    "breakdown by browser, filtered by country": [
        ("metrics", "visitors,pageviews,events,bot_share"),
        ("interval", "day"),
        ("breakdown", "browser"),
        ("filter", "country:DE"),
        ("filter", "country:(none)"),
    ],
    "event-name breakdown and filter": [
        ("metrics", "events,visitors,sessions"),
        ("interval", "day"),
        ("breakdown", "event"),
        ("filter", "event:signup"),
        ("filter", "event:$pageview"),
        ("include_bots", "true"),
    ],
}


async def answers(client: Any, key: str) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """Each case's answer without its tier reads, and the tiers each case read rows from."""
    bodies: dict[str, Any] = {}
    tiers: dict[str, set[str]] = {}
    for name, params in CASES.items():
        status, body = await get_json(client, METRICS_URL, key, [*WINDOW, *params])
        assert status == 200, (name, body)
        assert body["source"] == "events"
        tiers[name] = {t["tier"] for t in body.pop("tier_reads") if t["rows"]}
        body.pop("tiers")
        body.pop("freshness")  # the newest event's age moves on between answers
        bodies[name] = body
    return bodies, tiers


@pytest.mark.parametrize("layout_name", ["split", "all_exported"])
async def test_raw_metrics_answer_the_same_before_and_after_a_cold_move(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
    layout_name: str,
) -> None:
    events = generate_events("acme", FIRST_DAY, DAYS, devices=40, seed=5)
    in_window = [e for e in events if FROM <= e.ts < TO]
    async with tier_layout(layout_name, pool, events, tmp_path) as layout:
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            key = project.read_key
            hot, hot_tiers = await answers(client, key)
            assert all(t == {"hot"} for t in hot_tiers.values()), hot_tiers
            totals = hot["event and share metrics by hour"]["totals"]
            assert totals["events"] == sum(1 for e in in_window if not e.is_bot) > 0
            assert 0 < totals["bot_share"] < 1

            # Every exported day is older than hot_days: its rows leave PostgreSQL.
            run = await move_cold_days(pool, layout.store)
            assert not run.failures and run.rows_moved > 0
            hot_left = await pool.fetchval("SELECT count(*) FROM events")
            assert (hot_left == 0) == (layout_name == "all_exported")
            moved, moved_tiers = await answers(client, key)
            assert moved == hot
            expected_tiers = {"cold"} if layout_name == "all_exported" else {"hot", "cold"}
            assert moved_tiers["event and share metrics by hour"] == expected_tiers

            # A late event for a moved day, exported into a late part but not yet moved: both
            # tiers hold it, and it counts once.
            late = msgspec.structs.replace(
                in_window[0], event_id="late-after-move", ts=FROM + timedelta(minutes=1)
            )
            await write(pool, [late])
            export = await export_pending_days(
                pool,
                layout.store,
                DayExportSettings(work_dir=tmp_path / "late-export"),
                grace=timedelta(0),
                projects=["acme"],
                days=[FROM.date()],
            )
            assert not export.failures, export.failures
            with_late, _ = await answers(client, key)
            before = moved["event and share metrics by hour"]["totals"]["events"]
            after = with_late["event and share metrics by hour"]["totals"]["events"]
            assert after == before + (0 if late.is_bot else 1)

            # Archived moved days need a restore: 202 with the job, then the full answer.
            archived = await archive_cold_parts(pool, layout.store)
            assert archived.parts_archived > 0
            params = [*WINDOW, *CASES["event and share metrics by hour"]]
            status, accepted = await get_json(client, METRICS_URL, key, params)
            assert status == 202, accepted
            assert accepted["archived_days"][0] == FIRST_DAY.date().isoformat()
            status, job = await get_json(client, accepted["status_url"], key)
            assert status == 200 and job["state"] == "restored", job
            # Session metrics also read the events of sessions running past the window's end,
            # which may need a day the first restore did not cover.
            status, accepted = await get_json(
                client, METRICS_URL, key, [*WINDOW, *CASES["event-name breakdown and filter"]]
            )
            if status == 202:
                status, job = await get_json(client, accepted["status_url"], key)
                assert status == 200 and job["state"] == "restored", job
            restored, _ = await answers(client, key)
            assert restored == with_late
