"""Pages, clients and sources stored once per project (libs/common/event_dictionary.py,
dictionary_deletion.py, migrations 0029-0031): the writer stores a page key instead of url,
title and path, a client key instead of browser ... locale and a source key instead of
referrer ... UTM, the `events` view reads the strings back (rows
written before keep theirs), erasure deletes a person's pages no one else shows, the tiering
sweep deletes pages no row holds, and no event row ever holds a key without its page, even
when a page is deleted while a write that looked it up is in flight."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from hashlib import md5
from typing import Any

import asyncpg
import pytest

from libs.common import event_dictionary
from libs.common.day_files.tier_summary import TierPrices, tier_summary
from libs.common.dictionary_deletion import delete_unused_since, sweep, unused_keys
from libs.common.erasure import request_erasure
from libs.common.event_dictionary import PAGES, SOURCES
from libs.common.model.event_encoding import restored_sql
from libs.common.schemas.events_v1 import EventV1
from services.aggregator import writer
from services.aggregator.writer import write_events
from services.query.freshness import NEWEST_EVENT, NEWEST_EVENT_EVER, RECENT, newest_event
from tests.support.recompute import make_event

pytestmark = pytest.mark.infra

T0 = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)


def _pageview(n: int, path: str, person: str = "anon-1", **fields: Any) -> EventV1:
    page = {"url": f"https://acme.test{path}?from={person}", "title": f"Page {path}"}
    return make_event(
        event_id=f"e-{person}-{n}",
        ts=T0 + timedelta(minutes=n),
        distinct_id=person,
        anonymous_id=person,
        path=path,
        **{**page, **fields},
    )


async def _stored(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in await conn.fetch("SELECT event_id, url, title, path FROM events ORDER BY event_id")
    ]


async def _dangling(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM event_rows AS e WHERE e.page_key IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM event_pages AS p WHERE p.page_key = e.page_key)"
    )
    return count


async def test_rows_hold_a_page_key_and_the_view_reads_the_strings(pool: asyncpg.Pool) -> None:
    events = [
        _pageview(0, "/"),
        _pageview(1, "/pricing"),
        _pageview(2, "/", person="anon-2"),
        _pageview(3, "/"),
        make_event(event_id="e-server", ts=T0, type="track", name="signup", path=None, url=None),
    ]
    async with pool.acquire() as conn:
        await write_events(conn, events)
        stored = await _stored(conn)
        rows = {
            r["event_id"]: r
            for r in await conn.fetch("SELECT event_id, page_key, url, title, path FROM event_rows")
        }
        pages = await conn.fetch("SELECT * FROM event_pages ORDER BY page_key")

    by_id = {e.event_id: e for e in events}
    assert len(stored) == len(events)
    for event_id, url, title, path in stored:
        ev = by_id[event_id]
        assert (url, title, path) == (ev.url, ev.title, ev.path)
    # The strings live in event_pages only: one row per distinct page.
    assert all((r["url"], r["title"], r["path"]) == (None, None, None) for r in rows.values())
    assert rows["e-server"]["page_key"] is None
    assert rows["e-anon-1-0"]["page_key"] == rows["e-anon-1-3"]["page_key"]
    assert len(pages) == 3  # "/" for anon-1, "/pricing", "/" for anon-2 (another url)
    assert all(p["digest"].hex == PAGES.digest((p["url"], p["title"], p["path"])) for p in pages)


async def test_rows_hold_a_client_key_and_the_view_reads_the_strings(pool: asyncpg.Pool) -> None:
    chrome = {"browser": "Chrome", "browser_version": "131", "os": "macOS", "os_version": "15"}
    events = [
        _pageview(0, "/", device_type="desktop", locale="de-DE", **chrome),
        _pageview(1, "/", device_type="desktop", locale="de-DE", **chrome),
        _pageview(2, "/", device_type="mobile", browser="Safari"),
        _pageview(3, "/"),  # no client value at all: no key
    ]
    columns = ("browser", "browser_version", "os", "os_version", "device_type", "locale")
    async with pool.acquire() as conn:
        await write_events(conn, events)
        read = {
            r["event_id"]: tuple(r[c] for c in columns)
            for r in await conn.fetch(f"SELECT event_id, {', '.join(columns)} FROM events")
        }
        keys = {
            r["event_id"]: r["client_key"]
            for r in await conn.fetch(
                "SELECT event_id, client_key FROM event_rows WHERE browser IS NULL AND os IS NULL"
            )
        }
        clients = await conn.fetchval("SELECT count(*) FROM event_clients")
        plain = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT event_id, path FROM events WHERE project_id = 'acme'"
            )
        )
    assert read == {ev.event_id: tuple(getattr(ev, c) for c in columns) for ev in events}
    assert len(keys) == 4  # no row holds the strings
    assert keys["e-anon-1-0"] == keys["e-anon-1-1"] and keys["e-anon-1-3"] is None
    assert clients == 2
    # A query that reads the page but no client column joins only the pages.
    assert "event_pages" in plain and "event_clients" not in plain


async def test_properties_come_back_with_the_page_they_repeat(pool: asyncpg.Pool) -> None:
    # A pageview's properties repeating its url, title and path are stored without them
    # (migration 0025) and restored from the page the view reads.
    ev = _pageview(0, "/docs")
    ev = make_event(
        **{f: getattr(ev, f) for f in ev.__struct_fields__ if f != "properties"},
        properties={"url": ev.url, "title": ev.title, "path": ev.path, "kept": 1},
    )
    async with pool.acquire() as conn:
        await write_events(conn, [ev])
        restored = await conn.fetchval(f"SELECT {restored_sql('properties')} FROM events AS e")
    assert restored is not None
    for value in (ev.url, ev.title, ev.path, '"kept": 1'):
        assert str(value) in restored


async def test_rows_without_a_key_read_as_they_were_stored(pool: asyncpg.Pool) -> None:
    # Rows of the release before (and a writer of that release inserting through the view)
    # keep their strings and read back unchanged; a delete through the view deletes the row.
    async with pool.acquire() as conn:
        await conn.execute("SELECT ensure_event_partitions($1::date, 1)", T0.date())
        await conn.execute(
            "INSERT INTO events (project_id, ts, event_id, name, type, distinct_id, path, url,"
            " title, received_at) VALUES ('acme', $1, 'old-1', '$pageview', 'page', 'anon-9',"
            " '/old', 'https://acme.test/old', 'Old', $1)",
            T0,
        )
        await write_events(conn, [_pageview(1, "/new")])
        assert [
            tuple(r)
            for r in await conn.fetch(
                "SELECT event_id, url, title, path FROM events ORDER BY event_id"
            )
        ] == [
            ("e-anon-1-1", "https://acme.test/new?from=anon-1", "Page /new", "/new"),
            ("old-1", "https://acme.test/old", "Old", "/old"),
        ]
        assert await conn.fetchval(
            "SELECT page_key IS NULL AND url IS NOT NULL FROM event_rows WHERE event_id = 'old-1'"
        )
        assert await conn.execute("DELETE FROM events WHERE event_id = 'old-1'") == "DELETE 1"
        assert await conn.fetchval("SELECT count(*) FROM event_rows") == 1


async def test_queries_without_page_columns_do_not_join_the_pages(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await write_events(conn, [_pageview(0, "/")])
        plain = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT count(*), max(ts) FROM events WHERE project_id = 'acme'"
            )
        )
        paged = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN SELECT path FROM events WHERE name = 'x'")
        )
    assert all(t not in plain for t in ("event_pages", "event_clients", "event_sources"))
    assert "event_pages" in paged


async def test_the_newest_and_oldest_event_are_read_off_the_index(pool: asyncpg.Pool) -> None:
    """max(ts) and min(ts) of a project, asked on every metrics request (freshness) and by
    the warm-up and the export, read the end of each day's (project_id, ts) index: over
    `event_rows`, as the `events` view's joins would turn them into a full aggregate."""
    async with pool.acquire() as conn:
        await write_events(conn, [_pageview(0, "/"), _pageview(1, "/b")])
        await conn.execute("SET enable_seqscan = off")
        since = f"'{(T0 - RECENT).isoformat()}'::timestamptz"
        for statement in (
            NEWEST_EVENT,
            NEWEST_EVENT_EVER,
            "SELECT min(ts) FROM event_rows WHERE project_id = $1",
        ):
            explain = f"EXPLAIN {statement}".replace("$1", "'acme'").replace("$2", since)
            plan = "\n".join(r[0] for r in await conn.fetch(explain))
            assert "Limit" in plan and "Index Only Scan" in plan, plan
        via_view = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT max(ts) FROM events WHERE project_id = 'acme'"
            )
        )
        assert "Limit" not in via_view  # why the statements read event_rows
        assert await newest_event(pool, "acme", T0 + timedelta(hours=1)) == T0 + timedelta(
            minutes=1
        )


