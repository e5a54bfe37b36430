"""A stored session is a function of its events alone: whatever batches they arrive in, in
whatever order, written by concurrent aggregator writers, the session row (entry and exit page,
first user, source, device, counters) and the rollups equal a recomputation from the events,
ties at one timestamp broken by event id (docs/storage.md, "Sessions")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.erasure import recompute_session_rollups
from libs.common.object_store import open_object_store
from libs.common.rollup_keys import WEEK, bucket_start
from libs.common.schemas.events_v1 import PAGEVIEW, EventV1
from services.aggregator.writer import write_events
from services.tiering.erasure import recompute_week_rollups
from tests.support.recompute import (
    assert_aggregates_match_events,
    assert_session_rollups_equal,
    make_event,
    stored_event_rollups,
    stored_session_rollups,
)

pytestmark = pytest.mark.infra

BASE = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)
SOURCES: list[dict[str, Any]] = [
    {},
    {"referrer_domain": "google.com", "channel": "organic_search"},
    {"referrer_domain": "news.test", "channel": "referral", "utm_source": "news"},
]


@st.composite
def session_events(draw: st.DrawFn) -> list[EventV1]:
    """Up to three sessions of one device or two, on four instants (ties everywhere)."""
    ids = draw(
        st.lists(st.text("aAbB0_-", min_size=1, max_size=3), min_size=1, max_size=14, unique=True)
    )
    events = []
    for event_id in ids:
        name = draw(st.sampled_from([PAGEVIEW, PAGEVIEW, "click", "scroll"]))
        device = draw(st.sampled_from(["anon-1", "anon-2"]))
        ts = BASE + timedelta(seconds=draw(st.integers(0, 3)))
        events.append(
            EventV1(
                event_id=event_id,
                project_id="acme",
                ts=ts,
                received_at=ts,
                name=name,
                type="page" if name == PAGEVIEW else "track",
                non_interactive=name == "scroll",
                path=draw(st.sampled_from(["/a", "/b", "/c", None])),
                distinct_id=device,
                anonymous_id=device,
                user_id=draw(st.sampled_from([None, None, "u1", "u2"])),
                session_id=draw(st.sampled_from(["s-1", "s-2", "s-3"])),
                browser=draw(st.sampled_from(["Firefox", "Chrome", None])),
                **draw(st.sampled_from(SOURCES)),
            )
        )
    return events


@st.composite
def batchings(draw: st.DrawFn) -> tuple[list[EventV1], list[list[list[EventV1]]]]:
    """The events, and the batches each of up to three concurrent writers sends in turn."""
    events = draw(session_events())
    order = draw(st.permutations(events))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=6)))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    batches = [b for b in batches if b]
    writers = draw(st.integers(1, 3))
    plan: list[list[list[EventV1]]] = [[] for _ in range(writers)]
    for batch in batches:
        plan[draw(st.integers(0, writers - 1))].append(batch)
    return events, plan


async def _reset(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "TRUNCATE event_rows, event_pages, event_ids, sessions, rollups, session_rollups,"
        " persons, person_aliases"
    )


async def _write_in_turn(pool: asyncpg.Pool, batches: list[list[EventV1]]) -> int:
    inserted = 0
    async with pool.acquire() as conn:
        for batch in batches:
            inserted += (await write_events(conn, batch)).inserted
    return inserted


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=batchings())
async def test_sessions_equal_a_recomputation_whatever_the_batching(
    pool: asyncpg.Pool, case: tuple[list[EventV1], list[list[list[EventV1]]]]
) -> None:
    events, plan = case
    await _reset(pool)
    inserted = await asyncio.gather(*(_write_in_turn(pool, batches) for batches in plan))
    assert sum(inserted) == len(events)
    async with pool.acquire() as conn:
        await assert_aggregates_match_events(conn)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=batchings())
async def test_incremental_rollups_equal_the_recompute_erasure_runs(
    pool: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory, case: Any
) -> None:
    """The rollups batches add up to are the rollups a recompute from all the events writes
    (erasure's, which must never change history's numbers): one set of rollup rules."""
    events, plan = case
    await _reset(pool)
    await asyncio.gather(*(_write_in_turn(pool, batches) for batches in plan))
    async with pool.acquire() as conn:
        incremental_events = await stored_event_rollups(conn)
        incremental_sessions = await stored_session_rollups(conn)
    work = tmp_path_factory.mktemp("recompute")
    store = open_object_store(f"file://{work / 'objects'}")
    for week in sorted({bucket_start(ev.ts, WEEK) for ev in events}):
        assert await recompute_week_rollups(pool, store, "acme", week, work)
    async with pool.acquire() as conn, conn.transaction():
        starts = [r["start_ts"] for r in await conn.fetch("SELECT start_ts FROM sessions")]
        await recompute_session_rollups(conn, "acme", starts)
    async with pool.acquire() as conn:
        assert await stored_event_rollups(conn) == incremental_events
        assert_session_rollups_equal(await stored_session_rollups(conn), incremental_sessions)


async def test_equal_timestamps_sent_apart_give_the_entry_and_exit_of_one_request(
    pool: asyncpg.Pool,
) -> None:
    """/path/2 then /path/3 at one instant: entry and exit follow the event ids (the tie
    order), whether the pageviews came in one request or one each, in either order."""
    first = make_event(event_id="e-1", path="/path/2", ts=BASE)
    second = make_event(event_id="e-2", path="/path/3", ts=BASE)
    for batches in ([[first, second]], [[first], [second]], [[second], [first]]):
        await _reset(pool)
        await _write_in_turn(pool, batches)
        row = await pool.fetchrow("SELECT entry_path, exit_path FROM sessions")
        assert (row["entry_path"], row["exit_path"]) == ("/path/2", "/path/3"), batches
