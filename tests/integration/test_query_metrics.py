"""Every metric the query API returns, on a generated dataset, equals an independent
recomputation from the raw `events` and `sessions` rows: totals, every bucket, every breakdown
value, with filters, in UTC and in other time zones, from rollups and from raw events."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from libs.common.subjects import Subjects
from tests.support.analytics_dataset import Tables, expected_metrics, generate_events, load, utc
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client

pytestmark = pytest.mark.infra

METRICS_URL = "/api/v1/analytics/metrics"
FIRST_DAY = utc(2025, 3, 24)  # a Monday; Europe's DST change (2025-03-30) falls inside
DAYS = 14
ALL_METRICS = [
    "visitors",
    "pageviews",
    "sessions",
    "bounce_rate",
    "avg_session_duration",
    "views_per_session",
    "events",
    "event:signup",
    "event:scroll",
]


# How answers round ratios and averages (docs/api-query.md, "Rounding").
DECIMALS = {"bounce_rate": 3, "avg_session_duration": 1, "views_per_session": 2}


def visitors_close(got: int, want: int) -> bool:
    """HLL (lg_k 11, ~2.3% standard error) within about two standard errors, or one visitor."""
    return abs(got - want) <= max(1, math.ceil(0.05 * want))


def assert_values(
    got: dict[str, Any], want: dict[str, Any] | None, source: str, where: str
) -> None:
    for metric, value in got.items():
        expected = (want or {}).get(metric)
        if expected is None and metric in (
            "bounce_rate",
            "avg_session_duration",
            "views_per_session",
        ):
            assert value is None, f"{where} {metric}: {value} != None"
        elif expected is None:
            assert value == 0, f"{where} {metric}: {value} != 0"
        elif metric == "visitors" and source == "rollups":
            assert visitors_close(value, expected), f"{where} visitors: {value} vs {expected}"
        elif isinstance(expected, float):
            want_value = round(expected, DECIMALS[metric]) if metric in DECIMALS else expected
            assert value == pytest.approx(want_value, rel=1e-9), f"{where} {metric}: {value}"
        else:
            assert value == expected, f"{where} {metric}: {value} != {expected}"


def local_label(raw: str, tz: ZoneInfo) -> datetime:
    return datetime.fromisoformat(raw).astimezone(tz).replace(tzinfo=None)


def assert_response_matches(body: dict[str, Any], want: dict[Any, Any], tz: ZoneInfo) -> None:
    source = body["source"]
    assert_values(body["totals"], want.get((None, None)), source, "totals")
    labels = {local_label(p["bucket"], tz) for p in body["series"]}
    data_buckets = {b for (b, v) in want if b is not None and v is None}
    assert data_buckets <= labels, f"buckets with data missing: {sorted(data_buckets - labels)}"
    for point in body["series"]:
        label = local_label(point["bucket"], tz)
        assert_values(point["values"], want.get((label, None)), source, f"bucket {label}")
    if body["breakdown"] is None:
        return
    returned = {row["value"] for row in body["breakdown"]["results"]}
    wanted_values = {v for (b, v) in want if b is None and v is not None}
    assert returned == wanted_values
    for row in body["breakdown"]["results"]:
        value = row["value"]
        assert_values(row["totals"], want.get((None, value)), source, f"{value} totals")
        for point in row["series"]:
            label = local_label(point["bucket"], tz)
            assert_values(point["values"], want.get((label, value)), source, f"{value} @ {label}")


@pytest.fixture
async def dataset(pool: asyncpg.Pool, project: TestProject) -> Tables:
    events = generate_events(project.id, FIRST_DAY, DAYS)
    async with pool.acquire() as conn:
        await load(conn, events)
        tables = await Tables.fetch(conn, project.id)
    assert len(tables.events) == len(events)
    assert any(e["is_bot"] for e in tables.events) and any(s["is_bot"] for s in tables.sessions)
    return tables


# (case, params, expected source under source=auto)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("utc days", {"interval": "day"}, "rollups"),
    ("utc days with bots", {"interval": "day", "include_bots": "true"}, "rollups"),
    ("utc weeks", {"interval": "week"}, "rollups"),
    ("utc months", {"interval": "month"}, "rollups"),
    # Hourly rollup rows are kept for all events and pageviews only (migration 0027): hours,
    # and local days off UTC midnights, of event:signup and event:scroll come from events
    # (HOURLY_CASES below ask the same without them, from rollups).
    ("utc hours", {"interval": "hour", "from": "2025-03-29", "to": "2025-03-30"}, "events"),
    ("berlin days over DST", {"interval": "day", "timezone": "Europe/Berlin"}, "events"),
    ("new york weeks", {"interval": "week", "timezone": "America/New_York"}, "events"),
    ("kolkata days", {"interval": "day", "timezone": "Asia/Kolkata"}, "events"),
    (
        "partial hours",
        {"interval": "day", "from": "2025-03-25T10:30:00Z", "to": "2025-04-02T17:15:00Z"},
        "events",
    ),
    # Rollups hold dimensions for all events and pageviews, not per event name: with
    # event:signup and event:scroll asked for, a dimension is read from events (DIMENSION_CASES
    # below ask the same without them, from rollups).
    ("breakdown country", {"interval": "week", "breakdown": "country"}, "events"),
    ("breakdown page", {"interval": "day", "breakdown": "page"}, "events"),
    # Rollups hold dimensions by UTC day: local days elsewhere are answered from events.
    ("breakdown channel berlin", {"breakdown": "channel", "timezone": "Europe/Berlin"}, "events"),
    ("breakdown page by hour", {"interval": "hour", "breakdown": "page"}, "events"),
    (
        "filter device without breakdown",
        {"interval": "day", "filter": ["device_type:mobile"]},
        "events",
    ),
    (
        "two filters",
        {"interval": "day", "filter": ["country:US", "device_type:desktop"]},
        "events",
    ),
    (
        "filter and another breakdown",
        {"interval": "week", "filter": ["browser:Safari"], "breakdown": "utm_source"},
        "events",
    ),
    ("filter event", {"interval": "day", "filter": ["event:signup", "event:download"]}, "events"),
    ("breakdown event", {"interval": "week", "breakdown": "event"}, "events"),
]
# One dimension over UTC days, with the metrics whose rows hold dimensions.
CORE_METRICS = [*ALL_METRICS[:7], "event:$pageview"]
# Hours, with the metrics whose names keep hourly rows (all events and pageviews).
HOURLY_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("utc hours", {"interval": "hour", "from": "2025-03-29", "to": "2025-03-30"}, "rollups"),
    ("berlin days over DST", {"interval": "day", "timezone": "Europe/Berlin"}, "rollups"),
    ("new york weeks", {"interval": "week", "timezone": "America/New_York"}, "rollups"),
]
HOURLY_NAME_FILTER_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "pageview filter by hour",
        {
            "interval": "hour",
            "from": "2025-03-29",
            "to": "2025-03-30",
            "filter": ["event:$pageview"],
        },
        "rollups",
    ),
    (
        "signup filter by hour",
        {"interval": "hour", "from": "2025-03-29", "to": "2025-03-30", "filter": ["event:signup"]},
        "events",
    ),
]
DIMENSION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("breakdown country", {"interval": "week", "breakdown": "country"}, "rollups"),
    ("breakdown page", {"interval": "day", "breakdown": "page"}, "rollups"),
    ("filter device", {"interval": "day", "filter": ["device_type:mobile"]}, "rollups"),
    (
        "filter and breakdown on one dimension",
        {"interval": "week", "filter": ["country:DE", "country:(none)"], "breakdown": "country"},
        "rollups",
    ),
]
# Exit page: a dimension of sessions only.
SESSION_ONLY_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("breakdown exit page", {"interval": "week", "breakdown": "exit_page"}, "rollups"),
    (
        "filter exit page",
        {"interval": "day", "filter": ["exit_page:/pricing", "exit_page:(none)"]},
        "rollups",
    ),
    ("exit page by hour", {"interval": "hour", "breakdown": "exit_page"}, "events"),
]
EVENT_ONLY_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("event breakdown, event metrics", {"interval": "day", "breakdown": "event"}, "rollups"),
    (
        "event filter with page breakdown",
        {"interval": "week", "filter": ["event:$pageview"], "breakdown": "page"},
        "events",  # event:signup by page
    ),
]
PAGEVIEW_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "pageview filter with page breakdown",
        {"interval": "week", "filter": ["event:$pageview"], "breakdown": "page"},
        "rollups",
    ),
]


def _request_params(params: dict[str, Any], metrics: list[str]) -> list[tuple[str, str]]:
    out = [("metrics", ",".join(metrics)), ("from", "2025-03-24"), ("to", "2025-04-06")]
    out = [(k, v) for k, v in out if k not in params]
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            out.append((key, item))
    out.append(("limit", "1000"))
    return out


def _expected(tables: Tables, params: dict[str, Any], metrics: list[str]) -> dict[Any, Any]:
    tz = ZoneInfo(params.get("timezone", "UTC"))

    def instant(name: str, default: str) -> datetime:
        raw = params.get(name, default)
        if "T" in raw:
            return datetime.fromisoformat(raw)
        day = datetime.fromisoformat(raw).replace(tzinfo=tz)
        # Aware + timedelta is wall-clock arithmetic: the next local midnight.
        return day + timedelta(days=1) if name == "to" else day

    filters: dict[str, set[str]] = {}
    for raw in params.get("filter", []):
        dim, _, value = raw.partition(":")
        filters.setdefault(dim, set()).add(value)
    return expected_metrics(
        tables,
        start=instant("from", "2025-03-24"),
        end=instant("to", "2025-04-06"),
        tz=tz,
        interval=params.get("interval", "day"),
        metrics=metrics,
        filters=filters,
        breakdown=params.get("breakdown"),
        include_bots=params.get("include_bots") == "true",
    )


async def _check_cases(
    client: Any,
    key: str,
    tables: Tables,
    cases: list[tuple[str, dict[str, Any], str]],
    metrics: list[str],
) -> None:
    for name, params, auto_source in cases:
        want = _expected(tables, params, metrics)
        tz = ZoneInfo(params.get("timezone", "UTC"))
        for source in ("auto", "events"):
            status, body = await get_json(
                client, METRICS_URL, key, [*_request_params(params, metrics), ("source", source)]
            )
            assert status == 200, (name, body)
            assert body["source"] == (auto_source if source == "auto" else "events"), name
            assert body["tiers"] == ["hot"]
            try:
                assert_response_matches(body, want, tz)
            except AssertionError as exc:
                raise AssertionError(f"case {name!r} (source={body['source']}): {exc}") from exc


async def test_every_metric_matches_a_recomputation_from_raw_rows(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject, dataset: Tables
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        await _check_cases(client, project.read_key, dataset, CASES, ALL_METRICS)
        event_metrics = ["visitors", "pageviews", "events", "event:signup", "event:$pageview"]
        await _check_cases(client, project.read_key, dataset, EVENT_ONLY_CASES, event_metrics)
        await _check_cases(client, project.read_key, dataset, DIMENSION_CASES, CORE_METRICS)
        await _check_cases(client, project.read_key, dataset, HOURLY_CASES, CORE_METRICS)
        pageview_metrics = ["visitors", "pageviews", "events", "event:$pageview"]
        await _check_cases(client, project.read_key, dataset, PAGEVIEW_CASES, pageview_metrics)
        await _check_cases(
            client, project.read_key, dataset, HOURLY_NAME_FILTER_CASES, pageview_metrics
        )
        session_metrics = ["sessions", "bounce_rate", "avg_session_duration", "views_per_session"]
        await _check_cases(client, project.read_key, dataset, SESSION_ONLY_CASES, session_metrics)
        # With an event metric the exit page has no meaning: a 400 that says so.
        status, body = await get_json(
            client,
            METRICS_URL,
            project.read_key,
            {"breakdown": "exit_page", "metrics": "sessions,visitors"},
        )
        assert status == 400 and body["param"] == "breakdown", body
        assert "session metrics only" in body["error"] and "visitors" in body["error"], body


async def test_totals_are_nonzero_and_consistent_across_intervals(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject, dataset: Tables
) -> None:
    """Additive metrics summed over buckets equal the totals, whatever the interval."""
    async with query_client(pool, nats_url, subjects) as client:
        totals = []
        for interval in ("hour", "day", "week", "month"):
            status, body = await get_json(
                client,
                METRICS_URL,
                project.read_key,
                {"from": "2025-03-24", "to": "2025-04-06", "interval": interval},
            )
            assert status == 200
            for metric in ("pageviews", "events", "sessions"):
                assert sum(p["values"][metric] for p in body["series"]) == body["totals"][metric]
            totals.append(body["totals"])
        assert totals[0]["events"] > 300 and totals[0]["sessions"] > 100
        assert all(t == totals[0] for t in totals[1:])


async def test_rollups_are_forced_or_refused_by_source(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject, dataset: Tables
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        status, body = await get_json(
            client,
            METRICS_URL,
            project.read_key,
            {
                "from": "2025-03-24",
                "to": "2025-04-06",
                "timezone": "Asia/Kolkata",
                "source": "rollups",
            },
        )
        assert status == 400
        assert body == {
            "error": "source: rollups cannot answer this exactly: a bucket boundary is not on a"
            " whole UTC hour",
            "param": "source",
        }


async def test_reports_match_recomputation(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject, dataset: Tables
) -> None:
    params = {"from": "2025-03-24", "to": "2025-04-06", "limit": "1000"}
    tz = ZoneInfo("UTC")
    window = {"start": utc(2025, 3, 24), "end": utc(2025, 4, 7), "tz": tz, "interval": None}
    async with query_client(pool, nats_url, subjects) as client:
        # Top pages: pageviews, visitors, entries (sessions by entry page), bounce rate.
        status, body = await get_json(client, "/api/v1/analytics/pages", project.read_key, params)
        assert status == 200 and body["source"] == "rollups"
        want = expected_metrics(
            dataset,
            metrics=["pageviews", "visitors", "sessions", "bounce_rate"],
            breakdown="page",
            **window,  # type: ignore[arg-type]
        )
        pages = body["pages"]
        assert {p["page"] for p in pages} == {v for (_, v) in want if v is not None}
        assert [p["pageviews"] for p in pages] == sorted(
            (p["pageviews"] for p in pages), reverse=True
        )
        for page in pages:
            cell = want[(None, page["page"])]
            assert page["pageviews"] == cell["pageviews"]
            assert visitors_close(page["visitors"], cell["visitors"])
            assert page["entries"] == cell["sessions"]
            assert page["bounce_rate"] == pytest.approx(round(cell["bounce_rate"], 3))
        # Time on page: from each pageview to the next pageview of its session.
        durations: dict[str, list[float]] = {}
        by_session: dict[str, list[dict[str, Any]]] = {}
        for ev in dataset.events:
            if ev["name"] == "$pageview" and not ev["is_bot"]:
                by_session.setdefault(ev["session_id"], []).append(ev)
        for views in by_session.values():
            views.sort(key=lambda e: (e["ts"], e["event_id"]))
            for view, following in itertools.pairwise(views):
                page = view["path"] or "(none)"
                durations.setdefault(page, []).append(
                    (following["ts"] - view["ts"]).total_seconds()
                )
        for page in pages:
            seconds = durations.get(page["page"])
            if seconds:
                assert page["avg_time_on_page_s"] == pytest.approx(
                    round(sum(seconds) / len(seconds), 1)
                )
            else:
                assert page["avg_time_on_page_s"] is None

        for path, by in (
            ("sources", "channel"),
            ("sources", "utm_campaign"),
            ("devices", "browser"),
        ):
            status, body = await get_json(
                client, f"/api/v1/analytics/{path}", project.read_key, {**params, "by": by}
            )
            assert status == 200 and body["dimension"] == by
            want = expected_metrics(
                dataset,
                metrics=[
                    "visitors",
                    "pageviews",
                    "sessions",
                    "bounce_rate",
                    "avg_session_duration",
                ],
                breakdown=by,
                **window,  # type: ignore[arg-type]
            )
            assert {r["value"] for r in body["results"]} == {v for (_, v) in want if v is not None}
            for row in body["results"]:
                cell = want[(None, row["value"])]
                assert visitors_close(row["visitors"], cell["visitors"])
                for metric in ("pageviews", "sessions"):
                    assert row[metric] == cell[metric], (by, row)
                for metric in ("bounce_rate", "avg_session_duration"):
                    expected_value = round(cell[metric], DECIMALS[metric])
                    assert row[metric] == pytest.approx(expected_value), (by, row)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def test_performance_percentiles_match_recomputation(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject, dataset: Tables
) -> None:
    import msgspec

    async with query_client(pool, nats_url, subjects) as client:
        status, body = await get_json(
            client,
            "/api/v1/analytics/performance",
            project.read_key,
            {
                "from": "2025-03-24",
                "to": "2025-04-06",
                "filter": "device_type:mobile",
                "limit": "1000",
            },
        )
    assert status == 200 and body["source"] == "events"
    samples: dict[tuple[str | None, str], list[float]] = {}
    for ev in dataset.events:
        if ev["is_bot"] or ev["device_type"] != "mobile":
            continue
        props = msgspec.json.decode(ev["properties"]) if ev["properties"] else {}
        for prop in ("lcp", "cls", "load_time_ms"):
            if isinstance(props.get(prop), int | float):
                for page in (None, ev["path"] or "(none)"):
                    samples.setdefault((page, prop), []).append(float(props[prop]))
    assert set(body["overall"]) == {"lcp", "cls", "load_time_ms"}
    checked = 0
    for page_row in [{"page": None, "metrics": body["overall"]}, *body["pages"]]:
        for prop, stats in page_row["metrics"].items():
            values = samples[(page_row["page"], prop)]
            assert stats["samples"] == len(values)
            digits = 4 if prop == "cls" else 1  # milliseconds to a tenth, CLS to 4 decimals
            # Rounded to `digits`: a sum taken in another order may round the other way at
            # an exact half, so the answer is within half a unit of the last digit.
            unit = 0.5 * 10**-digits + 1e-9
            assert stats["avg"] == pytest.approx(sum(values) / len(values), abs=unit)
            for q, name in ((0.5, "p50"), (0.75, "p75"), (0.9, "p90"), (0.99, "p99")):
                assert stats[name] == pytest.approx(_percentile(values, q), abs=unit), (
                    page_row["page"],
                    prop,
                )
            checked += 1
    assert checked == len(samples)
