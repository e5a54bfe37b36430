"""The query API's contract around the numbers: keys and project isolation, every bad
parameter's 400, raw-event pagination, sessions and journeys, the live stream, OpenAPI."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from libs.common import keys
from libs.common.schemas.events_v1 import IDENTIFY, PAGEVIEW, EnrichedBatchV1, EventV1
from libs.common.subjects import Subjects
from services.aggregator.writer import write_events
from services.query.metrics import METRICS_PARAMS
from services.query.performance import PERFORMANCE_PARAMS
from services.query.reports import REPORT_PARAMS
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client

pytestmark = pytest.mark.infra

API = "/api/v1/analytics"
DAY = datetime(2025, 5, 5, tzinfo=UTC)


def event(
    event_id: str,
    ts: datetime,
    *,
    project_id: str = "acme",
    name: str = PAGEVIEW,
    distinct_id: str = "anon-1",
    user_id: str | None = None,
    anonymous: bool = True,
    session_id: str = "s-1",
    **fields: Any,
) -> EventV1:
    return EventV1(
        event_id=event_id,
        project_id=project_id,
        type="page" if name == PAGEVIEW else "track",
        name=name,
        ts=ts,
        received_at=ts,
        distinct_id=distinct_id,
        anonymous_id=distinct_id if anonymous else None,
        user_id=user_id,
        session_id=session_id,
        **fields,
    )


async def other_project(pool: asyncpg.Pool) -> str:
    """A second project, 'globex', with one session of its own; returns its read key."""
    async with pool.acquire() as conn:
        await keys.ensure_project(conn, "globex", "Globex")
        _, read = await keys.create_key(conn, "globex", "read")
        await write_events(
            conn,
            [
                event("g-1", DAY, project_id="globex", distinct_id="g-anon", session_id="g-s"),
                event("g-2", DAY, project_id="globex", distinct_id="g-anon", session_id="g-s"),
            ],
        )
    return read


async def test_keys_roles_and_project_isolation(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with pool.acquire() as conn:
        await write_events(conn, [event("a-1", DAY), event("a-2", DAY + timedelta(minutes=1))])
        _, operator_key = await keys.create_key(conn, None, "admin")
        revoked, revoked_secret = await keys.create_key(conn, "acme", "read")
        await keys.revoke_key(conn, revoked.id)
    globex_key = await other_project(pool)
    metrics = f"{API}/metrics"
    window = {"from": "2025-05-05", "to": "2025-05-05", "metrics": "pageviews,sessions"}
    async with query_client(pool, nats_url, subjects) as client:
        assert await get_json(client, metrics, None, window) == (
            401,
            {"error": "missing bearer token: send Authorization: Bearer <read key>", "param": None},
        )
        assert await get_json(client, metrics, "sk_r_nope", window) == (
            401,
            {"error": "unknown or revoked key", "param": None},
        )
        assert (await get_json(client, metrics, revoked_secret, window))[0] == 401
        assert await get_json(client, metrics, project.write_key, window) == (
            403,
            {"error": "a write key cannot read analytics; use a read key", "param": None},
        )
        # Read and project-bound admin keys read their own project.
        for key in (project.read_key, project.admin_key):
            status, body = await get_json(client, metrics, key, window)
            assert status == 200
            assert body["totals"] == {"pageviews": 2, "sessions": 1}
        # A key never reads another project, even when it names it.
        status, body = await get_json(
            client, metrics, project.read_key, {**window, "project": "globex"}
        )
        assert status == 403
        status, body = await get_json(client, metrics, globex_key, window)
        assert status == 200 and body["totals"] == {"pageviews": 2, "sessions": 1}
        status, body = await get_json(client, f"{API}/events", globex_key)
        assert status == 200 and {e["event_id"] for e in body["events"]} == {"g-1", "g-2"}
        assert (await get_json(client, f"{API}/sessions/s-1", globex_key))[0] == 404
        assert (await get_json(client, f"{API}/users/anon-1/journey", globex_key))[0] == 404
        assert (await get_json(client, f"{API}/sessions/g-s", project.read_key))[0] == 404
        # An operator's admin key of no project must say which one.
        assert await get_json(client, metrics, operator_key, window) == (
            400,
            {
                "error": "project: required with a key that is not bound to a project",
                "param": "project",
            },
        )
        status, body = await get_json(
            client, metrics, operator_key, {**window, "project": "globex"}
        )
        assert status == 200 and body["totals"]["pageviews"] == 2
        assert await get_json(client, metrics, operator_key, {**window, "project": "nope"}) == (
            404,
            {"error": "unknown project 'nope'", "param": None},
        )


BAD_PARAMS: list[tuple[str, dict[str, str] | list[tuple[str, str]], str, str]] = [
    (
        "metrics",
        {"interval": "year"},
        "interval",
        "must be one of hour, day, week, month, not 'year'",
    ),
    (
        "metrics",
        {"from": "last tuesday"},
        "from",
        "'last tuesday' is not an ISO date (2024-05-01), datetime (2024-05-01T10:00:00Z) or "
        "relative period (today, yesterday, 7d, 30d, month, last_month, 12mo, all, <n>d, <n>mo)",
    ),
    (
        "metrics",
        {"period": "fortnight"},
        "period",
        "must be one of today, yesterday, 7d, 30d, month, last_month, 12mo, all, <n>d or <n>mo,"
        " not 'fortnight'",
    ),
    ("pages", {"period": "7d", "from": "2025-05-01"}, "period", "give period or from/to, not both"),
    (
        "metrics",
        {"compare": "last_week"},
        "compare",
        "must be one of previous_period, previous_year, not 'last_week'",
    ),
    ("metrics", {"to": "2025-02-30"}, "to", "'2025-02-30' is not a valid date"),
    (
        "metrics",
        {"from": "2025-05-06", "to": "2025-05-05"},
        "from",
        "must be before to: [2025-05-06T00:00:00+00:00, 2025-05-06T00:00:00+00:00) is empty",
    ),
    (
        "metrics",
        {"timezone": "Mars/Olympus_Mons"},
        "timezone",
        "unknown IANA time zone 'Mars/Olympus_Mons' (e.g. Europe/Berlin)",
    ),
    (
        "metrics",
        {"metrics": "visitors,revenue"},
        "metrics",
        "unknown metric 'revenue' (one of visitors, pageviews, events, sessions, bounce_rate,"
        " avg_session_duration, views_per_session, bot_share, cookieless_share, event:<name>"
        " or metric:<custom metric id>)",
    ),
    ("metrics", {"metrics": "event:"}, "metrics", "event: needs an event name, e.g. event:signup"),
    (
        "metrics",
        {"filter": "country"},
        "filter",
        "'country' is not dimension:value (e.g. country:DE)",
    ),
    (
        "metrics",
        {"filter": "planet:mars"},
        "filter",
        "unknown dimension 'planet' (one of page, referrer_domain, channel, utm_source,"
        " utm_medium, utm_campaign, browser, os, device_type, country, event, exit_page)",
    ),
    (
        "metrics",
        {"breakdown": "city"},
        "breakdown",
        "unknown dimension 'city' (one of page, referrer_domain, channel, utm_source,"
        " utm_medium, utm_campaign, browser, os, device_type, country, event, exit_page)",
    ),
    ("metrics", {"include_bots": "maybe"}, "include_bots", "must be true or false, not 'maybe'"),
    ("metrics", {"limit": "0"}, "limit", "must be between 1 and 1000, not 0"),
    ("metrics", {"limit": "ten"}, "limit", "must be an integer, not 'ten'"),
    ("metrics", [("interval", "day"), ("interval", "week")], "interval", "given more than once"),
    (
        "metrics",
        {"source": "cache"},
        "source",
        "must be one of auto, rollups, events, not 'cache'",
    ),
    (
        "metrics",
        {"interval": "hour", "from": "2020-01-01", "to": "2025-01-01"},
        "interval",
        "hour buckets over this range exceed 5000; use a coarser interval or a shorter range",
    ),
    (
        "metrics",
        {"filters": "country:DE"},
        "filters",
        "unknown parameter (this endpoint takes allow_partial, breakdown, cohort, compare,"
        " filter, from, include_bots, interval, limit, metrics, period, project, source,"
        " timezone, to)",
    ),
    (
        "sources",
        {"by": "browser"},
        "by",
        "must be one of channel, referrer_domain, utm_source, utm_medium, utm_campaign,"
        " not 'browser'",
    ),
    ("devices", {"by": "country"}, "by", "must be one of device_type, browser, os, not 'country'"),
    (
        "performance",
        {"properties": "lcp,fid"},
        "properties",
        "unknown performance property 'fid' (one of lcp, fcp, inp, ttfb, cls, load_time_ms)",
    ),
    ("events", {"limit": "1001"}, "limit", "must be between 1 and 1000, not 1001"),
    ("events", {"order": "sideways"}, "order", "must be asc or desc, not 'sideways'"),
    ("events", {"cursor": "!!not-a-cursor"}, "cursor", "not a cursor returned by this endpoint"),
    ("events", {"property": "plan"}, "property", "'plan' is not key:value (e.g. plan:pro)"),
    ("users/anon-1/journey", {"limit": "-5"}, "limit", "must be between 1 and 1000, not -5"),
]


async def test_a_visitor_who_logs_in_on_one_device_is_one_visitor(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    """Visitors count devices: anonymous pageviews, then identified ones on the same device,
    are one visitor from rollups and raw rows alike; a server-side call with only a user id
    counts under that id."""
    t = DAY + timedelta(hours=9)
    async with pool.acquire() as conn:
        await write_events(
            conn,
            [
                event("v-1", t, path="/"),
                event("v-2", t + timedelta(minutes=1), path="/signup"),
                event("v-3", t + timedelta(minutes=2), name=IDENTIFY, user_id="u-1"),
                event("v-4", t + timedelta(minutes=3), path="/app", user_id="u-1"),
                event("v-5", t + timedelta(minutes=4), path="/signup", user_id="u-1"),
                event(
                    "v-6",
                    t + timedelta(minutes=5),
                    name="invoice_paid",
                    distinct_id="u-1",
                    user_id="u-1",
                    anonymous=False,
                    session_id="s-2",
                ),
            ],
        )
    async with query_client(pool, nats_url, subjects) as client:
        for source in ("rollups", "events"):
            params = {"from": "2025-05-05", "to": "2025-05-05", "source": source}
            status, body = await get_json(
                client, f"{API}/metrics", project.read_key, {**params, "metrics": "visitors"}
            )
            assert status == 200 and body["source"] == source, body
            assert body["totals"]["visitors"] == 2  # the device, and the server-side user id
            status, body = await get_json(client, f"{API}/pages", project.read_key, params)
            assert status == 200, body
            signup = next(p for p in body["pages"] if p["page"] == "/signup")
            assert (signup["pageviews"], signup["visitors"]) == (2, 1)


async def test_comparison_freshness_and_week_labels(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    """compare=previous_period answers the days before with each total's change; freshness
    names the newest stored event; a week that began before `from` is labelled `from`."""
    t = DAY + timedelta(hours=9)  # Monday 5 May
    day_one = [event(f"a-{i}", t + timedelta(minutes=i), session_id="s-a") for i in range(2)]
    day_two = [
        event(f"b-{i}", t + timedelta(days=1, minutes=i), distinct_id=f"d-{i}", session_id=f"s{i}")
        for i in range(3)
    ]
    async with pool.acquire() as conn:
        await write_events(conn, day_one + day_two)
    async with query_client(pool, nats_url, subjects) as client:
        params = {
            "from": "2025-05-06",
            "to": "2025-05-06",
            "metrics": "visitors,pageviews,sessions,bounce_rate",
            "compare": "previous_period",
        }
        status, body = await get_json(client, f"{API}/metrics", project.read_key, params)
        assert status == 200, body
        assert body["totals"] == {"visitors": 3, "pageviews": 3, "sessions": 3, "bounce_rate": 1.0}
        comparison = body["comparison"]
        assert (comparison["from"], comparison["to"]) == (
            "2025-05-05T00:00:00Z",
            "2025-05-06T00:00:00Z",
        )
        assert comparison["totals"] == {
            "visitors": 1,
            "pageviews": 2,
            "sessions": 1,
            "bounce_rate": 0.0,
        }
        assert comparison["change"] == {
            "visitors": 200.0,
            "pageviews": 50.0,
            "sessions": 200.0,
            "bounce_rate": None,  # from 0: no percentage
        }
        assert body["freshness"]["newest_event"] == "2025-05-06T09:02:00Z"
        # Broken down, each value is compared with the same value's totals before.
        status, body = await get_json(
            client,
            f"{API}/metrics",
            project.read_key,
            {**params, "metrics": "pageviews", "breakdown": "page"},
        )
        assert status == 200, body
        [row] = body["breakdown"]["results"]
        assert row["comparison"] == {"totals": {"pageviews": 2}, "change": {"pageviews": 50.0}}
        assert body["freshness"]["newest_event_age_s"] > 0

        # Wednesday 7 May: the first week began on Monday 5 May, before the range.
        params = {"from": "2025-05-07", "to": "2025-05-20", "interval": "week"}
        status, body = await get_json(client, f"{API}/metrics", project.read_key, params)
        assert status == 200, body
        assert [p["bucket"] for p in body["series"]] == [
            "2025-05-07T00:00:00Z",
            "2025-05-12T00:00:00Z",
            "2025-05-19T00:00:00Z",
        ]
        # A relative period covers today; `all` starts on the day of the first event.
        status, body = await get_json(
            client, f"{API}/pages", project.read_key, {"period": "all", "limit": "5"}
        )
        assert status == 200, body
        assert body["from"] == "2025-05-05T00:00:00Z" and body["freshness"] is not None
        assert sum(p["pageviews"] for p in body["pages"]) == 5


async def test_each_bad_parameter_gets_a_400_naming_it(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        for path, params, param, problem in BAD_PARAMS:
            status, body = await get_json(client, f"{API}/{path}", project.read_key, params)
            assert (status, body) == (400, {"error": f"{param}: {problem}", "param": param}), path


async def test_walking_pages_returns_every_event_once_in_order_while_events_arrive(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    # Groups of events share a timestamp so the event id must break ties.
    originals = [
        event(
            f"p-{i:03d}",
            DAY + timedelta(seconds=(i // 3) * 7),
            distinct_id=f"anon-{i % 11}",
            session_id=f"s-{i % 11}",
            properties={"plan": "pro" if i % 4 == 0 else "free"},
        )
        for i in range(230)
    ]
    async with pool.acquire() as conn:
        await write_events(conn, originals)
    expected_desc = sorted(originals, key=lambda e: (e.ts, e.event_id), reverse=True)
    async with query_client(pool, nats_url, subjects) as client:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "17", **({"cursor": cursor} if cursor else {})}
            status, body = await get_json(client, f"{API}/events", project.read_key, params)
            assert status == 200
            seen.extend(e["event_id"] for e in body["events"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
            # Newer events arriving meanwhile land before the cursor and never shift a page.
            async with pool.acquire() as conn:
                await write_events(
                    conn, [event(f"new-{len(seen)}", DAY + timedelta(days=1), session_id="s-new")]
                )
        assert seen == [e.event_id for e in expected_desc]

        # Oldest first, filtered by a property: arrivals after the cursor are included once.
        seen, cursor = [], None
        late: list[str] = []
        while True:
            params = {"order": "asc", "limit": "9", "property": "plan:pro"}
            if cursor:
                params["cursor"] = cursor
            status, body = await get_json(client, f"{API}/events", project.read_key, params)
            seen.extend(e["event_id"] for e in body["events"])
            assert all(e["properties"]["plan"] == "pro" for e in body["events"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
            if len(late) < 2:
                late.append(f"late-{len(late)}")
                async with pool.acquire() as conn:
                    await write_events(
                        conn,
                        [
                            event(
                                late[-1],
                                DAY + timedelta(days=2),
                                session_id="s-late",
                                properties={"plan": "pro"},
                            )
                        ],
                    )
        pro = [e.event_id for e in sorted(originals, key=lambda e: (e.ts, e.event_id))]
        pro = [i for i in pro if int(i[2:]) % 4 == 0]
        assert seen == pro + late

        status, body = await get_json(
            client,
            f"{API}/events",
            project.read_key,
            [("name", PAGEVIEW), ("distinct_id", "anon-3"), ("from", "2025-05-05T00:01:00Z")],
        )
        want = [
            e.event_id
            for e in expected_desc
            if e.distinct_id == "anon-3" and e.ts >= DAY + timedelta(minutes=1)
        ]
        assert status == 200 and [e["event_id"] for e in body["events"]] == want

        # One session's events, oldest first, and none of another session's.
        status, body = await get_json(
            client,
            f"{API}/events",
            project.read_key,
            {"session_id": "s-3", "order": "asc", "limit": "100"},
        )
        want = [e.event_id for e in reversed(expected_desc) if e.session_id == "s-3"]
        assert status == 200 and [e["event_id"] for e in body["events"]] == want
        status, body = await get_json(
            client, f"{API}/events", project.read_key, {"session_id": "s-unknown"}
        )
        assert status == 200 and body["events"] == []


async def test_session_detail_and_journey_across_linked_ids(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    t = DAY + timedelta(hours=9)
    journey_events = [
        # Anonymous browsing on a laptop, then signing in (identify links anon-1 -> u-1).
        event("j-1", t, distinct_id="anon-1", session_id="s-laptop", path="/"),
        event(
            "j-2",
            t + timedelta(minutes=2),
            distinct_id="anon-1",
            session_id="s-laptop",
            path="/pricing",
        ),
        event(
            "j-3",
            t + timedelta(minutes=3),
            name=IDENTIFY,
            distinct_id="anon-1",
            user_id="u-1",
            session_id="s-laptop",
        ),
        # Later on a phone, signed in: the phone's id is linked to the same person.
        event(
            "j-4",
            t + timedelta(hours=5),
            distinct_id="anon-2",
            user_id="u-1",
            session_id="s-phone",
            path="/docs",
        ),
        # A server-side event carrying only the user id.
        event(
            "j-5",
            t + timedelta(hours=6),
            name="invoice_paid",
            distinct_id="u-1",
            user_id="u-1",
            anonymous=False,
            session_id="s-server",
        ),
        # Somebody else.
        event("x-1", t + timedelta(minutes=1), distinct_id="anon-9", session_id="s-other"),
    ]
    async with pool.acquire() as conn:
        await write_events(conn, journey_events)
    async with query_client(pool, nats_url, subjects) as client:
        status, body = await get_json(client, f"{API}/sessions/s-laptop", project.read_key)
        assert status == 200
        session = body["session"]
        assert (session["session_id"], session["distinct_id"], session["user_id"]) == (
            "s-laptop",
            "anon-1",
            "u-1",
        )
        assert (session["events"], session["pageviews"], session["duration_s"]) == (3, 2, 180.0)
        assert (session["entry_path"], session["exit_path"], session["bounce"]) == (
            "/",
            "/pricing",
            False,
        )
        assert [e["event_id"] for e in body["events"]] == ["j-1", "j-2", "j-3"]
        assert body["truncated"] is False
        assert await get_json(client, f"{API}/sessions/nope", project.read_key) == (
            404,
            {"error": "no session 'nope' in this project", "param": None},
        )

        for some_id in ("u-1", "anon-1", "anon-2"):
            status, body = await get_json(
                client, f"{API}/users/{some_id}/journey", project.read_key
            )
            assert status == 200, some_id
            assert body["person_id"] == "u-1"
            assert body["distinct_ids"] == ["anon-1", "anon-2", "u-1"]
            assert [e["event_id"] for e in body["events"]] == ["j-1", "j-2", "j-3", "j-4", "j-5"]
            assert [s["session_id"] for s in body["sessions"]] == [
                "s-laptop",
                "s-phone",
                "s-server",
            ]
            assert body["next_cursor"] is None
        # Paged journey: two pages of three and two.
        status, first = await get_json(
            client, f"{API}/users/u-1/journey", project.read_key, {"limit": "3"}
        )
        status, second = await get_json(
            client,
            f"{API}/users/u-1/journey",
            project.read_key,
            {"limit": "3", "cursor": first["next_cursor"]},
        )
        assert [e["event_id"] for e in first["events"] + second["events"]] == [
            "j-1",
            "j-2",
            "j-3",
            "j-4",
            "j-5",
        ]
        assert [s["session_id"] for s in second["sessions"]] == ["s-phone", "s-server"]
        assert second["next_cursor"] is None
        assert await get_json(client, f"{API}/users/ghost/journey", project.read_key) == (
            404,
            {"error": "no events of person 'ghost'", "param": None},
        )


async def _next_update(stream: Any) -> dict[str, Any]:
    """The data of the next `event: metrics` Server-Sent Event."""
    kind = None
    while True:
        line = (await stream.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: ") and kind == "metrics":
            return msgspec.json.decode(line[len("data: ") :])  # type: ignore[no-any-return]


async def test_live_stream_is_seeded_from_postgres_and_follows_enriched_events(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, js: Any, project: TestProject
) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        # Two visitors active 2 minutes ago (beyond the events-per-minute window), one long gone.
        await write_events(
            conn,
            [
                event("old-1", now - timedelta(minutes=2), distinct_id="v-1", session_id="sv-1"),
                event("old-2", now - timedelta(minutes=2), distinct_id="v-2", session_id="sv-2"),
                event("gone", now - timedelta(minutes=20), distinct_id="v-0", session_id="sv-0"),
            ],
        )
    async with query_client(pool, nats_url, subjects, stream_interval_s=0.2) as client:
        headers = {"Authorization": f"Bearer {project.read_key}"}
        async with client.get(f"{API}/stream/metrics", headers=headers) as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(_next_update(stream), 10)
            assert (first["active_visitors"], first["events_per_minute"]) == (2, 0)

            fresh = [
                event("live-1", now, distinct_id="v-2", session_id="sv-2"),
                event("live-2", now, distinct_id="v-3", session_id="sv-3"),
                event("live-3", now, distinct_id="v-3", session_id="sv-3", name="click"),
                event("live-bot", now, distinct_id="crawler", session_id="sv-b", is_bot=True),
            ]
            for name in (PAGEVIEW, "click"):
                batch = EnrichedBatchV1(
                    batch_id=f"b-{name}",
                    project_id="acme",
                    name=name,
                    events=[e for e in fresh if e.name == name],
                )
                await js.publish(subjects.enriched("acme", name), msgspec.json.encode(batch))

            async def until_updated() -> dict[str, Any]:
                while True:
                    update = await _next_update(stream)
                    if update["events_per_minute"] == 3:
                        return update

            update = await asyncio.wait_for(until_updated(), 10)
            # v-1, v-2 (again), v-3; the crawler is a bot and not counted.
            assert update["active_visitors"] == 3
            assert update["window_s"] == 300

            # A second client shares the project's live state; with bots the crawler counts.
            async with client.get(
                f"{API}/stream/metrics", headers=headers, params={"include_bots": "true"}
            ) as with_bots:
                update = await asyncio.wait_for(_next_update(with_bots), 10)
                assert (update["active_visitors"], update["events_per_minute"]) == (4, 4)


async def test_openapi_describes_every_route_and_ops_endpoints_answer(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with query_client(pool, nats_url, subjects) as client:
        status, doc = await get_json(client, "/openapi.json", None)
        assert status == 200 and doc["openapi"].startswith("3.1")
        # Every (method, path) served is documented, and nothing else (aiohttp adds HEAD).
        served = {
            (route.method.lower(), route.resource.canonical)
            for route in client.app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
        assert {(m, path) for path, item in doc["paths"].items() for m in item} == served
        schemas = doc["components"]["schemas"]
        for path, item in doc["paths"].items():
            for operation in item.values():
                ok = next(r for status, r in operation["responses"].items() if status < "300")
                body = operation.get("requestBody", {}).get("content", {})
                for content in [*ok.get("content", {}).values(), *body.values()]:
                    ref = content["schema"].get("$ref")
                    if ref:
                        assert ref.removeprefix("#/components/schemas/") in schemas, path
                if path.startswith(API):
                    assert "project" in {p["name"] for p in operation["parameters"]}, path
                    assert operation["responses"]["400"]
        # The parameters documented are exactly those each endpoint accepts.
        for path, accepted in (
            ("metrics", METRICS_PARAMS),
            ("pages", REPORT_PARAMS),
            ("sources", REPORT_PARAMS | {"by"}),
            ("performance", PERFORMANCE_PARAMS),
        ):
            documented = {p["name"] for p in doc["paths"][f"{API}/{path}"]["get"]["parameters"]}
            assert documented == accepted, path
        assert "MetricsResponse" in schemas and "from" in schemas["MetricsResponse"]["properties"]

        assert await get_json(client, "/healthz", None) == (200, {"status": "ok"})
        assert await get_json(client, "/readyz", None) == (200, {"status": "ready"})
        await get_json(client, f"{API}/metrics", project.read_key)
        async with client.get("/metrics") as resp:
            text = await resp.text()
        assert (
            'strata_query_requests_total{route="/api/v1/analytics/metrics",status="200"} 1.0'
            in text
        )


async def test_service_process_serves_and_stops_cleanly_with_open_streams(
    database_url: str, nats_url: str, subjects: Subjects, project: TestProject, tmp_path: Any
) -> None:
    """`python -m services.query` as Kubernetes runs it: ready, serving, its caches warmed, and
    on SIGTERM it ends live streams, drains NATS and exits 0."""
    import aiohttp

    from tests.support.services import ServiceProcess, free_port, service_env

    port = free_port()
    env = service_env(
        database_url, nats_url, subjects.prefix, query_port=port, host="127.0.0.1", log_level="info"
    )
    service = ServiceProcess("query", env, tmp_path).start()
    try:
        await asyncio.to_thread(service.wait_http, port)
        # Beside serving, it warms its caches once (services/query/warm_up.py) and says so.
        for _ in range(150):
            if "caches_warmed" in service.log():
                break
            await asyncio.sleep(0.1)
        assert "caches_warmed" in service.log() and "cache_warm_up_failed" not in service.log()
        headers = {"Authorization": f"Bearer {project.read_key}"}
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}{API}/metrics", headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.json())["totals"]["events"] == 0
            async with http.get(f"{base}{API}/stream/metrics", headers=headers) as stream:
                await asyncio.wait_for(_next_update(stream), 10)
                assert service.proc is not None
                service.proc.terminate()
                # The stream ends instead of holding the shutdown open.
                await asyncio.wait_for(stream.content.read(), 10)
        code = await asyncio.to_thread(service.proc.wait, 15)
        assert code == 0, service.log()
        assert "Traceback" not in service.log(), service.log()
    finally:
        service.stop()
