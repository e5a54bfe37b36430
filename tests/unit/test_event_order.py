"""Funnels and paths walk events in (key, ts, rank, event id) order while DuckDB hands the rows
over unsorted: NumPy must group each key's rows together, order them by (ts, rank) and put
ties in event-id order, whether the sort packs its keys into one integer or, when they do not
fit, sorts them one by one; and string keys numbered per run of equal keys by their hashes
get the numbers the dictionary encoding gives."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from services.query.analyses.event_order import (
    TiesNeedEventIds,
    bool_values,
    in_event_order,
    key_codes,
    run_key_codes,
)

Row = tuple[str, int, int, str]


def _ordered(rows: list[Row], rank: bool = True) -> list[Row]:
    table = pa.table(
        {
            "key": [r[0] for r in rows],
            "t": pa.array([r[1] for r in rows], pa.int64()),
            "rank": [r[2] for r in rows],
            "eid": [r[3] for r in rows],
        }
    )
    ranks = np.asarray(table["rank"].to_numpy(), dtype=np.int64) if rank else None
    events = in_event_order(table, key="key", ts="t", event_id="eid", rank=ranks)
    positions = np.arange(table.num_rows, dtype=np.int64)
    out = list(
        zip(
            events.take("key", positions).to_pylist(),
            events.t.tolist(),
            events.take("rank", positions).to_pylist(),
            events.take("eid", positions).to_pylist(),
            strict=True,
        )
    )
    # The stream's own view of keys agrees with the strings.
    same = [a[0] == b[0] for a, b in itertools.pairwise(out)]
    assert events.same_key.tolist() == same
    assert events.t.tolist() == events.ints("t").tolist()
    return out


def _grouped_then_sorted(ordered: list[Row], rank: bool = True) -> None:
    """Each key's rows together, and within a key in (ts, rank, event id) order."""
    keys = [r[0] for r in ordered]
    assert keys == sorted(keys, key=keys.index), "a key's rows are not together"
    for key in set(keys):
        mine = [r for r in ordered if r[0] == key]
        expected = sorted(mine, key=lambda r: (r[1], r[2] if rank else 0, r[3]))
        if rank:
            assert mine == expected
        else:
            assert [(r[1], r[3]) for r in mine] == [(r[1], r[3]) for r in expected]


def test_ties_on_key_ts_and_rank_come_in_event_id_order() -> None:
    rows = [
        ("person-a", 10, 1, "evt-9"),
        ("person-b", 10, 1, "evt-5"),
        ("person-a", 10, 1, "evt-10"),
        ("person-a", 10, 2, "evt-0"),
        ("person-b", 10, 1, "evt-3"),
        ("person-a", 10, 1, "evt-1"),
        ("person-a", 5, 1, "evt-7"),
    ]
    ordered = _ordered(rows)
    by_person = {
        k: [(t, e) for key, t, _, e in ordered if key == k] for k in ("person-a", "person-b")
    }
    # String order of ids: "evt-1" < "evt-10" < "evt-9"; the rank-2 event after all rank-1.
    assert by_person["person-a"] == [
        (5, "evt-7"),
        (10, "evt-1"),
        (10, "evt-10"),
        (10, "evt-9"),
        (10, "evt-0"),
    ]
    assert by_person["person-b"] == [(10, "evt-3"), (10, "evt-5")]
    _grouped_then_sorted(ordered)


def test_rows_in_any_order_come_out_in_stream_order() -> None:
    rng = random.Random(7)
    rows = [
        (f"p{rng.randrange(30)}", rng.randrange(50), rng.randrange(4), f"e{i}")
        for i in range(2_000)
    ]
    ordered = _ordered(rows)
    assert sorted(ordered) == sorted(rows)
    _grouped_then_sorted(ordered)
    # Without a rank: (key, ts, event id).
    _grouped_then_sorted(_ordered(rows, rank=False), rank=False)


def test_keys_too_wide_to_pack_into_one_integer_sort_the_same() -> None:
    # Timestamps 2**62 apart leave no room for the key and rank bits in one int64.
    rows = [
        ("b", 2**62, 0, "e1"),
        ("a", 0, 1, "e2"),
        ("b", 0, 1, "e3"),
        ("a", 2**62, 0, "e4"),
        ("a", 0, 0, "e6"),
        ("a", 0, 0, "e5"),
    ]
    ordered = _ordered(rows)
    assert [r for r in ordered if r[0] == "a"] == [
        ("a", 0, 0, "e5"),
        ("a", 0, 0, "e6"),
        ("a", 0, 1, "e2"),
        ("a", 2**62, 0, "e4"),
    ]
    _grouped_then_sorted(ordered)


