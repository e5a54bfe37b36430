"""Upgrading across the migration that keys `event_ids` by digest: an event stored before the
upgrade and redelivered after it is still recognised, so nothing is counted twice."""

from __future__ import annotations

import asyncpg
import pytest

from libs.common import db
from services.aggregator.writer import write_events
from tests.support.recompute import make_event

pytestmark = pytest.mark.infra

DIGESTS = 22  # the migration that replaced the strings by digests


async def test_ids_stored_before_the_upgrade_still_dedup_after_it(
    empty_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = db.migration_files()
    monkeypatch.setattr(db, "migration_files", lambda: [m for m in every if m[0] < DIGESTS])
    await db.migrate(empty_db)
    # Stored by the previous release: the two strings, as it wrote them.
    await empty_db.execute(
        "INSERT INTO event_ids (project_id, event_id) VALUES ('acme', 'before-1'),"
        " ('acme', 'before-2'), ('other', 'before-1')"
    )
    monkeypatch.setattr(db, "migration_files", lambda: every)
    assert any(name.startswith(f"00{DIGESTS}_") for name in await db.migrate(empty_db))
    assert await empty_db.fetchval("SELECT count(*) FROM event_ids") == 3

    redelivered = [
        make_event(project_id="acme", event_id="before-1"),
        make_event(project_id="other", event_id="before-1"),
        make_event(project_id="acme", event_id="after-1"),
        make_event(project_id="other", event_id="before-2"),  # another project's id
    ]
    result = await write_events(empty_db, redelivered)
    assert (result.inserted, result.duplicates) == (2, 2)
    stored = await empty_db.fetch("SELECT project_id, event_id FROM events ORDER BY 1, 2")
    assert [tuple(r) for r in stored] == [("acme", "after-1"), ("other", "before-2")]
