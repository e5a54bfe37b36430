"""The tiers through the query API: analyses answer the same after a real cold move, a request
needing archived days gets 202 with a restore job, the job's state is served, and once restored
the same request answers in full; GET /api/v1/tiers summarises what each tier holds."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from libs.common.subjects import Subjects
from services.tiering.tier_moves import archive_cold_parts, move_cold_days
from tests.integration.test_analyses_api import post_json
from tests.integration.test_analyses_tiers import API, DAYS, FIRST_DAY, FUNNEL
from tests.support.analytics_dataset import generate_events
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client
from tests.support.tier_layouts import tier_layout

pytestmark = pytest.mark.infra


def steps(funnel: dict[str, object]) -> object:
    return (funnel["steps"], funnel["breakdown"])


async def test_cold_move_archive_and_restore_through_the_api(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject, tmp_path: Path
) -> None:
    events = generate_events("acme", FIRST_DAY, DAYS, devices=40, seed=11)
    async with tier_layout("all_exported", pool, events, tmp_path) as layout:
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            key = project.read_key
            status, before = await post_json(client, f"{API}/funnels", key, FUNNEL)
            assert status == 200, before

            # Every day is older than hot_days: its rows leave PostgreSQL for good.
            run = await move_cold_days(pool, layout.store)
            assert not run.failures and run.rows_moved == len(events)
            assert await pool.fetchval("SELECT count(*) FROM events") == 0
            status, cold = await post_json(client, f"{API}/funnels", key, FUNNEL)
            assert status == 200, cold
            assert steps(cold) == steps(before)
            assert {t["tier"]: t["rows"] for t in cold["tiers"]}["hot"] == 0

            # KPIs come from rollups, which stay in PostgreSQL; the raw-event path reads the
            # moved days from their day files and counts the same events.
            window = {"from": "2025-04-02", "to": "2025-04-05", "interval": "day"}
            status, kpis = await get_json(
                client, f"{API}/metrics", key, {**window, "metrics": "events"}
            )
            assert status == 200 and kpis["source"] == "rollups", kpis
            assert kpis["totals"]["events"] > 0
            status, raw = await get_json(
                client, f"{API}/metrics", key, {**window, "metrics": "events,bot_share"}
            )
            assert status == 200 and raw["source"] == "events", raw
            assert raw["totals"]["events"] == kpis["totals"]["events"]
            assert {t["tier"] for t in raw["tier_reads"] if t["rows"]} == {"cold"}

            status, tiers = await get_json(client, "/api/v1/tiers", key)
            assert status == 200, tiers
            by_tier = {t["tier"]: t for t in tiers["tiers"]}
            assert by_tier["cold"]["rows"] == len(events) and by_tier["hot"]["rows"] == 0
            assert by_tier["cold"]["bytes_per_event"] > 0
            assert by_tier["cold"]["first_day"] == FIRST_DAY.date().isoformat()
            assert tiers["prices_per_gb_month"] == {
                "hot": 0.0425,
                "cold": 0.0255,
                "archive": 0.0026,
            }
            assert tiers["monthly_cost"] == pytest.approx(
                by_tier["cold"]["bytes"] / 1024**3 * 0.0255, abs=1e-6
            )

            # Past cold_days: the files move to the Archive tier.
            archived = await archive_cold_parts(pool, layout.store)
            assert archived.parts_archived == by_tier["cold"]["objects"]
            status, tiers = await get_json(client, "/api/v1/tiers", key)
            assert {t["tier"]: t["rows"] for t in tiers["tiers"]}["archive"] == len(events)

            status, accepted = await post_json(client, f"{API}/funnels", key, FUNNEL)
            assert status == 202, accepted
            assert accepted["restore"]["state"] in ("restoring", "restored")
            assert accepted["archived_days"][0] == FIRST_DAY.date().isoformat()
            status, job = await get_json(client, accepted["status_url"], key)
            assert status == 200 and job["restore_id"] == accepted["restore"]["restore_id"]
            assert job["state"] == "restored" and job["objects_restored"] == job["objects"]

            status, restored = await post_json(client, f"{API}/funnels", key, FUNNEL)
            assert status == 200, restored
            assert steps(restored) == steps(before)

            status, error = await get_json(client, "/api/v1/tiers", project.write_key)
            assert status == 403
            status, error = await get_json(client, "/api/v1/tiers/restores/nope", key)
            assert status == 404 and "no restore" in error["error"]