def test_ranks_without_room_in_the_packed_sort_still_order_ties() -> None:
    # Timestamps 2**60 apart leave room for (key, ts) but not the rank: ranks then order the
    # rows tied on (key, ts), and event ids the rows tied on the rank too.
    rng = random.Random(11)
    rows = [
        (f"p{rng.randrange(3)}", rng.choice((0, 1, 2**60)), rng.randrange(4), f"e{i}")
        for i in range(300)
    ]
    ordered = _ordered(rows)
    assert sorted(ordered) == sorted(rows)
    _grouped_then_sorted(ordered)
    # Without event ids, equal tied rows need none; ranks alone still order the rest.
    table = pa.table(
        {
            "key": [r[0] for r in rows],
            "t": pa.array([r[1] for r in rows], pa.int64()),
            "rank": [r[2] for r in rows],
        }
    )
    ranks = np.asarray(table["rank"].to_numpy(), dtype=np.int64)
    events = in_event_order(table, key="key", ts="t", event_id=None, rank=ranks)
    got = list(
        zip(events.key.tolist(), events.t.tolist(), ranks[events.rows].tolist(), strict=True)
    )
    keys = [g[0] for g in got]
    assert keys == sorted(keys, key=keys.index), "a key's rows are not together"
    for key in set(keys):
        mine = [(t, rank) for k, t, rank in got if k == key]
        assert mine == sorted(mine)


def test_no_rows() -> None:
    assert _ordered([]) == []


def test_without_event_ids_equal_tied_rows_need_none() -> None:
    # Rows tied on (key, ts, rank) that are equal in every column: any order answers the same.
    table = pa.table(
        {
            "key": ["a", "a", "b", "a"],
            "t": pa.array([10, 10, 10, 5], pa.int64()),
            "mask": [1, 1, 2, 1],
        }
    )
    events = in_event_order(table, key="key", ts="t", event_id=None)
    positions = np.arange(table.num_rows, dtype=np.int64)
    assert list(zip(events.take("key", positions).to_pylist(), events.t.tolist(), strict=True)) == [
        ("a", 5),
        ("a", 10),
        ("a", 10),
        ("b", 10),
    ]


def test_without_event_ids_tied_rows_that_differ_ask_for_them() -> None:
    # Same key, ts and rank but different masks (or one NULL breakdown): the order matters.
    for other in ({"mask": [1, 3], "bd": ["x", "x"]}, {"mask": [1, 1], "bd": ["x", None]}):
        table = pa.table({"key": ["a", "a"], "t": pa.array([10, 10], pa.int64()), **other})
        with pytest.raises(TiesNeedEventIds):
            in_event_order(table, key="key", ts="t", event_id=None, rank=np.zeros(2, np.int64))
    # NULL equals NULL: still interchangeable.
    table = pa.table(
        {"key": ["a", "a"], "t": pa.array([10, 10], pa.int64()), "bd": pa.nulls(2, pa.string())}
    )
    assert in_event_order(table, key="key", ts="t", event_id=None).rows.size == 2


