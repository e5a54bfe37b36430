"""GDPR erasure and access: a person erased across hot rows, day files (one day only in files,
one archived) is invisible at once everywhere, their files are rewritten and old objects
deleted, rollups/sessions equal a recomputation; exports hold exactly the person's events from
every tier; audit rows; admin keys only."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pyarrow.parquet as pq
import pytest

from libs.common.day_files import DayExportSettings, DayFileCache, export_pending_days
from libs.common.day_files.layout import day_bounds
from libs.common.erasure import erasure_status, request_erasure
from libs.common.object_store import ObjectStore, open_object_store
from libs.common.schemas.events_v1 import EventV1
from libs.common.subjects import Subjects
from services.query.event_scan import open_scan
from services.query.scan_engine import ScanEngine
from services.tiering.erasure import process_erasures
from tests.support.project import TestProject
from tests.support.query_app import get_json, query_client
from tests.support.recompute import (
    assert_session_rollups_equal,
    expected_event_rollups,
    expected_session_rollups,
    expected_sessions,
    generate_events,
    make_event,
    stored_event_rollups,
    stored_session_rollups,
    stored_sessions,
)
from tests.support.tier_layouts import ScanDeps, write

pytestmark = pytest.mark.infra

TARGET = "user-target"
PHONE = "phone-target"


@dataclass
class Tiers:
    events: list[EventV1]
    store: ObjectStore
    engine: ScanEngine
    settings: DayExportSettings
    cold_day: date  # only in day files (rows gone from PostgreSQL)
    archived_day: date  # only in an Archive-tier day file
    split_day: date  # day files plus the same rows still in PostgreSQL
    hot_day: date  # PostgreSQL only
    exported_days: list[date]


def _day(offset: int) -> date:
    return datetime.now(UTC).date() - timedelta(days=offset)


def _at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


def _target_events(days: list[date]) -> list[EventV1]:
    """The person to erase: a laptop (identified, so aliased) and a phone with both ids."""
    events = []
    for n, day in enumerate(days):
        for k, (device, user) in enumerate(((f"laptop-{n}", TARGET), (PHONE, TARGET))):
            session = f"s-target-{n}-{k}"
            for i in range(3):
                ts = _at(day, 9 + k, i * 5)
                common: dict[str, Any] = {
                    "event_id": f"e-target-{n}-{k}-{i}",
                    "ts": ts,
                    "received_at": ts + timedelta(seconds=1),
                    "distinct_id": device,
                    "anonymous_id": device,
                    "session_id": session,
                    "browser": "Firefox",
                    "country": "FR",
                }
                if i == 0:
                    events.append(
                        make_event(type="identify", name="$identify", user_id=user, **common)
                    )
                else:
                    events.append(make_event(path=f"/t/{i}", user_id=user, **common))
    return events


def _is_target(ev: EventV1 | dict[str, Any], ids: set[str]) -> bool:
    row = msgspec.structs.asdict(ev) if isinstance(ev, EventV1) else ev
    return row["distinct_id"] in ids or row.get("user_id") in ids


@pytest.fixture
async def tiers(pool: asyncpg.Pool, project: TestProject, tmp_path: Path) -> AsyncIterator[Tiers]:
    start = _at(_day(10), 20)
    base = generate_events(seed=11, persons=25, start=start)
    base = [ev for ev in base if ev.ts.date() <= _day(6)]
    days = sorted({ev.ts.date() for ev in base})
    cold_day, archived_day, split_day = days[0], days[1], days[2]
    hot_day = _day(2)
    events = base + _target_events([cold_day, archived_day, split_day, hot_day])
    await write(pool, events)
    store = open_object_store(f"file://{tmp_path / 'objects'}")
    settings = DayExportSettings(work_dir=tmp_path / "work")
    run = await export_pending_days(
        pool, store, settings, grace=timedelta(0), projects=["acme"], days=days
    )
    assert not run.failures and run.parts == len(days)
    async with pool.acquire() as conn:
        # The cold move of the oldest day: its rows leave PostgreSQL.
        lo, hi = day_bounds(cold_day)
        await conn.execute("DELETE FROM event_rows WHERE ts >= $1 AND ts < $2", lo, hi)
        await conn.execute(
            "INSERT INTO day_tiers (project_id, day, tier, watermark) SELECT 'acme', $1, 'cold',"
            " max(xid_to) FROM day_files WHERE day = $1 AND state = 'active'",
            cold_day,
        )
        for row in await conn.fetch(
            "SELECT part_id, object_name FROM day_files WHERE day = $1 AND state = 'active'",
            archived_day,
        ):
            await store.set_storage_tier(row["object_name"], "Archive")
            await conn.execute(
                "UPDATE day_files SET storage_tier = 'Archive', archival_state = 'Archived'"
                " WHERE part_id = $1",
                row["part_id"],
            )
        lo, hi = day_bounds(archived_day)
        await conn.execute("DELETE FROM event_rows WHERE ts >= $1 AND ts < $2", lo, hi)
    engine = ScanEngine(DayFileCache(tmp_path / "cache", 256 * 1024 * 1024, store))
    try:
        yield Tiers(
            events, store, engine, settings, cold_day, archived_day, split_day, hot_day, days
        )
    finally:
        engine.close()
        await store.close()


async def _post_erasure(client: Any, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with client.post(
        "/api/v1/privacy/erasure",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        return resp.status, await resp.json()


async def _export(client: Any, key: str, person: str, **params: str) -> tuple[int, Any, Any]:
    async with client.get(
        f"/api/v1/privacy/users/{person}/export",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        if resp.status != 200:
            return resp.status, await resp.json(), resp.headers
        lines = (await resp.read()).decode().splitlines()
        return resp.status, [msgspec.json.decode(line) for line in lines], resp.headers


async def _scanned_ids(tiers: Tiers, pool: asyncpg.Pool) -> list[tuple[str, str | None, str]]:
    start = _at(tiers.exported_days[0], 0)
    end = _at(_day(0), 0)
    async with await open_scan(
        ScanDeps(pool, tiers.engine), "acme", start, end, include_bots=True, allow_partial=True
    ) as scan:
        rows = await scan.query("SELECT distinct_id, user_id, event_id FROM events_scan")
    return [(r[0], r[1], r[2]) for r in rows]


async def _listed_events(client: Any, key: str, tiers: Tiers) -> list[dict[str, Any]]:
    """The events listing of the cold-moved day (read from its day file) and of the days from
    the split day on (the archived day would need a restore)."""
    return await _listing(client, key, tiers.cold_day, tiers.cold_day) + await _listing(
        client, key, tiers.split_day, _day(0)
    )


async def _listing(client: Any, key: str, first: date, last: date) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []
    params = {"from": first.isoformat(), "to": last.isoformat(), "limit": "1000"}
    while True:
        status, page = await get_json(client, "/api/v1/analytics/events", key, params)
        assert status == 200, page
        listed += page["events"]
        if not page["next_cursor"]:
            return listed
        params["cursor"] = page["next_cursor"]


def _rows(events: list[EventV1]) -> list[dict[str, Any]]:
    return [msgspec.structs.asdict(ev) for ev in events]


async def _assert_aggregates_equal_recomputation(
    conn: asyncpg.Connection, remaining: list[EventV1]
) -> None:
    """Rollups, sessions and session rollups equal a recomputation from what is left."""
    remaining_rows = _rows(remaining)
    stored, expected = await stored_event_rollups(conn), expected_event_rollups(remaining_rows)
    assert sorted(stored) == sorted(expected)
    for key, (events, visitors) in expected.items():
        assert stored[key] == (events, visitors), key
    sessions = expected_sessions(remaining_rows)
    assert await stored_sessions(conn) == sessions
    assert_session_rollups_equal(
        await stored_session_rollups(conn), expected_session_rollups(sessions)
    )


async def test_erasure_hides_at_once_rewrites_files_and_recomputes(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tiers: Tiers,
) -> None:
    target_ids = {TARGET, PHONE} | {f"laptop-{n}" for n in range(4)}
    target_events = [ev for ev in tiers.events if _is_target(ev, target_ids)]
    remaining = [ev for ev in tiers.events if not _is_target(ev, target_ids)]
    assert len(target_events) == 24
    before_scan = await _scanned_ids(tiers, pool)
    assert any(_is_target({"distinct_id": d, "user_id": u}, target_ids) for d, u, _ in before_scan)
    objects_before = set(await tiers.store.names("events/"))

    async with query_client(pool, nats_url, subjects, scan_engine=tiers.engine) as client:
        listed = await _listed_events(client, project.read_key, tiers)
        assert {e["event_id"] for e in listed if _is_target(e, target_ids)} == {
            ev.event_id
            for ev in target_events
            if ev.ts.date() in (tiers.cold_day, tiers.split_day, tiers.hot_day)
        }
        # Only admin keys; a read key is refused and nothing is erased.
        status, body = await _post_erasure(client, project.read_key, {"user_id": TARGET})
        assert status == 403 and "admin key" in body["error"]
        status, body = await _post_erasure(client, project.admin_key, {})
        assert status == 400 and "user_id" in body["error"]

        status, erasure = await _post_erasure(client, project.admin_key, {"user_id": TARGET})
        assert status == 202, erasure
        assert set(erasure["distinct_ids"]) == target_ids
        assert erasure["state"] == "rewriting"
        # Hot rows of the split day and the hot day, 6 events each.
        assert erasure["hot_events_deleted"] == 12

        # Invisible at once: scans over every tier, the events listing, journeys, sessions.
        after_scan = await _scanned_ids(tiers, pool)
        assert not [
            r for r in after_scan if _is_target({"distinct_id": r[0], "user_id": r[1]}, target_ids)
        ]
        # Everyone else is untouched (the archived day is left out of this partial scan).
        others_before = [
            r[2]
            for r in before_scan
            if not _is_target({"distinct_id": r[0], "user_id": r[1]}, target_ids)
        ]
        assert sorted(r[2] for r in after_scan) == sorted(others_before)
        listed = await _listed_events(client, project.read_key, tiers)
        assert listed and not [e for e in listed if _is_target(e, target_ids)]
        status, _ = await get_json(
            client, f"/api/v1/analytics/users/{TARGET}/journey", project.read_key
        )
        assert status == 404
        status, _ = await get_json(
            client, "/api/v1/analytics/sessions/s-target-3-1", project.read_key
        )
        assert status == 404
        status, lines, _ = await _export(client, project.admin_key, TARGET, allow_partial="true")
        assert status == 200 and lines == []

        # The tiering service: the archived file is restored first, then everything rewritten.
        first = await process_erasures(pool, tiers.store, tiers.settings)
        assert first.waiting == [erasure["id"]] and not first.failures
        status, progress = await get_json(
            client, f"/api/v1/privacy/erasure/{erasure['id']}", project.admin_key
        )
        assert status == 200 and progress["state"] == "rewriting"
        assert progress["files_restoring"] == 1 and progress["files_rewritten"] == 2
        second = await process_erasures(pool, tiers.store, tiers.settings)
        assert second.completed == [erasure["id"]] and not second.failures
        status, done = await get_json(
            client, f"/api/v1/privacy/erasure/{erasure['id']}", project.admin_key
        )
        assert status == 200 and done["state"] == "completed" and done["progress"] == 1.0
        assert done["files_rewritten"] == 3 and done["bytes_rewritten"] > 0
        assert done["cold_events_deleted"] == 18
        assert done["files_checked"] == done["files_total"] == len(tiers.exported_days)

        status, body = await get_json(client, "/api/v1/privacy/erasure/999", project.admin_key)
        assert status == 404
        status, body = await get_json(
            client, f"/api/v1/privacy/erasure/{erasure['id']}", project.read_key
        )
        assert status == 403

    async with pool.acquire() as conn:
        # Old objects are gone, their catalog rows say so; the archived day is archived again.
        parts = await conn.fetch("SELECT * FROM day_files ORDER BY day, created_at")
        rewritten = [p for p in parts if p["kind"] == "rewrite"]
        assert {p["day"] for p in rewritten} == {
            tiers.cold_day,
            tiers.archived_day,
            tiers.split_day,
        }
        replaced = {p["object_name"] for p in parts if p["state"] == "deleted"}
        assert len(replaced) == 3 and replaced <= objects_before
        objects_after = set(await tiers.store.names("events/"))
        assert not replaced & objects_after
        assert objects_after == {p["object_name"] for p in parts if p["state"] == "active"}
        archived = [p for p in rewritten if p["day"] == tiers.archived_day]
        assert archived[0]["storage_tier"] == "Archive"
        assert (await tiers.store.head(archived[0]["object_name"])).storage_tier == "Archive"
        assert await conn.fetchval("SELECT count(*) FROM erased_ids") == 0
        assert (
            await conn.fetchval("SELECT count(*) FROM person_aliases WHERE person_id = $1", TARGET)
            == 0
        )
        assert await conn.fetchval("SELECT count(*) FROM person_keys WHERE id = $1", TARGET) == 0
        # The rewritten parts keep every remaining row's person keys.
        for number, part in enumerate(p for p in rewritten if p["state"] == "active"):
            if part["storage_tier"] == "Archive":
                continue
            tiers.settings.work_dir.mkdir(parents=True, exist_ok=True)
            local = tiers.settings.work_dir / f"rewritten-{number}.parquet"
            await tiers.store.get_to_file(part["object_name"], local)
            keys = pq.read_table(local, columns=["person_key"]).column("person_key")
            assert len(keys) and keys.null_count == 0

        await _assert_aggregates_equal_recomputation(conn, remaining)

        audit = await conn.fetch("SELECT * FROM privacy_audit_log ORDER BY id")
        erasures = [a for a in audit if a["action"] == "erasure"]
        admin_key_id = await conn.fetchval(
            "SELECT id FROM api_keys WHERE role = 'admin' AND project_id = 'acme'"
        )
        assert [(a["outcome"], a["request_id"], a["key_id"]) for a in erasures] == [
            ("accepted", erasure["id"], admin_key_id),
            ("completed", erasure["id"], admin_key_id),
        ]
        assert [a["outcome"] for a in audit if a["action"] == "export"] == ["completed"]

    # Every day, archived one included, now reads without the person from files alone.
    await tiers.store.restore(archived[0]["object_name"])
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE day_files SET archival_state = 'Restored', restored_until = $2"
            " WHERE part_id = $1",
            archived[0]["part_id"],
            datetime.now(UTC) + timedelta(hours=1),
        )
        await conn.execute("DELETE FROM erased_ids")
    full = await _scanned_ids(tiers, pool)
    assert sorted(e for _, _, e in full) == sorted(
        ev.event_id for ev in remaining if ev.ts.date() >= tiers.exported_days[0]
    )


async def test_export_streams_exactly_the_persons_events_from_every_tier(
    pool: asyncpg.Pool,
    nats_url: str,
    subjects: Subjects,
    project: TestProject,
    tiers: Tiers,
) -> None:
    target_ids = {TARGET, PHONE} | {f"laptop-{n}" for n in range(4)}
    wanted = {ev.event_id: ev for ev in tiers.events if _is_target(ev, target_ids)}
    async with query_client(pool, nats_url, subjects, scan_engine=tiers.engine) as client:
        status, body, _ = await _export(client, project.read_key, TARGET)
        assert status == 403
        # The archived day must be restored first, or left out on request.
        status, body, _ = await _export(client, project.admin_key, PHONE)
        assert status == 409 and tiers.archived_day.isoformat() in body["error"]
        status, lines, headers = await _export(
            client, project.admin_key, PHONE, allow_partial="true"
        )
        assert status == 200
        assert headers["X-Strata-Missing-Days"] == tiers.archived_day.isoformat()
        assert sorted(line["event_id"] for line in lines) == sorted(
            i for i, ev in wanted.items() if ev.ts.date() != tiers.archived_day
        )

        async with pool.acquire() as conn:
            for row in await conn.fetch(
                "SELECT part_id, object_name FROM day_files WHERE day = $1 AND state = 'active'",
                tiers.archived_day,
            ):
                await tiers.store.restore(row["object_name"])
                await conn.execute(
                    "UPDATE day_files SET archival_state = 'Restored', restored_until = $2"
                    " WHERE part_id = $1",
                    row["part_id"],
                    datetime.now(UTC) + timedelta(hours=1),
                )
        # By any of the person's ids: exactly their events, each once, every column.
        status, lines, _ = await _export(client, project.admin_key, TARGET)
        assert status == 200
        assert sorted(line["event_id"] for line in lines) == sorted(wanted)
        for line in lines:
            ev = wanted[line["event_id"]]
            assert line["distinct_id"] == ev.distinct_id and line["user_id"] == ev.user_id
            assert datetime.fromisoformat(line["ts"]) == ev.ts
            assert line["project_id"] == "acme" and line["path"] == ev.path

    async with pool.acquire() as conn:
        audit = await conn.fetch(
            "SELECT outcome, subject, detail FROM privacy_audit_log WHERE action = 'export'"
            " ORDER BY id"
        )
    assert [a["outcome"] for a in audit] == ["completed", "completed"]
    assert [a["subject"] for a in audit] == [f"user_id={PHONE}", f"user_id={TARGET}"]
    assert msgspec.json.decode(audit[1]["detail"])["rows"]["cold"] == 18


CRASH_STEPS = ["uploaded", "verified", "activated", "recorded"]
ROOT = Path(__file__).resolve().parents[2]


async def _stored_event_ids(pool: asyncpg.Pool, store: ObjectStore, work: Path) -> list[str]:
    """Every event id the tiers hold: active parts (archived ones restored to be read) plus
    PostgreSQL rows no part holds (days without parts, rows past a day's watermark)."""
    ids: list[str] = []
    watermarks: dict[date, int] = {}
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    for part in await pool.fetch("SELECT * FROM day_files WHERE state = 'active'"):
        if part["storage_tier"] == "Archive":
            await store.restore(part["object_name"])
        path = work / f"{part['part_id']}.parquet"
        await store.get_to_file(part["object_name"], path)
        ids += pq.read_table(path, columns=["event_id"]).column("event_id").to_pylist()
        watermarks[part["day"]] = max(watermarks.get(part["day"], 0), part["xid_to"])
    for row in await pool.fetch("SELECT event_id, ts, inserted_xid FROM events"):
        if row["inserted_xid"] >= watermarks.get(row["ts"].astimezone(UTC).date(), 0):
            ids.append(row["event_id"])
    return ids


@pytest.mark.parametrize("step", CRASH_STEPS)
async def test_kill_9_at_any_step_then_rerun_erases_consistently(
    pool: asyncpg.Pool, database_url: str, project: TestProject, tiers: Tiers, step: str
) -> None:
    target_ids = {TARGET, PHONE} | {f"laptop-{n}" for n in range(4)}
    remaining = [ev for ev in tiers.events if not _is_target(ev, target_ids)]
    async with pool.acquire() as conn:
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE role = 'admin'")
        request = await request_erasure(
            conn, project_id="acme", user_id=TARGET, distinct_ids=[], key_id=key_id
        )
    marker = tiers.settings.work_dir.parent / "marker"
    eraser = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.erasure_crash",
        database_url,
        tiers.store.url,
        str(tiers.settings.work_dir),
        step,
        str(marker),
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")},
    )
    try:
        for _ in range(600):
            if marker.exists() or eraser.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert marker.exists(), f"the eraser ended with {eraser.returncode} before {step}"
        assert marker.read_text().startswith("events/v1/project=acme/")
    finally:
        if eraser.returncode is None:
            eraser.send_signal(signal.SIGKILL)
        await eraser.wait()
    # The killed session's day lock goes once PostgreSQL sees the socket closed.
    for _ in range(100):
        if not await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ):
            break
        await asyncio.sleep(0.1)

    # The next tiering passes finish the request (the archived file needs one to restore).
    for _ in range(4):
        run = await process_erasures(pool, tiers.store, tiers.settings)
        assert not run.failures, run.failures
        if run.completed:
            break
    async with pool.acquire() as conn:
        status = await erasure_status(conn, "acme", request.id)
        assert status is not None and status.state == "completed"
        assert (status.files_rewritten, status.cold_events_deleted) == (3, 18)
        states = {r["object_name"]: r["state"] for r in await conn.fetch("SELECT * FROM day_files")}
        assert set(states.values()) <= {"active", "deleted"}
        objects = set(await tiers.store.names("events/"))
        assert objects == {name for name, state in states.items() if state == "active"}
        ids = await _stored_event_ids(pool, tiers.store, tiers.settings.work_dir / "check")
        assert len(ids) == len(set(ids)), "every event at most once"
        assert sorted(ids) == sorted(ev.event_id for ev in remaining)
        await _assert_aggregates_equal_recomputation(conn, remaining)
