"""One dataset, three tier layouts (all hot, split hot/day files, all day files): funnels,
retention and paths over HTTP answer the same in every layout, and that answer is the plain-
Python reference's over the same events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import pytest

from libs.common.erasure import request_erasure
from libs.common.schemas.events_v1 import EventV1
from libs.common.subjects import Subjects
from services.aggregator.writer import alias_links
from services.query.analyses import funnels
from services.query.analyses.requests import EventMatch, FunnelStep
from tests.integration.test_analyses_api import post_json
from tests.support.analysis_events import Ev
from tests.support.analytics_dataset import generate_events
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client
from tests.support.reference_analytics import ref_funnel, ref_paths, ref_retention
from tests.support.tier_layouts import LAYOUTS, tier_layout

pytestmark = pytest.mark.infra

API = "/api/v1/analytics"
FIRST_DAY = datetime(2025, 4, 1, tzinfo=UTC)
DAYS = 8
FROM, TO = FIRST_DAY + timedelta(hours=6), FIRST_DAY + timedelta(days=DAYS - 2)
RANGE = {"from": FROM.isoformat(), "to": TO.isoformat()}

FUNNEL: dict[str, Any] = {
    **RANGE,
    "steps": [
        {"event": "$pageview"},
        {
            "event": "$pageview",
            "conditions": [{"property": "path", "operator": "eq", "value": "/pricing"}],
        },
        {"event": "signup"},
    ],
    "window": {"value": 2, "unit": "day"},
    "breakdown": "country",
    "breakdown_limit": 1000,
}
RETENTION: dict[str, Any] = {
    **RANGE,
    "start_event": {"event": "$pageview"},
    "return_event": {"event": "click"},
    "intervals": 3,
    "timezone": "Europe/Berlin",
}
PATHS: dict[str, Any] = {
    **RANGE,
    "event_types": ["pageview", "custom"],
    "steps": 4,
    "edge_limit": 1000,
    "cleaning_rules": [{"regex": "^/docs/.*$", "replacement": "/docs/*"}],
}


def scan_events(events: list[EventV1]) -> list[Ev]:
    """The events as `events_scan` shows them: persons resolved through the aliases."""
    aliases = alias_links(events)
    return [
        Ev(
            person=aliases.get((e.project_id, e.distinct_id)) or e.user_id or e.distinct_id,
            name=e.name,
            ts=e.ts,
            event_id=e.event_id,
            path=e.path,
            session_id=e.session_id,
            country=e.country,
            non_interactive=e.non_interactive,
            is_bot=e.is_bot,
            properties=dict(e.properties),
        )
        for e in events
    ]


@pytest.mark.parametrize("layout_name", LAYOUTS)
async def test_analyses_answer_the_same_in_every_tier_layout(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
    layout_name: str,
) -> None:
    events = generate_events("acme", FIRST_DAY, DAYS, devices=60, seed=5)
    async with tier_layout(layout_name, pool, events, tmp_path) as layout:
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            key = project.read_key
            status, funnel = await post_json(client, f"{API}/funnels", key, FUNNEL)
            assert status == 200, funnel
            status, retention = await post_json(client, f"{API}/retention", key, RETENTION)
            assert status == 200, retention
            status, paths = await post_json(client, f"{API}/paths", key, PATHS)
            assert status == 200, paths
    tiers = {t["tier"] for t in funnel["tiers"]}
    assert tiers == ({"hot"} if layout_name == "all_hot" else {"hot", "cold"})
    assert_reference_answers(events, funnel, retention, paths)


def assert_reference_answers(
    events: list[EventV1], funnel: dict[str, Any], retention: dict[str, Any], paths: dict[str, Any]
) -> None:
    """The answers to FUNNEL, RETENTION and PATHS are the reference's over `events`."""
    reference_events = scan_events(events)

    steps = [msgspec.convert(s, FunnelStep) for s in FUNNEL["steps"]]
    expected = ref_funnel(
        reference_events,
        steps,
        order="ordered",
        window_s=2 * 86400,
        start=FROM,
        end=TO,
        breakdown="country",
    )
    assert [s["count"] for s in funnel["steps"]] == [c for c, _, _ in expected.total]
    assert expected.total[2][0] > 0
    for got, (_, median, mean) in zip(funnel["steps"], expected.total, strict=True):
        assert got["median_time_from_previous_s"] == (None if median is None else round(median, 1))
        assert got["avg_time_from_previous_s"] == (None if mean is None else round(mean, 1))
    assert {
        v["value"]: [s["count"] for s in v["steps"]] for v in funnel["breakdown"]["values"]
    } == {value: [c for c, _, _ in stats] for value, stats in expected.breakdown.items()}

    tz = ZoneInfo("Europe/Berlin")
    rows = ref_retention(
        reference_events,
        msgspec.convert(RETENTION["start_event"], EventMatch),
        msgspec.convert(RETENTION["return_event"], EventMatch),
        period="day",
        intervals=3,
        week_start="monday",
        mode="recurring",
        cumulative=False,
        start=FROM,
        end=TO,
        tz=tz,
        now=datetime.now(UTC),
    )
    got_rows = [
        (datetime.fromisoformat(r["period_start"]).date(), r["size"], r["counts"])
        for r in retention["matrix"]
    ]
    assert got_rows == rows
    assert any(count for _, _, counts in rows for count in counts[1:]), "nobody returned"

    nodes, edges, sessions = ref_paths(
        reference_events,
        event_types=["pageview", "custom"],
        steps=4,
        start=FROM,
        end=TO,
        session_max=timedelta(days=1),
        rules=[("^/docs/.*$", "/docs/*")],
    )
    assert paths["sessions"] == sessions > 0
    got_edges = {
        (
            int(e["source"].split("_", 1)[0]),
            e["source"].split("_", 1)[1],
            e["target"].split("_", 1)[1],
        ): e["value"]
        for e in paths["edges"]
    }
    assert got_edges == edges
    shown = {(n["step"], n["name"]): (n["count"], n["drop_offs"]) for n in paths["nodes"]}
    assert shown == {k: v for k, v in nodes.items() if k in shown}


