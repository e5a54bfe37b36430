"""open_scan conformance: over every tier layout (all hot, split between day files and
PostgreSQL, all exported with late parts) the view `events_scan` holds exactly the rows a plain
PostgreSQL read gives, alias-resolved, each event once; `persons` mirrors PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from libs.common.day_files import day_bounds, days_between
from libs.common.model.event_encoding import restored_sql
from libs.common.schemas.events_v1 import PAGEVIEW, EventV1
from services.query.event_scan import SCAN_COLUMNS, ArchivedDaysError, open_scan
from services.query.person_keys import resolved_person_keys
from tests.support.analytics_dataset import generate_events
from tests.support.tier_layouts import LAYOUTS, tier_layout, write

pytestmark = pytest.mark.infra

FIRST_DAY = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 6

_PG_COLUMNS = ", ".join(
    "COALESCE(a.person_id, e.user_id, e.distinct_id) AS person_id"
    if c == "person_id"
    else (f"{restored_sql(c)}::text AS {c}" if c == "properties" else f"e.{c}")
    for c in SCAN_COLUMNS
)


async def postgres_rows(
    pool: asyncpg.Pool, start: datetime, end: datetime, include_bots: bool
) -> list[tuple[Any, ...]]:
    """The reference: the same rows read straight from PostgreSQL."""
    rows = await pool.fetch(
        f"""SELECT {_PG_COLUMNS} FROM events e
            LEFT JOIN person_aliases a ON a.project_id = e.project_id
                AND a.distinct_id = e.distinct_id
            WHERE e.project_id = 'acme' AND e.ts >= $1 AND e.ts < $2
              AND ($3 OR NOT e.is_bot)
            ORDER BY e.event_id""",
        start,
        end,
        include_bots,
    )
    return [normalise(tuple(r)) for r in rows]


def normalise(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Instants in UTC and JSON parsed, so both engines' values compare equal."""
    out = []
    for name, value in zip(SCAN_COLUMNS, row, strict=True):
        if isinstance(value, datetime):
            value = value.astimezone(UTC)
        elif name == "properties" and value is not None:
            value = json.dumps(json.loads(value), sort_keys=True)
        out.append(value)
    return tuple(out)


async def scan_rows(scan: Any) -> list[tuple[Any, ...]]:
    rows = await scan.query(f"SELECT {', '.join(SCAN_COLUMNS)} FROM events_scan ORDER BY event_id")
    return [normalise(r) for r in rows]


def dataset() -> list[EventV1]:
    return generate_events("acme", FIRST_DAY, DAYS, devices=60, seed=11)


RANGES = [
    (FIRST_DAY, FIRST_DAY + timedelta(days=DAYS)),  # whole days
    (FIRST_DAY + timedelta(days=1, hours=7), FIRST_DAY + timedelta(days=4, hours=13)),  # partial
]


def assert_same_persons(rows: list[tuple[Any, ...]], keyed: list[tuple[Any, ...]]) -> None:
    """`events_scan_keyed` holds the same events as `events_scan` (rows), with one key per
    person_id and one person_id per key: aliases resolved through keys as through ids."""
    person_of = {
        r[SCAN_COLUMNS.index("event_id")]: r[SCAN_COLUMNS.index("person_id")] for r in rows
    }
    assert sorted(person_of) == [event_id for event_id, _ in keyed]
    pairs = {(person_of[event_id], key) for event_id, key in keyed}
    assert len(pairs) == len({p for p, _ in pairs}) == len({k for _, k in pairs})
    assert None not in {k for _, k in pairs}


@pytest.mark.parametrize("layout_name", LAYOUTS)
async def test_scan_equals_postgres_in_every_layout(
    pool: asyncpg.Pool, tmp_path: Path, layout_name: str
) -> None:
    events = dataset()
    async with tier_layout(layout_name, pool, events, tmp_path) as layout:
        total_parts = await pool.fetchval("SELECT count(*) FROM day_files WHERE state = 'active'")
        assert (total_parts > 0) == bool(layout.exported_days)
        for start, end in RANGES:
            for include_bots in (False, True):
                expected = await postgres_rows(pool, start, end, include_bots)
                async with await open_scan(
                    layout.deps, "acme", start, end, include_bots=include_bots
                ) as scan:
                    got = await scan_rows(scan)
                    tiers = {t.tier: t for t in scan.tiers}
                    # Every row written since migration 0024 has person keys, files too.
                    assert scan.person_keys
                    keyed = await scan.query(
                        "SELECT event_id, person_key FROM events_scan_keyed ORDER BY event_id"
                    )
                    # The stored keys, resolved in NumPy, name the persons the join names.
                    stored = await scan.query_arrow(
                        "SELECT alias_key, person_key FROM events_scan_stored ORDER BY event_id"
                    )
                    aliases = await scan.query_arrow("SELECT * FROM person_key_aliases")
                    resolved = resolved_person_keys(
                        *(np.asarray(stored[c].to_numpy()) for c in ("alias_key", "person_key")),
                        *(np.asarray(aliases[c].to_numpy()) for c in ("device", "person")),
                    )
                    assert resolved.tolist() == [key for _, key in keyed]
                assert_same_persons(got, keyed)
                assert len({r[2] for r in got}) == len(got), "an event appears twice"
                assert got == expected, (layout_name, start, end, include_bots)
                assert expected, "the range must not be empty"
                # Tiers count the rows of the whole days read, bots included.
                covered = days_between(start, end)
                whole_days = await pool.fetchval(
                    "SELECT count(*) FROM events WHERE ts >= $1 AND ts < $2",
                    day_bounds(covered[0])[0],
                    day_bounds(covered[-1])[1],
                )
                if layout_name == "all_hot":
                    assert set(tiers) == {"hot"}
                    assert tiers["hot"].rows == whole_days
                elif layout_name == "all_exported":
                    assert tiers["cold"].rows == whole_days
                    assert tiers["hot"].rows == 0  # late rows are in late parts by now
                else:
                    assert tiers["hot"].rows > 0 and tiers["cold"].rows > 0
                    assert tiers["hot"].rows + tiers["cold"].rows >= len(expected)