async def test_the_newest_event_is_planned_over_the_recent_days_alone(
    pool: asyncpg.Pool,
) -> None:
    """Every metrics request asks for the project's newest event. Over the recent days, the
    plan reads those days' partitions alone (planning one index scan per partition of the
    whole table took longer than the answer); a project idle for longer is still answered."""
    old, recent = _pageview(0, "/"), _pageview(60 * 24 * 20, "/later")  # 20 days apart
    async with pool.acquire() as conn:
        await write_events(conn, [old, recent])
        since = recent.ts - RECENT
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                f"EXPLAIN {NEWEST_EVENT}".replace("$1", "'acme'").replace(
                    "$2", f"'{since.isoformat()}'::timestamptz"
                )
            )
        )
    assert f"events_{recent.ts:%Y%m%d}" in plan
    assert f"events_{old.ts:%Y%m%d}" not in plan, plan
    # Recent traffic: found in the window.
    assert await newest_event(pool, "acme", recent.ts + timedelta(hours=1)) == recent.ts
    # Idle for a month: nothing in the window, found over every partition.
    assert await newest_event(pool, "acme", recent.ts + timedelta(days=30)) == recent.ts
    assert await newest_event(pool, "nobody", recent.ts) is None
    # A day file's newest event counts beside the hot rows, in the window or before it.
    in_file = recent.ts + timedelta(days=1)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO day_files (part_id, project_id, day, object_name, kind, state,"
            " xid_from, xid_to, max_ts) VALUES ('p1', 'acme', $1, 'o1', 'export', 'active',"
            " 1, 2, $2)",
            in_file.date(),
            in_file,
        )
    assert await newest_event(pool, "acme", in_file + timedelta(hours=1)) == in_file
    assert await newest_event(pool, "acme", in_file + timedelta(days=30)) == in_file


