"""Day-file export: Parquet parts hold exactly the day's rows column for column, verification
refuses a damaged object, late rows become extra parts without duplicates, an uncommitted
transaction during an export is picked up by the next one, and a kill -9 at any step followed
by a rerun leaves every event exactly once and no orphan object."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.common.day_files import (
    EVENT_FILE_SCHEMA,
    DayExportSettings,
    DayFileVerificationError,
    DayNotClosedError,
    XidCounterBehindError,
    days_needing_export,
    export_day,
    export_pending_days,
    last_closed_day,
    part_object_name,
    project_prefix,
)
from libs.common.day_files.layout import TIE_ORDER, TIE_ORDER_KEY
from libs.common.model.event_encoding import restored_sql
from libs.common.object_store import ObjectInfo, ObjectStore, StorageTier
from libs.common.object_store.file_store import FileObjectStore
from libs.common.schemas.events_v1 import PAGEVIEW, EventV1
from services.aggregator.writer import write_events
from tests.support.analytics_dataset import generate_events
from tests.support.tier_layouts import write

pytestmark = pytest.mark.infra

DAY = date(2024, 3, 2)
DAY_START = datetime(2024, 3, 2, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def settings(tmp_path: Path, **overrides: Any) -> DayExportSettings:
    return DayExportSettings(work_dir=tmp_path / "work", **overrides)


def store_at(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "objects")


def day_events(count: int = 300, prefix: str = "e", hour: int = 0) -> list[EventV1]:
    """`count` events of DAY, of a few devices, with awkward values the CSV path must keep."""
    events = []
    for i in range(count):
        events.append(
            EventV1(
                event_id=f"{prefix}-{i:05d}",
                project_id="acme",
                type="page" if i % 3 else "track",
                name=PAGEVIEW if i % 3 else "signup",
                ts=DAY_START + timedelta(hours=hour, seconds=i * 37 % 80000),
                received_at=DAY_START + timedelta(hours=hour, seconds=i * 37 % 80000 + 2),
                distinct_id=f"device-{i % 23}",
                anonymous_id=f"device-{i % 23}",
                user_id=f"user-{i % 5}" if i % 4 == 0 else None,
                session_id=f"s-{i % 23}-{i // 50}",
                path="/pricing" if i % 2 else "",  # '' must stay '', not NULL
                url=None if i % 5 else f'https://example.com/p?a={i},b="x"',
                title='Line one\nline "two", with comma' if i % 7 == 0 else "Ünïcödé ✓",
                properties={"n": i, "nested": {"s": "a\nb", "q": 'say "hi"'}, "list": [1, 2]}
                if i % 2
                else {},
                browser="Firefox",
                country="DE" if i % 3 else None,
                is_bot=i % 11 == 0,
                non_interactive=i % 13 == 0,
            )
        )
    return events


async def pg_day_rows(pool: asyncpg.Pool, day: date = DAY) -> dict[str, dict[str, Any]]:
    # Properties and anonymous_id as they were sent (tests/integration/test_event_encoding.py
    # compares those with the events themselves).
    columns = ", ".join(
        f"{restored_sql(c)}::text AS {c}" if c == "properties" else f"{restored_sql(c)} AS {c}"
        for c in EVENT_FILE_SCHEMA.names
    )
    rows = await pool.fetch(
        f"SELECT {columns} FROM events e WHERE project_id = 'acme'"
        " AND ts >= $1 AND ts < $1 + interval '1 day'",
        datetime.combine(day, datetime.min.time(), tzinfo=UTC),
    )
    return {r["event_id"]: dict(r) for r in rows}


async def read_part(store: ObjectStore, name: str, tmp_path: Path) -> pa.Table:
    local = tmp_path / f"read-{name.rsplit('/', 1)[-1]}"
    await store.get_to_file(name, local)
    return pq.read_table(local)


async def active_rows(pool: asyncpg.Pool, store: ObjectStore, tmp_path: Path) -> list[str]:
    """Event ids of every active part of the project, with repeats if any."""
    ids: list[str] = []
    for (name,) in await pool.fetch(
        "SELECT object_name FROM day_files WHERE state = 'active' ORDER BY object_name"
    ):
        ids.extend((await read_part(store, name, tmp_path)).column("event_id").to_pylist())
    return ids


async def test_round_trip_column_for_column(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await write(pool, day_events())
    # A neighbouring day's rows must stay out of this day's part.
    await write(pool, generate_events("acme", DAY_START + timedelta(days=1), 1, devices=5))
    async with store_at(tmp_path) as store:
        result = await export_day(pool, store, "acme", DAY, settings(tmp_path))
        assert result.part is not None and result.part.kind == "export"
        table = await read_part(store, result.part.object_name, tmp_path)
        head = await store.head(result.part.object_name)

    expected = await pg_day_rows(pool)
    assert table.schema.remove_metadata().equals(EVENT_FILE_SCHEMA)
    assert table.num_rows == result.rows == len(expected) == 300
    got = {row["event_id"]: row for row in table.to_pylist()}
    assert got.keys() == expected.keys()
    for event_id, row in expected.items():
        for column, value in row.items():
            stored = got[event_id][column]
            if column == "properties":
                assert json.loads(stored) == json.loads(value), (event_id, column)
            else:
                assert stored == value, (event_id, column, stored, value)
    assert got["e-00002"]["path"] == "" and got["e-00001"]["country"] == "DE"
    assert got["e-00001"]["url"] is None and got["e-00003"]["country"] is None
    # Sorted by person key, then time, so each person's events are contiguous.
    keys = [(r["person_key"], r["ts"], r["event_id"]) for r in table.to_pylist()]
    assert keys == sorted(keys) and None not in {k for k, _, _ in keys}

    part = await pool.fetchrow("SELECT * FROM day_files WHERE part_id = $1", result.part.part_id)
    assert part["state"] == "active" and part["rows"] == 300
    assert part["md5"] == head.md5 and part["bytes"] == head.size == result.bytes
    assert part["min_ts"] == min(r["ts"] for r in expected.values())
    assert part["max_ts"] == max(r["ts"] for r in expected.values())
    assert part["object_name"] == part_object_name("acme", DAY, part["part_id"])
    assert part["object_name"].startswith("events/v1/project=acme/dt=2024-03-02/part-")


async def test_ties_are_in_event_id_code_point_order_as_the_footer_claims(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # One device's events at one instant, ids whose code-point order is not a language's
    # (capitals before small letters, '-' before '_'), then late rows tied with them, merged.
    # (The test database's own collation already orders these by code point, so here this
    # holds the footer's claim and the order; a database in a language's collation is what
    # the export's COLLATE "C" is for.)
    tie = DAY_START + timedelta(hours=3)
    ids = ["b-1", "B-2", "a-3", "A-4", "a_5", "a-6", "é-7", "e-8"]
    tied = [
        EventV1(
            event_id=event_id,
            project_id="acme",
            type="page",
            name=PAGEVIEW,
            ts=tie,
            received_at=tie,
            distinct_id="device-x",
            anonymous_id="device-x",
            session_id="s-x",
            path=f"/{event_id}",
        )
        for event_id in ids
    ]
    await write(pool, day_events(50) + tied[:5])
    config = settings(tmp_path, max_late_parts=1)
    async with store_at(tmp_path) as store:
        first = await export_day(pool, store, "acme", DAY, config)
        for late in (tied[5:7], tied[7:]):
            await write(pool, late)
            await export_pending_days(
                pool, store, config, grace=timedelta(0), projects=["acme"], days=[DAY]
            )
        parts = await pool.fetch(
            "SELECT object_name, kind FROM day_files WHERE state = 'active' ORDER BY xid_from"
        )
        assert first.part is not None and [p["kind"] for p in parts] == ["export", "merge"]
        for part in parts:
            local = tmp_path / f"tie-{part['kind']}.parquet"
            await store.get_to_file(part["object_name"], local)
            metadata = pq.read_metadata(local).metadata
            assert metadata[TIE_ORDER_KEY.encode()] == TIE_ORDER.encode()
            rows = pq.read_table(local).to_pylist()
            keys = [(r["person_key"], r["ts"], r["event_id"]) for r in rows]
            # Python compares strings by code point, as COLLATE "C" and Arrow do.
            assert keys == sorted(keys)
            at_tie = [r["event_id"] for r in rows if r["ts"] == tie]
            expected = sorted(ids[:5]) if part["kind"] == "export" else sorted(ids[5:])
            assert at_tie == expected


class CorruptingStore(FileObjectStore):
    """A store whose uploads arrive altered (a broken proxy, a bad disk)."""

    def __init__(self, root: Path, alter: Any) -> None:
        super().__init__(root)
        self.alter = alter

    async def put(
        self,
        name: str,
        data: bytes | Path,
        *,
        storage_tier: StorageTier = "Standard",
        content_md5: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        raw = await asyncio.to_thread(data.read_bytes) if isinstance(data, Path) else data
        return await super().put(
            name, self.alter(raw), storage_tier=storage_tier, metadata=metadata
        )


def flip_a_byte(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :]


def drop_a_row(raw: bytes) -> bytes:
    """A well-formed Parquet file of the same schema, one row short."""
    table = pq.read_table(pa.BufferReader(raw))
    sink = pa.BufferOutputStream()
    pq.write_table(table.slice(1), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("alter", [flip_a_byte, drop_a_row], ids=["flipped-byte", "row-missing"])
async def test_verification_refuses_a_damaged_object(
    pool: asyncpg.Pool, tmp_path: Path, alter: Any
) -> None:
    await write(pool, day_events())
    async with CorruptingStore(tmp_path / "objects", alter) as bad_store:
        with pytest.raises(DayFileVerificationError):
            await export_day(pool, bad_store, "acme", DAY, settings(tmp_path))
        assert await bad_store.names(project_prefix("acme")) == []  # deleted, not left behind
    part = await pool.fetchrow("SELECT state, error FROM day_files")
    assert part["state"] == "deleted" and part["error"]
    assert await pool.fetchval("SELECT count(*) FROM day_files WHERE state = 'active'") == 0

    # With a sound store the next run exports the day as if nothing had happened.
    async with store_at(tmp_path) as store:
        result = await export_day(pool, store, "acme", DAY, settings(tmp_path))
        assert result.rows == 300
        assert sorted(await active_rows(pool, store, tmp_path)) == sorted(await pg_day_rows(pool))


async def test_late_rows_become_an_extra_part_and_never_repeat(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await write(pool, day_events(200))
    async with store_at(tmp_path) as store:
        first = await export_day(pool, store, "acme", DAY, settings(tmp_path))
        assert first.part is not None and first.rows == 200
        assert await days_needing_export(pool, "acme", DAY, max_late_parts=8) == []

        await write(pool, day_events(30, prefix="late", hour=3))
        await write(pool, day_events(200)[:50])  # redelivered duplicates: stored once already
        assert await days_needing_export(pool, "acme", DAY, max_late_parts=8) == [DAY]
        second = await export_day(pool, store, "acme", DAY, settings(tmp_path))
        assert second.part is not None and second.part.kind == "late"
        assert second.rows == 30
        assert second.part.xid_from == first.part.xid_to  # contiguous coverage
        assert set(
            (await read_part(store, second.part.object_name, tmp_path))
            .column("event_id")
            .to_pylist()
        ) == {f"late-{i:05d}" for i in range(30)}

        third = await export_day(pool, store, "acme", DAY, settings(tmp_path))
        assert third.part is None and third.rows == 0
        ids = await active_rows(pool, store, tmp_path)
    assert len(ids) == len(set(ids)) == 230
    assert set(ids) == set(await pg_day_rows(pool))


async def test_a_transaction_open_during_an_export_lands_in_the_next_part(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Its row was received before the export (a received_at watermark would skip it forever)
    but commits after; the xid watermark leaves it to the next export."""
    await write(pool, day_events(100))
    async with store_at(tmp_path) as store:
        await export_day(pool, store, "acme", DAY, settings(tmp_path))
        slow = day_events(1, prefix="slow", hour=6)[0]
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await write_events(conn, [slow])
            during = await export_day(pool, store, "acme", DAY, settings(tmp_path))
            assert during.part is None  # not committed: not visible, not covered
            await transaction.commit()
        after = await export_day(pool, store, "acme", DAY, settings(tmp_path))
        assert after.part is not None and after.rows == 1
        ids = await active_rows(pool, store, tmp_path)
    assert sorted(ids) == sorted(await pg_day_rows(pool)) and "slow-00000" in ids


