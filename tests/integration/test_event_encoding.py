"""Values an event row would hold twice are stored once (properties equal to a page column,
anonymous_id equal to distinct_id), and every reader still gives back exactly what was sent:
the events API (with a property filter), the hot rows the analyses scan, the day files, the
erasure export's rows. Rows written before migration 0025 read unchanged."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow.parquet as pq
import pytest

from libs.common.day_files import DayExportSettings, export_day
from libs.common.day_files.postgres_rows import event_query, fetch_rows
from libs.common.model.event_encoding import url_origin, url_search
from libs.common.object_store.file_store import FileObjectStore
from libs.common.schemas.events_v1 import PAGEVIEW, EventV1
from libs.common.subjects import Subjects
from services.aggregator.writer import write_events
from services.query.privacy import _HOT_SELECT
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client

pytestmark = pytest.mark.infra

DAY = date(2024, 3, 2)
T0 = datetime(2024, 3, 2, 9, tzinfo=UTC)
URL = "https://shop.example/pricing?plan=pro&ref=x"
COMPARED = ("anonymous_id", "distinct_id", "user_id", "path", "url", "title", "referrer")


def page(event_id: str, i: int, properties: dict[str, Any], **fields: Any) -> EventV1:
    values: dict[str, Any] = {
        "event_id": event_id,
        "project_id": "acme",
        "type": "page",
        "name": PAGEVIEW,
        "ts": T0 + timedelta(seconds=i),
        "received_at": T0 + timedelta(seconds=i + 1),
        "distinct_id": "dev-1",
        "anonymous_id": "dev-1",
        "session_id": "s-1",
        "path": "/pricing",
        "url": URL,
        "title": "Pricing — Shop",
        "referrer": "https://www.google.com/",
        "properties": properties,
    }
    values.update(fields)
    return EventV1(**values)


# What the tracker sends for a pageview: every page key equal to its column.
TRACKER = {
    "path": "/pricing",
    "url": URL,
    "title": "Pricing — Shop",
    "name": "Pricing — Shop",
    "referrer": "https://www.google.com/",
    "search": "?plan=pro&ref=x",
    "$search_engine": "Google",
}

SENT = [
    page("all-derived", 0, TRACKER),
    page("only-page-keys", 1, {k: v for k, v in TRACKER.items() if not k.startswith("$")}),
    # Keys that look alike but differ from the columns stay as sent.
    page(
        "differs",
        2,
        {
            "path": "/other",
            "url": 5,
            "title": None,
            "name": "Another name",
            "referrer": "https://internal.example/",
            "search": "?plan=pro",
            "nested": {"path": "/pricing"},
        },
    ),
    # A '#' ends the query string; a URL without one has the search "".
    page(
        "fragment",
        3,
        {"search": "?a=1", "url": "https://x.example/p?a=1#top?b"},
        url="https://x.example/p?a=1#top?b",
    ),
    page("no-query", 4, {"search": "", "url": "https://x.example/p"}, url="https://x.example/p"),
    # Columns missing: nothing to derive the keys from.
    page("no-columns", 5, {"path": "/pricing", "search": ""}, path=None, url=None, title=None),
    page("empty", 6, {}),
    # anonymous_id: absent (a server call by user id), equal to the user id too, or not sent
    # as the device key by another producer.
    page("by-user", 7, {"plan": "pro"}, anonymous_id=None, user_id="u-1", distinct_id="u-1"),
    page("anon-is-user", 8, {}, anonymous_id="u-2", user_id="u-2", distinct_id="u-2"),
    page("anon-differs", 9, {}, anonymous_id="dev-9", distinct_id="dev-1"),
    page("track", 10, {"path": "/pricing", "depth": 50}, type="track", name="scroll_depth"),
    # The previous page of the same site (the column holds the session's external referrer):
    # stored relative to the page's origin.
    page("in-site", 11, {"referrer": "https://shop.example/features?x=1#f"}),
    page("in-site-root", 12, {"referrer": "https://shop.example/", "url": URL}),
    # Another origin, or one the page's origin only begins: stored as sent.
    page("other-site", 13, {"referrer": "https://shop.example.org/features"}),
    page("origin-only", 14, {"referrer": "https://shop.example"}),
    page("other-port", 15, {"referrer": "https://shop.example:8443/features"}),
    page("no-url", 16, {"referrer": "https://shop.example/features"}, url=None),
    page("not-a-string", 17, {"referrer": 7}),
    # Google Analytics' nonInteraction: 1 is what the non_interactive column says (bit 256);
    # true, "1", 1.0, or a 1 on an interactive event, stay as sent.
    page("non-interaction", 18, {"nonInteraction": 1, "depth": 75}, non_interactive=True),
    page("non-interaction-only", 19, {"nonInteraction": 1}, non_interactive=True),
    page("non-interaction-true", 20, {"nonInteraction": True}, non_interactive=True),
    page("non-interaction-text", 21, {"nonInteraction": "1"}, non_interactive=True),
    page("non-interaction-float", 22, {"nonInteraction": 1.0}, non_interactive=True),
    page("non-interaction-interactive", 23, {"nonInteraction": 1}),
    # What enrichment names from the referrer lives with the source (bits 512 and 1024): a
    # string of either, whatever the referrer; anything else stays in properties.
    page("social", 24, {"$social_network": "LinkedIn", "depth": 25}, referrer=None),
    page("both", 25, {"$search_engine": "Bing", "$social_network": "Reddit"}),
    page("engine-not-a-string", 26, {"$search_engine": 7}),
    page("engine-null", 27, {"$search_engine": None, "$social_network": ""}),
]


def sent_values(ev: EventV1) -> dict[str, Any]:
    return {**{c: getattr(ev, c) for c in COMPARED}, "properties": ev.properties}


def row_values(row: dict[str, Any]) -> dict[str, Any]:
    raw = row["properties"]
    properties = raw if isinstance(raw, dict) else None if raw is None else json.loads(raw)
    return {**{c: row[c] for c in COMPARED}, "properties": properties}


SEARCHES = {
    "https://a.example/p?x=1&y=2": "?x=1&y=2",
    "https://a.example/p?x=1#frag?z": "?x=1",
    "https://a.example/p#f?x": "",
    "https://a.example/p": "",
    "https://a.example/p?": "?",
    "https://ä.example/ü?q=ö#": "?q=ö",
    "": "",
}


async def test_url_search_is_the_same_in_python_and_sql(pool: asyncpg.Pool) -> None:
    urls = list(SEARCHES)
    in_sql = await pool.fetch("SELECT u, url_search(u) AS s FROM unnest($1::text[]) AS u", urls)
    assert {r["u"]: r["s"] for r in in_sql} == {u: url_search(u) for u in urls} == SEARCHES


ORIGINS = {
    "https://shop.example/p?x=1": "https://shop.example",
    "https://shop.example": "https://shop.example",
    "http://user@shop.example:8080?x#y/z": "http://user@shop.example:8080",
    "https://ä.example/ü": "https://ä.example",
    "HTTPS://Shop.Example/P": "HTTPS://Shop.Example",
    "app://local/x": "app://local",
    "/relative/path": None,
    "mailto:a@b.example": None,
    "": None,
}


async def test_url_origin_is_the_same_in_python_and_sql(pool: asyncpg.Pool) -> None:
    urls = list(ORIGINS)
    in_sql = await pool.fetch("SELECT u, url_origin(u) AS o FROM unnest($1::text[]) AS u", urls)
    assert {r["u"]: r["o"] for r in in_sql} == {u: url_origin(u) for u in urls} == ORIGINS


async def test_values_are_stored_once_and_read_back_as_sent(
    pool: asyncpg.Pool, tmp_path: Path, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    async with pool.acquire() as conn:
        await write_events(conn, SENT)
        stored = {
            r["event_id"]: r
            for r in await conn.fetch(
                "SELECT e.event_id, e.anonymous_id, e.properties::text AS properties,"
                " e.derived_fields, s.search_engine, s.social_network"
                " FROM event_rows e LEFT JOIN event_sources s ON s.source_key = e.source_key"
            )
        }
    expected = {ev.event_id: sent_values(ev) for ev in SENT}

    # Stored once: the tracker's page keys and the device key live in their columns only, the
    # search engine with the source.
    assert stored["all-derived"]["properties"] is None
    assert stored["all-derived"]["derived_fields"] == 1 | 2 | 4 | 8 | 16 | 32 | 64 | 512
    assert stored["all-derived"]["search_engine"] == "Google"
    assert stored["all-derived"]["anonymous_id"] is None
    assert json.loads(stored["social"]["properties"]) == {"depth": 25}
    assert stored["social"]["social_network"] == "LinkedIn"
    assert stored["social"]["derived_fields"] == 64 | 1024
    assert stored["both"]["properties"] is None
    assert (stored["both"]["search_engine"], stored["both"]["social_network"]) == (
        "Bing",
        "Reddit",
    )
    assert json.loads(stored["engine-not-a-string"]["properties"]) == {"$search_engine": 7}
    assert stored["engine-not-a-string"]["search_engine"] is None
    assert json.loads(stored["engine-null"]["properties"]) == {"$search_engine": None}
    assert stored["engine-null"]["social_network"] == ""
    assert stored["only-page-keys"]["properties"] is None
    assert json.loads(stored["differs"]["properties"]) == SENT[2].properties
    assert stored["by-user"]["derived_fields"] is None
    assert stored["anon-is-user"]["anonymous_id"] is None
    assert stored["anon-differs"]["anonymous_id"] == "dev-9"
    assert json.loads(stored["track"]["properties"]) == {"depth": 50}
    assert json.loads(stored["in-site"]["properties"]) == {"referrer": "/features?x=1#f"}
    assert json.loads(stored["in-site-root"]["properties"]) == {"referrer": "/"}
    assert stored["in-site-root"]["derived_fields"] == 2 | 128 | 64
    assert json.loads(stored["non-interaction"]["properties"]) == {"depth": 75}
    assert stored["non-interaction-only"]["properties"] is None
    assert stored["non-interaction-only"]["derived_fields"] == 256 | 64
    kept_as_sent = ("other-site", "origin-only", "other-port", "no-url", "not-a-string")
    kept_as_sent += tuple(f"non-interaction-{k}" for k in ("true", "text", "interactive"))
    for kept in kept_as_sent:
        assert json.loads(stored[kept]["properties"]) == next(
            ev.properties for ev in SENT if ev.event_id == kept
        )

    # The hot rows the analyses scan (and the day-file export's query).
    columns = ["event_id", *COMPARED, "properties"]
    async with pool.acquire() as conn:
        table = await fetch_rows(conn, event_query(columns, "e.project_id = 'acme'"), columns)
    assert {r["event_id"]: row_values(r) for r in table.to_pylist()} == expected

    # The day file.
    async with FileObjectStore(tmp_path / "objects") as store:
        result = await export_day(
            pool, store, "acme", DAY, DayExportSettings(work_dir=tmp_path / "work")
        )
        assert result.part is not None
        local = tmp_path / "part.parquet"
        await store.get_to_file(result.part.object_name, local)
    day_file = pq.read_table(local).to_pylist()
    assert {r["event_id"]: row_values(r) for r in day_file} == expected

    # The erasure export's rows of the hot store.
    rows = await pool.fetch(f"SELECT {_HOT_SELECT} FROM events e")
    assert {r["event_id"]: row_values(dict(r)) for r in rows} == expected

    # The events API, whole and filtered on a property the row stores only in its column.
    async with query_client(pool, nats_url, subjects) as client:
        status, body = await get_json(
            client, "/api/v1/analytics/events", project.read_key, {"limit": "100"}
        )
        assert status == 200, body
        assert {e["event_id"]: row_values(e) for e in body["events"]} == expected
        status, body = await get_json(
            client,
            "/api/v1/analytics/events",
            project.read_key,
            {"limit": "100", "property": "title:Pricing — Shop"},
        )
        assert status == 200, body
        assert {e["event_id"] for e in body["events"]} == {"all-derived", "only-page-keys"}
        status, body = await get_json(
            client,
            "/api/v1/analytics/events",
            project.read_key,
            {"limit": "100", "property": "referrer:https://shop.example/features?x=1#f"},
        )
        assert status == 200, body
        assert {e["event_id"] for e in body["events"]} == {"in-site"}
        # Byte for byte as sent: the number 1, where it was left out and where it was kept.
        status, body = await get_json(
            client, "/api/v1/analytics/events", project.read_key, {"limit": "100"}
        )
        sent_json = {e["event_id"]: e["properties"] for e in body["events"]}
        assert sent_json["non-interaction"] == {"depth": 75, "nonInteraction": 1}
        assert sent_json["non-interaction-only"] == sent_json["non-interaction-interactive"]
        assert type(sent_json["non-interaction-only"]["nonInteraction"]) is int
        assert sent_json["non-interaction-true"] == {"nonInteraction": True}


async def test_rows_written_before_the_encoding_read_unchanged(pool: asyncpg.Pool) -> None:
    # As the aggregator wrote them before migration 0025: every value in the row.
    ev = SENT[0]
    await pool.execute("SELECT ensure_event_partitions($1, 1)", DAY)
    await pool.execute(
        "INSERT INTO events (project_id, ts, event_id, name, type, distinct_id, anonymous_id,"
        " path, url, title, referrer, properties, received_at)"
        " VALUES ('acme', $1, 'old', $2, 'page', 'dev-1', 'dev-1', $3, $4, $5, $6, $7::jsonb, $1)",
        ev.ts,
        ev.name,
        ev.path,
        ev.url,
        ev.title,
        ev.referrer,
        json.dumps(ev.properties),
    )
    columns = ["event_id", *COMPARED, "properties"]
    async with pool.acquire() as conn:
        table = await fetch_rows(conn, event_query(columns, "e.event_id = 'old'"), columns)
    assert [row_values(r) for r in table.to_pylist()] == [sent_values(ev)]