def count_direct_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each funnel read from the scan's in-memory tables without DuckDB
    (cached_rows.py; -1: the reader could not answer), recorded as the funnels run."""
    reads: list[int] = []
    read = funnels.funnel_rows

    def counted(*args: Any, **kwargs: Any) -> Any:
        table = read(*args, **kwargs)
        reads.append(-1 if table is None else table.num_rows)
        return table

    monkeypatch.setattr(funnels, "funnel_rows", counted)
    return reads


@pytest.mark.parametrize("layout_name", ["split", "all_exported"])
async def test_analyses_answer_the_same_from_the_column_cache(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
    layout_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first requests read the day files from Parquet (the cache fills after each scan);
    # the same requests again read every exported day from memory and answer the same, the
    # plain-Python reference's answers. The second round's funnel without a breakdown reads
    # the cached days and the hot rows as they are in memory, without DuckDB (cached_rows.py).
    direct_reads = count_direct_reads(monkeypatch)
    events = generate_events("acme", FIRST_DAY, DAYS, devices=60, seed=5)
    cache_bytes = 64 * 1024**2
    answers = []
    async with tier_layout(
        layout_name, pool, events, tmp_path, column_cache_bytes=cache_bytes
    ) as layout:
        columns = layout.engine.columns
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            for _ in range(2):
                served = columns.served
                answer = []
                # The funnel without its breakdown (country, not cached) first, which the
                # first round reads from the files alone (nothing is cached before it).
                for route, body in (
                    ("funnels", {k: v for k, v in FUNNEL.items() if "breakdown" not in k}),
                    ("funnels", FUNNEL),
                    ("retention", RETENTION),
                    ("paths", PATHS),
                ):
                    status, result = await post_json(
                        client, f"{API}/{route}", project.read_key, body
                    )
                    assert status == 200, result
                    answer.append(
                        {k: v for k, v in result.items() if k not in ("tiers", "freshness")}
                    )
                answers.append((answer, columns.served - served))
                columns.settle()
        held = columns.nbytes
    (first, _), (again, served) = answers
    assert served >= 4 * len(layout.exported_days)  # every exported day, each request
    # Only in the second round: in the first, the files were not cached yet.
    assert len(direct_reads) == 1
    assert all(rows > 0 for rows in direct_reads)
    assert 0 < held <= cache_bytes
    assert again == first
    assert_reference_answers(events, *again[1:])


async def test_a_funnel_over_rows_in_memory_leaves_out_an_open_erasure_s_person(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every day exported and its columns cached: the funnel reads the rows in memory without
    # DuckDB. Once a person's erasure is requested (their rows gone from PostgreSQL, still in
    # the day files until the tiering service rewrites them), the funnel goes back to the
    # scan's query, which hides them: the answer is the reference's without that person.
    direct_reads = count_direct_reads(monkeypatch)
    events = generate_events("acme", FIRST_DAY, DAYS, devices=60, seed=5)
    body = {k: v for k, v in FUNNEL.items() if "breakdown" not in k}
    steps = [msgspec.convert(s, FunnelStep) for s in FUNNEL["steps"]]
    aliases = alias_links(events)
    # A device without a user id or alias that reached the funnel's last step in the range.
    reference = scan_events(events)
    signed_up = {e.person for e in reference if e.name == "signup" and FROM <= e.ts < TO}
    device = next(
        e.distinct_id
        for e in events
        if e.distinct_id in signed_up
        and e.user_id is None
        and ("acme", e.distinct_id) not in aliases
        and not e.is_bot
    )

    def counts(without: str | None) -> list[int]:
        kept = [e for e in events if e.distinct_id != without]
        expected = ref_funnel(
            scan_events(kept), steps, order="ordered", window_s=2 * 86400, start=FROM, end=TO
        )
        return [c for c, _, _ in expected.total]

    async with tier_layout(
        "all_exported", pool, events, tmp_path, column_cache_bytes=64 * 1024**2
    ) as layout:
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:

            async def funnel() -> list[int]:
                status, result = await post_json(client, f"{API}/funnels", project.read_key, body)
                assert status == 200, result
                return [s["count"] for s in result["steps"]]

            assert await funnel() == counts(None)
            layout.engine.columns.settle()
            assert await funnel() == counts(None)
            assert len(direct_reads) == 1  # the second request, from memory
            async with pool.acquire() as conn:
                await request_erasure(
                    conn, project_id="acme", user_id=None, distinct_ids=[device], key_id="test"
                )
            assert counts(device) != counts(None)
            assert await funnel() == counts(device)
            assert len(direct_reads) == 1  # not from memory while the request is open


def quiet_bounds(events: list[Ev]) -> tuple[datetime, datetime]:
    """A range whose ends fall strictly between two events, so no inclusive/exclusive boundary
    question can change the expected answers."""
    times = sorted({e.ts for e in events})
    lo = next(i for i, t in enumerate(times) if t >= FROM)
    hi = next(i for i, t in enumerate(times) if t >= TO)
    return times[lo - 1] + (times[lo] - times[lo - 1]) / 2, times[hi - 1] + (
        times[hi] - times[hi - 1]
    ) / 2


def signed_up_in_quiet_bounds(events: list[EventV1]) -> tuple[list[str], dict[str, str]]:
    """The persons (not bots) with a signup inside `quiet_bounds`, sorted, and that range as
    the API's `from`/`to`."""
    reference = [e for e in scan_events(events) if not e.is_bot]
    start, end = quiet_bounds(reference)
    signed_up = sorted({e.person for e in reference if start <= e.ts < end and e.name == "signup"})
    assert signed_up
    return signed_up, {"from": start.isoformat(), "to": end.isoformat()}