async def test_today_is_not_exported_and_a_locked_day_is_skipped(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with store_at(tmp_path) as store:
        with pytest.raises(DayNotClosedError):
            await export_day(pool, store, "acme", datetime.now(UTC).date(), settings(tmp_path))
        await write(pool, day_events(10))
        async with pool.acquire() as holder:
            await holder.execute(
                "SELECT pg_advisory_lock(x'44415946'::int, hashtext('acme/2024-03-02'))"
            )
            busy = await export_day(pool, store, "acme", DAY, settings(tmp_path))
            assert busy.skipped and busy.part is None
            await holder.execute(
                "SELECT pg_advisory_unlock(x'44415946'::int, hashtext('acme/2024-03-02'))"
            )
        assert (await export_day(pool, store, "acme", DAY, settings(tmp_path))).rows == 10


def test_last_closed_day_waits_for_the_grace_period() -> None:
    grace = timedelta(minutes=30)
    assert last_closed_day(datetime(2024, 3, 3, 0, 10, tzinfo=UTC), grace) == date(2024, 3, 1)
    assert last_closed_day(datetime(2024, 3, 3, 0, 31, tzinfo=UTC), grace) == date(2024, 3, 2)


async def test_days_needing_export_lists_closed_days_with_rows(pool: asyncpg.Pool) -> None:
    await write(pool, generate_events("acme", datetime(2024, 3, 1, tzinfo=UTC), 4, devices=30))
    days = await days_needing_export(pool, "acme", date(2024, 3, 3), max_late_parts=8)
    assert days == [date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)]
    assert await days_needing_export(pool, "other", date(2024, 3, 3), max_late_parts=8) == []