def _run_codes_agree(keys: Sequence[str | None], hashes: Sequence[int]) -> npt.NDArray[np.int64]:
    chunked = pa.chunked_array([keys[: len(keys) // 2], keys[len(keys) // 2 :]], pa.string())
    hashed = pa.chunked_array([pa.array(hashes, pa.uint64())])
    codes = run_key_codes(chunked, hashed)
    # The dictionary encoding's numbers exactly: equal keys equal numbers, first-seen order.
    assert codes.tolist() == key_codes(chunked).tolist()
    return codes


def test_keys_numbered_per_run_by_their_hashes_match_the_dictionary_encoding() -> None:
    # Keys mostly in runs, some split over several runs (a session across two day files, or
    # two of one person's sessions overlapping in time), hashed as DuckDB's hash() would.
    rng = random.Random(5)
    keys = [f"s{rng.randrange(60)}" for _ in range(400)]
    keys = [k for k in keys for _ in range(rng.randrange(1, 4))]
    codes = _run_codes_agree(keys, [hash(k) % 2**64 for k in keys])
    assert int(codes.max()) + 1 == len(set(keys))
    # A hash two different keys share (a collision) must not merge them.
    colliding = {"s1": 7, "s2": 7, "s3": 7}
    _run_codes_agree(keys, [colliding.get(k, hash(k) % 2**64) for k in keys])
    _run_codes_agree(keys, [1] * len(keys))
    # One key, a NULL key (numbered as one key), and no rows.
    _run_codes_agree(["a", "a"], [3, 3])
    _run_codes_agree(["a", None, "a", None], [3, 0, 3, 0])
    assert _run_codes_agree([], []).size == 0


def test_keys_numbered_per_run_order_the_stream_alike() -> None:
    rows = [("b", 5, 0, "e2"), ("a", 1, 0, "e1"), ("b", 1, 0, "e3"), ("b", 5, 0, "e1")]
    table = pa.table(
        {
            "key": [r[0] for r in rows],
            "t": pa.array([r[1] for r in rows], pa.int64()),
            "eid": [r[3] for r in rows],
        }
    )
    hashed = pa.chunked_array([pa.array([11, 22, 11, 11], pa.uint64())])
    codes = run_key_codes(table["key"], hashed)
    events = in_event_order(table, key="key", ts="t", event_id="eid", codes=codes)
    plain = in_event_order(table, key="key", ts="t", event_id="eid")
    assert events.rows.tolist() == plain.rows.tolist() == [2, 3, 0, 1]
    assert events.same_key.tolist() == plain.same_key.tolist()


def test_keys_numbered_per_run_over_many_runs_match_the_dictionary_encoding() -> None:
    # Thousands of runs: most runs' hashes have a bucket of their own and are never sorted;
    # a key split over runs, and hashes that share a bucket, still get one number per key.
    rng = random.Random(9)
    keys = [f"s{rng.randrange(3000)}" for _ in range(6000)]
    keys = [k for k in keys for _ in range(rng.randrange(1, 3))]
    codes = _run_codes_agree(keys, [hash(k) % 2**64 for k in keys])
    assert int(codes.max()) + 1 == len(set(keys))
    # Hashes equal in their top bits only (one bucket) but different keys and hashes.
    _run_codes_agree(keys, [(7 << 50) | (hash(k) % 2**20) for k in keys])


def _tie_table(rows: list[tuple[str, int, int | None, str | None, int]]) -> pa.Table:
    """Rows of (key, ts, tie_row, tie_id, stored key), as paths read the scan's tie columns."""
    return pa.table(
        {
            "key": [r[0] for r in rows],
            "t": pa.array([r[1] for r in rows], pa.int64()),
            "tr": pa.array([r[2] for r in rows], pa.int64()),
            "eid": pa.array([r[3] for r in rows], pa.string()),
            "run": pa.array([r[4] for r in rows], pa.int64()),
        }
    )


def _tie_order(table: pa.Table) -> list[tuple[str, int, int | None, str | None]]:
    events = in_event_order(table, key="key", ts="t", event_id="eid", tie_row="tr", tie_run="run")
    picked = table.take(pa.array(events.rows)).to_pylist()
    return [(r["key"], r["t"], r["tr"], r["eid"]) for r in picked]


def _file_row(file: int, row: int) -> int:
    return file << 32 | row


def test_ties_within_one_file_and_stored_key_follow_their_positions() -> None:
    # A file claiming the tie order holds rows tied on (stored key, ts) in event-id order, so
    # their positions order them with no id read; PostgreSQL's rows (ids) beside them are
    # ordered by id. The rows come shuffled: only the positions and ids can give the order.
    rows: list[tuple[str, int, int | None, str | None, int]] = [
        ("s1", 5, _file_row(0, 7), None, 1),
        ("s1", 5, _file_row(0, 3), None, 1),
        ("s1", 5, _file_row(0, 12), None, 1),
        ("s1", 9, _file_row(0, 13), None, 1),
        ("s2", 5, _file_row(1, 4), None, 2),
        ("s2", 5, _file_row(1, 2), None, 2),
        ("s3", 5, None, "e9", 3),
        ("s3", 5, None, "e10", 3),
        ("s3", 5, None, "E5", 3),
    ]
    expected = [
        ("s1", 5, _file_row(0, 3), None),
        ("s1", 5, _file_row(0, 7), None),
        ("s1", 5, _file_row(0, 12), None),
        ("s1", 9, _file_row(0, 13), None),
        ("s2", 5, _file_row(1, 2), None),
        ("s2", 5, _file_row(1, 4), None),
        ("s3", 5, None, "E5"),
        ("s3", 5, None, "e10"),
        ("s3", 5, None, "e9"),
    ]
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        got = _tie_order(_tie_table(shuffled))
        # Keys come out grouped in first-seen order: compare each key's rows.
        assert sorted(got, key=lambda r: r[0]) == expected


@pytest.mark.parametrize(
    "tied",
    [
        # Two files (a day's export and its late part).
        [("s", 5, _file_row(0, 1), None, 1), ("s", 5, _file_row(1, 0), None, 1)],
        # One file, two stored keys (a session before and after an identify): the file
        # orders them by key first, not by id.
        [("s", 5, _file_row(0, 1), None, 1), ("s", 5, _file_row(0, 9), None, 2)],
        # A file's row and PostgreSQL's.
        [("s", 5, _file_row(0, 1), None, 1), ("s", 5, None, "e1", 1)],
    ],
    ids=["two-files", "two-stored-keys", "file-and-postgresql"],
)
def test_ties_positions_cannot_order_ask_for_the_event_ids(
    tied: list[tuple[str, int, int | None, str | None, int]],
) -> None:
    untied = [("t", 5, _file_row(0, 0), None, 3), ("t", 6, _file_row(0, 2), None, 3)]
    assert len(_tie_order(_tie_table(untied))) == 2
    with pytest.raises(TiesNeedEventIds):
        _tie_order(_tie_table(untied + tied))


@pytest.mark.parametrize("size", [1, 2, 7, 8, 9, 64, 1001])
def test_bool_values_unpack_the_bits_of_arrays_at_any_offset(size: int) -> None:
    # Neighbour comparisons are slices of one array: their bits start mid-byte.
    rng = random.Random(size)
    ids = pa.array([rng.choice("ab") for _ in range(size + 3)])
    for start in range(4):
        part = ids[start : start + size]
        flags = pc.not_equal(part[1:], part[:-1])
        got = bool_values(flags)
        assert got.dtype == np.bool_
        assert got.tolist() == flags.to_pylist()