@pytest.mark.parametrize("layout_name", ["split", "all_exported"])
async def test_rows_arriving_after_export_are_read_once_from_postgres(
    pool: asyncpg.Pool, tmp_path: Path, layout_name: str
) -> None:
    events = dataset()
    async with tier_layout(layout_name, pool, events, tmp_path) as layout:
        day = layout.exported_days[0]
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        template = next(ev for ev in events if ev.ts.astimezone(UTC).date() == day)
        late = EventV1(
            event_id="arrived-late",
            project_id="acme",
            type="page",
            name=PAGEVIEW,
            ts=start + timedelta(hours=5),
            received_at=datetime.now(UTC),
            distinct_id=template.distinct_id,
            anonymous_id=template.anonymous_id,
            path="/late",
            session_id="s-late",
        )
        await write(pool, [late])
        end = start + timedelta(days=1)
        async with await open_scan(layout.deps, "acme", start, end, include_bots=True) as scan:
            got = await scan_rows(scan)
            tiers = {t.tier: t.rows for t in scan.tiers}
        assert got == await postgres_rows(pool, start, end, True)
        assert next(r for r in got if r[2] == "arrived-late")[8] == "/late"
        # Only rows no part holds came from PostgreSQL: the new one, and in the split layout
        # the rows held back until after the export (all_exported put those in a late part).
        held_back = {ev.event_id for ev in events if ev.ts.astimezone(UTC).date() == day}
        held_back &= layout.late_event_ids
        assert tiers["hot"] == 1 + (len(held_back) if layout_name == "split" else 0)
        assert tiers["cold"] == len(got) - tiers["hot"]


async def test_persons_table_mirrors_postgres(pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with tier_layout("split", pool, dataset(), tmp_path) as layout:
        end = FIRST_DAY + timedelta(days=DAYS)
        async with await open_scan(layout.deps, "acme", FIRST_DAY, end, include_bots=False) as s:
            got = await s.query("SELECT person_id, traits::VARCHAR, first_seen FROM persons")
        async with await open_scan(
            layout.deps, "acme", FIRST_DAY, end, include_bots=False, with_persons=False
        ) as s:
            assert not await s.query("SELECT 1 FROM duckdb_tables() WHERE table_name = 'persons'")
    expected = await pool.fetch(
        "SELECT person_id, traits::text, first_seen FROM persons WHERE project_id = 'acme'"
    )
    assert expected, "the dataset identifies some persons"
    assert sorted((p, json.loads(t), f) for p, t, f in got) == sorted(
        (r[0], json.loads(r[1]), r[2]) for r in expected
    )


async def test_person_id_follows_aliases_learned_after_export(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Files store raw ids; person_id is resolved when the scan opens, so an identify that
    arrives after a day was exported still merges that day's anonymous events."""
    async with tier_layout("all_exported", pool, dataset(), tmp_path) as layout:
        end = FIRST_DAY + timedelta(days=DAYS)
        # An earlier scan leaves the project's aliases cached in the engine.
        async with await open_scan(layout.deps, "acme", FIRST_DAY, end, include_bots=True) as s:
            before = await scan_rows(s)
        anonymous = await pool.fetchval(
            "SELECT distinct_id FROM events WHERE user_id IS NULL AND distinct_id NOT IN"
            " (SELECT distinct_id FROM person_aliases) ORDER BY distinct_id LIMIT 1"
        )
        await pool.execute(
            "INSERT INTO person_aliases (project_id, distinct_id, person_id)"
            " VALUES ('acme', $1, 'user-linked-later')",
            anonymous,
        )
        async with await open_scan(layout.deps, "acme", FIRST_DAY, end, include_bots=True) as s:
            persons = await s.query(
                "SELECT DISTINCT person_id FROM events_scan WHERE distinct_id = ?", [anonymous]
            )
            after = await scan_rows(s)
    assert persons == [("user-linked-later",)]
    assert len(after) == len(before)
    assert [r for r in before if r[5] == anonymous] and all(
        r[4] == "user-linked-later" for r in after if r[5] == anonymous
    )


async def test_archived_days_are_refused_unless_partial(pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with tier_layout("split", pool, dataset(), tmp_path) as layout:
        archived_day = layout.exported_days[0]
        await pool.execute(
            "UPDATE day_files SET storage_tier = 'Archive', archival_state = 'Archived'"
            " WHERE day = $1",
            archived_day,
        )
        end = FIRST_DAY + timedelta(days=DAYS)
        with pytest.raises(ArchivedDaysError) as refused:
            await open_scan(layout.deps, "acme", FIRST_DAY, end, include_bots=True)
        assert refused.value.days == [archived_day]
        async with await open_scan(
            layout.deps, "acme", FIRST_DAY, end, include_bots=True, allow_partial=True
        ) as scan:
            assert scan.missing_days == [archived_day]
            days = await scan.query("SELECT DISTINCT CAST(ts AS DATE) FROM events_scan ORDER BY 1")
        assert archived_day not in [d for (d,) in days]
        assert len(days) == DAYS - 1