STEPS = ["catalogued", "written", "uploaded", "verified", "activated"]


@pytest.mark.parametrize("step", STEPS)
async def test_kill_9_at_any_step_then_rerun_exports_exactly_once(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path, step: str
) -> None:
    await write(pool, day_events(400))
    store_url = f"file://{tmp_path / 'objects'}"
    marker = tmp_path / "marker"
    exporter = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.day_export_crash",
        database_url,
        store_url,
        str(tmp_path / "work"),
        "acme",
        DAY.isoformat(),
        step,
        str(marker),
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")},
    )
    try:
        for _ in range(600):
            if marker.exists() or exporter.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert marker.exists(), f"the exporter ended with {exporter.returncode} before {step}"
        crashed_part = marker.read_text()
        assert crashed_part.startswith(project_prefix("acme"))
    finally:
        if exporter.returncode is None:
            exporter.send_signal(signal.SIGKILL)
        await exporter.wait()

    # PostgreSQL ends the killed exporter's session (and its day lock) once it sees the
    # socket closed; until then a rerun would skip the day as busy.
    for _ in range(100):
        if not await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"):
            break
        await asyncio.sleep(0.1)
    # The rerun, as the next tiering pass would do it.
    async with store_at(tmp_path) as store:
        run = await export_pending_days(
            pool, store, settings(tmp_path), grace=timedelta(0), projects=["acme"], days=[DAY]
        )
        assert not run.failures and not any(e.skipped for e in run.exports)
        ids = await active_rows(pool, store, tmp_path)
        objects = set(await store.names(project_prefix("acme")))
    assert len(ids) == len(set(ids)) == 400, "every event exactly once"
    assert set(ids) == set(await pg_day_rows(pool))
    states = {r["object_name"]: r["state"] for r in await pool.fetch("SELECT * FROM day_files")}
    active = {name for name, state in states.items() if state == "active"}
    assert objects == active, "no orphan object, no active part without its object"
    assert set(states.values()) <= {"active", "deleted"}
    # A part that had been verified is finished rather than redone; earlier ones are undone.
    assert states[crashed_part] == ("active" if step in ("verified", "activated") else "deleted")