async def save_signup_cohort(client: Any, key: str, span: dict[str, str]) -> None:
    """Save the behavioral cohort `signed-up`: persons with a signup in `span`."""
    cohort = {
        "id": "signed-up",
        "name": "Signed up",
        "definition": {"type": "behavioral", "event": "signup", **span},
    }
    status, body = await post_json(client, f"{API}/cohorts", key, cohort)
    assert status == 201, body


@pytest.mark.parametrize("layout_name", LAYOUTS)
async def test_cohorts_and_custom_metrics_answer_the_same_in_every_tier_layout(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
    layout_name: str,
) -> None:
    events = generate_events("acme", FIRST_DAY, DAYS, devices=60, seed=5)
    reference = [e for e in scan_events(events) if not e.is_bot]
    start, end = quiet_bounds(reference)
    in_range = [e for e in reference if start <= e.ts < end]
    signed_up = sorted({e.person for e in in_range if e.name == "signup"})
    clickers = {e.person for e in in_range if e.name == "click"}
    assert signed_up and clickers
    span = {"from": start.isoformat(), "to": end.isoformat()}
    async with tier_layout(layout_name, pool, events, tmp_path) as layout:
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            key = project.read_key
            await save_signup_cohort(client, key, span)
            status, body = await get_json(
                client, f"{API}/cohorts/signed-up/persons", key, {"limit": "1000"}
            )
            assert status == 200, body
            assert body["person_ids"] == signed_up

            metric = {
                "id": "clickers",
                "name": "Clickers",
                "definition": {"kind": "unique_persons", "event": "click"},
            }
            status, body = await post_json(client, f"{API}/metric-definitions", key, metric)
            assert status == 201, body
            status, body = await get_json(
                client, f"{API}/metrics", key, {**span, "metrics": "metric:clickers"}
            )
            assert status == 200, body
            assert body["totals"]["metric:clickers"] == len(clickers)
            status, body = await get_json(
                client,
                f"{API}/metrics",
                key,
                {**span, "metrics": "metric:clickers", "cohort": "signed-up"},
            )
            assert status == 200, body
            assert body["totals"]["metric:clickers"] == len(clickers & set(signed_up))