async def test_erasure_deletes_the_persons_pages_no_one_else_shows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projects (id, name) VALUES ('acme', 'Acme')")
        await write_events(
            conn,
            [
                _pageview(0, "/account/jane", person="jane"),  # only jane's: her url too
                _pageview(1, "/", person="jane"),
                _pageview(2, "/", person="bob"),
                _pageview(3, "/shared", person="jane", url="https://acme.test/shared"),
                _pageview(4, "/shared", person="bob", url="https://acme.test/shared"),
            ],
        )
        await request_erasure(
            conn, project_id="acme", user_id=None, distinct_ids=["jane"], key_id="k"
        )
        urls = sorted(r["url"] for r in await conn.fetch("SELECT url FROM event_pages"))
        assert urls == ["https://acme.test/?from=bob", "https://acme.test/shared"]
        assert await _dangling(conn) == 0
        assert [r[0] for r in await _stored(conn)] == ["e-bob-2", "e-bob-4"]


async def test_the_sweep_deletes_pages_no_row_holds(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await write_events(conn, [_pageview(0, "/a"), _pageview(1, "/b"), _pageview(2, "/a")])
        await conn.execute("DELETE FROM event_rows WHERE event_id = 'e-anon-1-1'")
        assert await sweep(conn, "acme") == 1
        assert [r["path"] for r in await conn.fetch("SELECT path FROM event_pages")] == ["/a"]
        assert await sweep(conn, "acme") == 0
        assert await sweep(conn, "other") == 0
        assert await _dangling(conn) == 0


async def test_a_page_used_again_after_the_sweeps_scan_is_kept(pool: asyncpg.Pool) -> None:
    # The scan runs without the lock: a row holding a page written between the scan and the
    # delete (found through the rows written since the scan's snapshot) keeps its page.
    async with pool.acquire() as conn:
        await write_events(conn, [_pageview(0, "/a"), _pageview(1, "/b")])
        await conn.execute("DELETE FROM event_rows")
        since, unused = await unused_keys(conn, PAGES, "acme")
        assert len(unused) == 2
        await write_events(conn, [_pageview(2, "/a")])  # /a's page is found and reused
        assert await delete_unused_since(conn, PAGES, "acme", unused, since) == 1
        assert [r["path"] for r in await conn.fetch("SELECT path FROM event_pages")] == ["/a"]
        assert await _dangling(conn) == 0
        assert [r[3] for r in await _stored(conn)] == ["/a"]


async def test_a_page_deleted_while_a_write_is_in_flight_is_looked_up_again(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the writer's look-up of its pages and its lock, the sweep deletes one: the write
    # rolls back, looks its pages up again (a new row) and stores every event with its page.
    async with pool.acquire() as conn:
        await write_events(conn, [_pageview(0, "/a")])
        await conn.execute("DELETE FROM event_rows")  # /a's page is unused now
    looked_up = []
    assign = event_dictionary.assign_keys

    async def assign_then_sweep(
        conn: asyncpg.Connection, dictionary: Any, pages: Any
    ) -> dict[Any, int]:
        keys = await assign(conn, dictionary, pages)
        if dictionary is PAGES:
            looked_up.append(dict(keys))
            if len(looked_up) == 1:
                # Both pages: /a's, and /b's inserted by the look-up, which no row holds yet.
                async with pool.acquire() as other:
                    assert await sweep(other, "acme") == 2
        return keys

    monkeypatch.setattr(writer, "assign_keys", assign_then_sweep)
    async with pool.acquire() as conn:
        result = await write_events(conn, [_pageview(1, "/a"), _pageview(2, "/b")])
        assert result.inserted == 2
        assert len(looked_up) == 2
        assert await _dangling(conn) == 0
        assert [(r[0], r[3]) for r in await _stored(conn)] == [
            ("e-anon-1-1", "/a"),
            ("e-anon-1-2", "/b"),
        ]


async def test_sources_are_stored_once_and_erased_with_the_person(pool: asyncpg.Pool) -> None:
    # A referrer URL may carry personal data: the erased person's source no one else shows goes.
    mail = {"referrer": "https://mail.example/?to=jane", "referrer_domain": "mail.example"}
    ads = {"utm_source": "ads", "utm_medium": "cpc", "channel": "Paid Search"}
    events = [
        _pageview(0, "/", person="jane", channel="Email", **mail),
        _pageview(1, "/", person="jane", **ads),
        _pageview(2, "/", person="bob", **ads),
    ]
    columns = SOURCES.columns
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projects (id, name) VALUES ('acme', 'Acme')")
        await write_events(conn, events)
        read = {
            r["event_id"]: tuple(r[c] for c in columns)
            for r in await conn.fetch(f"SELECT event_id, {', '.join(columns)} FROM events")
        }
        assert read == {ev.event_id: tuple(getattr(ev, c) for c in columns) for ev in events}
        assert await conn.fetchval("SELECT count(*) FROM event_sources") == 2
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM event_rows WHERE referrer IS NULL AND channel IS NULL"
                " AND source_key IS NOT NULL"
            )
            == 3
        )
        await request_erasure(
            conn, project_id="acme", user_id=None, distinct_ids=["jane"], key_id="k"
        )
        left = [
            tuple(r) for r in await conn.fetch("SELECT referrer, utm_source FROM event_sources")
        ]
        assert left == [(None, "ads")]