async def test_sweep_deletes_objects_the_catalog_does_not_account_for(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await write(pool, day_events(20))
    async with store_at(tmp_path) as store:
        await export_day(pool, store, "acme", DAY, settings(tmp_path))
        stray = part_object_name("acme", DAY, "01HZZZZZZZZZZZZZZZZZZZZZZZ")
        await store.put(stray, b"left by a crash long ago")
        other_project = part_object_name("globex", DAY, "01HZZZZZZZZZZZZZZZZZZZZZZZ")
        await store.put(other_project, b"someone else's")
        run = await export_pending_days(
            pool, store, settings(tmp_path), grace=timedelta(0), projects=["acme"]
        )
        assert run.objects_deleted == 1
        names = await store.names(project_prefix("acme"))
        assert stray not in names and len(names) == 1
        assert await store.exists(other_project)  # another project's objects are not ours


async def test_many_late_parts_are_merged_and_the_old_objects_deleted_after_grace(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    config = settings(tmp_path, max_late_parts=2, superseded_grace_s=600)
    await write(pool, day_events(100))
    async with store_at(tmp_path) as store:
        for batch in range(3):
            run = await export_pending_days(
                pool, store, config, grace=timedelta(0), projects=["acme"], days=[DAY]
            )
            assert not run.failures
            await write(pool, day_events(10, prefix=f"late{batch}", hour=batch + 1))
        run = await export_pending_days(
            pool, store, config, grace=timedelta(0), projects=["acme"], days=[DAY]
        )
        assert len(run.merges) == 1
        parts = await pool.fetch("SELECT * FROM day_files ORDER BY created_at")
        active = [p for p in parts if p["state"] == "active"]
        assert [p["kind"] for p in active] == ["export", "merge"]
        merged = active[1]
        superseded = [p for p in parts if p["state"] == "superseded"]
        assert len(superseded) == 3 and {p["superseded_by"] for p in superseded} == {
            merged["part_id"]
        }
        assert merged["xid_from"] == active[0]["xid_to"]
        assert merged["xid_to"] == max(p["xid_to"] for p in superseded)
        ids = await active_rows(pool, store, tmp_path)
        assert len(ids) == len(set(ids)) == 130 and set(ids) == set(await pg_day_rows(pool))
        # Replaced objects stay for readers that planned with them, then go.
        assert len(await store.names(project_prefix("acme"))) == 5
        later = datetime.now(UTC) + timedelta(hours=1)
        await export_pending_days(
            pool, store, config, grace=timedelta(0), projects=["acme"], days=[], now=later
        )
        assert len(await store.names(project_prefix("acme"))) == 2
    states = [r["state"] for r in await pool.fetch("SELECT state FROM day_files")]
    assert sorted(states) == ["active", "active", "deleted", "deleted", "deleted"]


async def test_a_transaction_counter_behind_the_watermarks_stops_the_export(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """As after a logical restore into a new cluster: new rows would have xids below the
    parts' watermark and look exported; the exporter refuses rather than skip them."""
    await write(pool, day_events(20))
    async with store_at(tmp_path) as store:
        await export_day(pool, store, "acme", DAY, settings(tmp_path))
        await pool.execute("UPDATE day_files SET xid_to = 1000000000000")
        await write(pool, day_events(5, prefix="after-restore", hour=4))
        with pytest.raises(XidCounterBehindError, match="pg_resetwal"):
            await export_day(pool, store, "acme", DAY, settings(tmp_path))
        run = await export_pending_days(
            pool, store, settings(tmp_path), grace=timedelta(0), projects=["acme"], days=[DAY]
        )
        assert [day for _, day, _ in run.failures] == [DAY]
