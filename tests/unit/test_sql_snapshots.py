"""The SQL the aggregator runs on every batch, and erasure's recompute of the same session
rollups, kept as snapshots so a change to it is reviewed as SQL (tests/snapshots;
`./just snapshots` rewrites them)."""

from __future__ import annotations

import pytest

from libs.common import erasure
from services.aggregator import writer
from tests.support.sql_snapshots import assert_sql_snapshot

pytestmark = pytest.mark.sql_snapshot


@pytest.mark.parametrize(
    ("name", "sql"),
    [
        ("aggregator_insert_new_event_ids", writer._INSERT_NEW_EVENT_IDS),
        ("aggregator_assign_person_keys", writer._ASSIGN_PERSON_KEYS),
        ("aggregator_read_rollups", writer._READ_ROLLUPS),
        ("aggregator_upsert_rollups", writer._UPSERT_ROLLUPS),
        ("aggregator_apply_sessions", writer._APPLY_SESSIONS),
        ("erasure_recompute_session_rollups", erasure._INSERT_SESSION_ROLLUPS),
    ],
)
def test_aggregator_statements_match_their_snapshots(name: str, sql: str) -> None:
    assert_sql_snapshot(name, sql)
