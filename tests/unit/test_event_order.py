"""Funnels and paths walk events in (key, ts, rank, event id) order while DuckDB sorts only on
integers (a hash of the key, ts, rank): ties must still come out in event-id order, and two
keys sharing a hash must not interleave their rows."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from services.query.analyses.event_order import HASH, in_event_order


def _ordered(table: pa.Table, rank: bool = False) -> list[tuple[str, int, str]]:
    kwargs = {"rank": np.asarray(table["rank"].to_numpy(), dtype=np.int64)} if rank else {}
    events = in_event_order(table, key="key", ts="t", event_id="eid", **kwargs)
    positions = np.arange(events.table.num_rows, dtype=np.int64)
    keys = events.take("key", positions).to_pylist()
    return list(
        zip(keys, events.ints("t").tolist(), events.take("eid", positions).to_pylist(), strict=True)
    )


def _hash_sorted(rows: list[tuple[str, int, int, str]]) -> pa.Table:
    """The rows as the analyses' queries return them: sorted by DuckDB on (hash, t, rank)."""
    con = duckdb.connect()
    con.register(
        "rows",
        pa.table(
            {
                "key": [r[0] for r in rows],
                "t": [r[1] for r in rows],
                "rank": [r[2] for r in rows],
                "eid": [r[3] for r in rows],
            }
        ),
    )
    return con.sql(
        f"SELECT *, hash(key) AS {HASH} FROM rows ORDER BY {HASH}, t, rank"
    ).to_arrow_table()


def test_ties_on_key_ts_and_rank_come_in_event_id_order() -> None:
    rows = [
        ("person-a", 10, 1, "evt-9"),
        ("person-a", 10, 1, "evt-10"),
        ("person-a", 10, 2, "evt-0"),
        ("person-a", 10, 1, "evt-1"),
        ("person-b", 10, 1, "evt-5"),
        ("person-b", 10, 1, "evt-3"),
        ("person-a", 5, 1, "evt-7"),
    ]
    ordered = _ordered(_hash_sorted(rows), rank=True)
    by_person = {k: [(t, e) for key, t, e in ordered if key == k] for k in ("person-a", "person-b")}
    # String order of ids: "evt-1" < "evt-10" < "evt-9"; the rank-2 event after all rank-1.
    assert by_person["person-a"] == [
        (5, "evt-7"),
        (10, "evt-1"),
        (10, "evt-10"),
        (10, "evt-9"),
        (10, "evt-0"),
    ]
    assert by_person["person-b"] == [(10, "evt-3"), (10, "evt-5")]
    # Each person's rows are together.
    keys = [k for k, _, _ in ordered]
    assert keys == sorted(keys, key=keys.index)


def test_keys_sharing_a_hash_are_not_interleaved() -> None:
    # Two keys given one hash (as a 64-bit collision would): sorted by (hash, t) their rows
    # interleave, and the order falls back to the strings.
    table = pa.table(
        {
            "key": ["b", "a", "b", "a"],
            "t": [1, 2, 3, 4],
            "rank": [1, 1, 1, 1],
            "eid": ["e1", "e2", "e3", "e4"],
            HASH: pa.array([7, 7, 7, 7], pa.uint64()),
        }
    )
    assert _ordered(table) == [("a", 2, "e2"), ("a", 4, "e4"), ("b", 1, "e1"), ("b", 3, "e3")]