async def test_a_sources_search_engine_is_part_of_it_and_old_sources_are_reused(
    pool: asyncpg.Pool,
) -> None:
    """The same referrer with another `$search_engine` is another source; a source without one
    keeps the digest the eight columns gave it before sources held the properties, so a row a
    release before wrote is found again instead of repeated."""
    google = {"referrer": "https://www.google.com/", "referrer_domain": "www.google.com"}
    values = tuple(google.get(c) for c in SOURCES.columns)
    before = md5("|".join(f"{len(v)}:{v}" if v else "-" for v in values).encode()).hexdigest()
    assert SOURCES.digest((*values, None, None)) == before
    assert SOURCES.digest((*values, "Google", None)) != before
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projects (id, name) VALUES ('acme', 'Acme')")
        old_key = await conn.fetchval(
            "INSERT INTO event_sources (project_id, digest, referrer, referrer_domain)"
            " VALUES ('acme', $1::uuid, $2, $3) RETURNING source_key",
            before,
            google["referrer"],
            google["referrer_domain"],
        )
        events = [
            _pageview(0, "/", properties={"$search_engine": "Google"}, **google),
            _pageview(1, "/", properties={"$search_engine": "Google", "plan": "pro"}, **google),
            _pageview(2, "/", properties={"$search_engine": "Google Images"}, **google),
            _pageview(3, "/", properties={}, **google),
        ]
        await write_events(conn, events)
        keys = {
            r["event_id"]: r["source_key"]
            for r in await conn.fetch("SELECT event_id, source_key FROM event_rows")
        }
        assert keys["e-anon-1-0"] == keys["e-anon-1-1"] != keys["e-anon-1-2"]
        assert keys["e-anon-1-3"] == old_key
        assert await conn.fetchval("SELECT count(*) FROM event_sources") == 3
        read = {
            r["event_id"]: r["properties"]
            for r in await conn.fetch(
                f"SELECT event_id, {restored_sql('properties')} AS properties FROM events e"
            )
        }
        assert {k: json.loads(v) for k, v in read.items()} == {
            ev.event_id: ev.properties for ev in events
        }