async def test_a_behavioral_cohort_reads_cached_days_and_answers_the_same(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
) -> None:
    # A cohort of persons who did an event (no property condition) names only cached columns,
    # so once the exported days are cached it reads them from memory (which view it picks:
    # tests/unit/test_cohort_cached_view.py): the same persons as from the files.
    events = generate_events("acme", FIRST_DAY, DAYS, devices=60, seed=5)
    signed_up, span = signed_up_in_quiet_bounds(events)
    async with tier_layout(
        "all_exported", pool, events, tmp_path, column_cache_bytes=64 * 1024**2
    ) as layout:
        columns = layout.engine.columns
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            key = project.read_key
            await save_signup_cohort(client, key, span)
            served = []
            for _ in range(2):
                before = columns.served
                status, body = await get_json(
                    client, f"{API}/cohorts/signed-up/persons", key, {"limit": "1000"}
                )
                assert status == 200, body
                assert body["person_ids"] == signed_up
                served.append(columns.served - before)
                columns.settle()
    assert served[0] == 0 and served[1] > 0


def with_exposures(events: list[EventV1]) -> list[EventV1]:
    """Add an exposure to experiment 'exp' (variant by device parity) one second after each
    device's third event, so exposures fall on every day of the dataset."""
    seen: dict[str, int] = {}
    extra = []
    for ev in sorted(events, key=lambda e: (e.ts, e.event_id)):
        seen[ev.distinct_id] = seen.get(ev.distinct_id, 0) + 1
        if seen[ev.distinct_id] == 3 and not ev.is_bot:
            variant = "b" if int(ev.distinct_id.rsplit("-", 1)[1]) % 2 else "a"
            extra.append(
                msgspec.structs.replace(
                    ev,
                    event_id=f"exposure-{ev.event_id}",
                    type="track",
                    name="$experiment_exposure",
                    ts=ev.ts + timedelta(seconds=1),
                    properties={"experiment": "exp", "variant": variant},
                    non_interactive=True,
                )
            )
    return events + extra


@pytest.mark.parametrize("layout_name", LAYOUTS)
async def test_experiments_answer_the_same_in_every_tier_layout(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tmp_path: Path,
    layout_name: str,
) -> None:
    events = with_exposures(generate_events("acme", FIRST_DAY, DAYS, devices=60, seed=5))
    reference = [e for e in scan_events(events) if not e.is_bot]
    start, end = quiet_bounds(reference)
    in_range = sorted(
        (e for e in reference if start <= e.ts < end), key=lambda e: (e.ts, e.event_id)
    )
    first_exposure: dict[str, tuple[datetime, str]] = {}
    for e in in_range:
        if e.name == "$experiment_exposure" and e.person not in first_exposure:
            first_exposure[e.person] = (e.ts, str(e.properties["variant"]))
    converted = {
        e.person
        for e in in_range
        if e.name == "signup" and e.person in first_exposure and e.ts >= first_exposure[e.person][0]
    }
    expected = {
        v: (
            sum(1 for _, var in first_exposure.values() if var == v),
            sum(1 for p, (_, var) in first_exposure.items() if var == v and p in converted),
        )
        for v in ("a", "b")
    }
    assert all(n > 0 for n, _ in expected.values()) and converted
    request = {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "experiment": "exp",
        "control": "a",
        "variants": ["a", "b"],
        "exposure": {
            "event": "$experiment_exposure",
            "experiment_property": "experiment",
            "variant_property": "variant",
        },
        "goal": {"metric": {"kind": "unique_persons", "event": "signup"}},
    }
    async with tier_layout(layout_name, pool, events, tmp_path) as layout:
        async with query_client(pool, nats_url, subjects, scan_engine=layout.engine) as client:
            status, body = await post_json(
                client, f"{API}/experiments/analyze", project.read_key, request
            )
    assert status == 200, body
    got = {v["variant"]: (v["exposures"], v["conversions"]) for v in body["variants"]}
    assert got == expected
