"""allow_partial on the analyses (funnels, retention, paths, experiments, cohort-filtered
metrics) over days archived and not restored: without it 202 with a restore job; with it the
answer over the readable days plus the missing day range; once the restore completes, the same
request answers in full, as it did before the days were archived."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from libs.common.day_files import DayFileCache
from libs.common.object_store import ObjectStoreOptions, open_object_store
from libs.common.schemas.events_v1 import EventV1
from libs.common.subjects import Subjects
from services.query.analyses.requests import FunnelStep
from services.query.scan_engine import ScanEngine
from services.tiering.tier_moves import archive_cold_parts
from tests.integration.test_analyses_api import ev, post_json
from tests.integration.test_analyses_tiers import (
    API,
    DAYS,
    FIRST_DAY,
    FROM,
    FUNNEL,
    PATHS,
    RANGE,
    RETENTION,
    TO,
    scan_events,
)
from tests.support.analytics_dataset import generate_events
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client
from tests.support.reference_analytics import ref_funnel
from tests.support.tier_layouts import tier_layout

pytestmark = pytest.mark.infra

EXPERIMENT: dict[str, Any] = {
    **RANGE,
    "experiment": "new-checkout",
    "goal": {"funnel": {"steps": [{"event": "add_to_cart"}, {"event": "purchase"}]}},
}
COHORT = {
    "id": "signed-up",
    "name": "Signed up",
    "definition": {"type": "behavioral", "event": "signup", **RANGE},
}
METRICS = {**RANGE, "metrics": "visitors,events", "interval": "day", "cohort": "signed-up"}


def experiment_events() -> list[EventV1]:
    """20 persons exposed on an early day and 20 on a late one; every third one buys."""
    out = []
    for i in range(40):
        t = FIRST_DAY + timedelta(days=1 if i < 20 else 5, hours=9)
        person = f"x{i}"
        props = {"experiment": "new-checkout", "variant": "control" if i % 2 else "treatment"}
        out.append(ev(f"x{i}-exp", t, "$experiment_exposure", user=person, properties=props))
        if i % 3 == 0:
            out.append(ev(f"x{i}-cart", t + timedelta(minutes=1), "add_to_cart", user=person))
            out.append(ev(f"x{i}-buy", t + timedelta(minutes=2), "purchase", user=person))
    return out


Ask = Callable[[dict[str, Any]], Any]


async def test_allow_partial_answers_the_readable_days_and_lists_the_missing_ones(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject, tmp_path: Path
) -> None:
    events = [*generate_events("acme", FIRST_DAY, DAYS, devices=50, seed=9), *experiment_events()]
    # The store's clock: restores take an hour of it.
    clock = [datetime.now(UTC)]
    async with tier_layout("split", pool, events, tmp_path, move_cold=True) as layout:
        archived_days = layout.exported_days
        store = open_object_store(
            f"file://{tmp_path / 'objects-split'}",
            ObjectStoreOptions(file_restore_delay_s=3600),
            clock=lambda: clock[0],
        )
        engine = ScanEngine(DayFileCache(tmp_path / "cache-restores", 256 * 1024 * 1024, store))
        try:
            async with query_client(pool, nats_url, subjects, scan_engine=engine) as client:
                key = project.read_key
                status, body = await post_json(client, f"{API}/cohorts", key, COHORT)
                assert status == 201, body

                async def analyses(extra: dict[str, Any]) -> dict[str, tuple[int, Any]]:
                    out = {}
                    for name, body in (
                        ("funnels", FUNNEL),
                        ("retention", RETENTION),
                        ("paths", PATHS),
                        ("experiments/analyze", EXPERIMENT),
                    ):
                        out[name] = await post_json(client, f"{API}/{name}", key, {**body, **extra})
                    params = {**METRICS, **{k: str(v).lower() for k, v in extra.items()}}
                    out["metrics"] = await get_json(client, f"{API}/metrics", key, params)
                    return out

                def answers(replies: dict[str, tuple[int, Any]]) -> dict[str, Any]:
                    for name, (status, body) in replies.items():
                        assert status == 200, (name, body)
                    return {
                        name: {
                            k: v
                            for k, v in body.items()
                            if k not in ("tiers", "tier_reads", "freshness")
                        }
                        for name, (_, body) in replies.items()
                    }

                full = answers(await analyses({}))
                assert all(a["missing"] == [] for a in full.values())
                assert full["metrics"]["totals"]["events"] > 0

                # The moved days go to the Archive tier: without allow_partial, 202.
                run = await archive_cold_parts(pool, layout.store)
                assert not run.failures and run.parts_archived > 0
                for name, (status, body) in (await analyses({})).items():
                    assert status == 202, (name, body)
                    assert body["archived_days"] == [d.isoformat() for d in archived_days]
                    assert body["restore"]["state"] == "restoring"
                restore_url = body["status_url"]

                partial = answers(await analyses({"allow_partial": True}))
                missing = [
                    {
                        "first_day": archived_days[0].isoformat(),
                        "last_day": archived_days[-1].isoformat(),
                    }
                ]
                for name, answer in partial.items():
                    assert answer["missing"] == missing, name
                    assert answer != full[name], name

                # The partial funnel is the funnel of the readable days' events.
                readable = [
                    e
                    for e in scan_events(events)
                    if e.ts.astimezone(UTC).date() not in archived_days
                ]
                expected = ref_funnel(
                    readable,
                    [msgspec.convert(s, FunnelStep) for s in FUNNEL["steps"]],
                    order="ordered",
                    window_s=2 * 86400,
                    start=FROM,
                    end=TO,
                    breakdown="country",
                )
                steps = partial["funnels"]["steps"]
                assert [s["count"] for s in steps] == [c for c, _, _ in expected.total]
                assert steps[0]["count"] > 0
                late_exposures = {
                    v["variant"]: v["exposures"] for v in partial["experiments/analyze"]["variants"]
                }
                assert late_exposures == {"control": 10, "treatment": 10}

                # The restore completes an hour later: the same requests answer in full.
                status, job = await get_json(client, restore_url, key)
                assert status == 200 and job["state"] == "restoring", job
                clock[0] += timedelta(hours=2)
                status, job = await get_json(client, restore_url, key)
                assert status == 200 and job["state"] == "restored", job
                assert answers(await analyses({})) == full
                assert answers(await analyses({"allow_partial": True})) == full
        finally:
            engine.close()
            await store.close()