async def test_the_hot_tier_counts_a_projects_rows_days_and_range(pool: asyncpg.Pool) -> None:
    """GET /api/v1/tiers' hot row: the project's rows, its days with rows, and the days of its
    first and last event, other projects' rows left out; and all projects' together."""
    acme = [_pageview(n, "/") for n in (0, 1, 60 * 24 * 2, 60 * 24 * 2 + 5)]  # 2 of 3 days
    globex = [
        make_event(project_id="globex", event_id=f"g-{n}", ts=T0 + timedelta(days=n))
        for n in (-1, 1, 5)
    ]
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO projects (id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex')"
        )
        await write_events(conn, [*acme, *globex])
    later = T0 + timedelta(days=10)
    hot = next(t for t in (await tier_summary(pool, "acme", TierPrices(), now=later)).tiers)
    assert (hot.tier, hot.rows, hot.objects) == ("hot", 4, 2)
    assert (hot.first_day, hot.last_day) == (T0.date(), (T0 + timedelta(days=2)).date())
    every = next(t for t in (await tier_summary(pool, None, TierPrices(), now=later)).tiers)
    assert (every.rows, every.objects) == (7, 5)  # days -1, 0, 1, 2 and 5
    assert (every.first_day, every.last_day) == (
        (T0 - timedelta(days=1)).date(),
        (T0 + timedelta(days=5)).date(),
    )
    assert 0 < hot.bytes < every.bytes


async def test_the_hot_tiers_bytes_count_the_dictionaries(pool: asyncpg.Pool) -> None:
    # What the hot tier costs (GET /api/v1/tiers) includes the strings the rows point to.
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO projects (id, name) VALUES ('acme', 'Acme')")
        await write_events(conn, [_pageview(n, f"/{n}", browser="Firefox") for n in range(20)])
        partitions = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits"
            " WHERE inhparent = 'event_rows'::regclass"
        )
        dictionaries = await conn.fetchval(
            "SELECT (pg_total_relation_size('event_pages')"
            " + pg_total_relation_size('event_clients')"
            " + pg_total_relation_size('event_sources'))::bigint"
        )
    summary = await tier_summary(pool, "acme", TierPrices(), now=T0 + timedelta(days=1))
    hot = next(t for t in summary.tiers if t.tier == "hot")
    assert dictionaries > 0
    assert hot.bytes == partitions + dictionaries
