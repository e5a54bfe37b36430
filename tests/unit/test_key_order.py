"""The compiled stable sort of a stream's packed (key, ts, rank) values (key_order.py) is
exactly `np.argsort(kind="stable")`: rows grouped by key in key order, each key's values
ascending, equal values in the order they came, whether a key's rows came in order (counting
sort alone), out of order in a few rows (insertion) or in many (merge sort)."""

from __future__ import annotations

import numpy as np
import pytest

from services.query.analyses import key_order
from services.query.analyses.key_order import stable_key_order

SHIFT = 20


def _stream(seed: int, keys: int, rows: int, shuffled: float) -> np.ndarray:
    """Packed values of `keys` keys, in runs like day files' (each run's rows by key, then
    value, a run's values above the runs' before it), a share `shuffled` of them moved to
    random places; values repeat (ties)."""
    rng = np.random.default_rng(seed)
    key = rng.integers(0, keys, rows)
    run = rng.integers(0, 6, rows)
    low = run * 40 + rng.integers(0, 40, rows)  # later runs, later times; many ties
    packed = (key << SHIFT) | low
    order = np.lexsort((packed, run))
    packed = packed[order]
    moved = np.flatnonzero(rng.random(rows) < shuffled)
    packed[moved] = packed[rng.permutation(moved)]
    return packed


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize(
    ("keys", "rows", "shuffled"),
    [(50, 400, 0.0), (50, 400, 0.05), (7, 600, 1.0), (3, 2_000, 0.3), (400, 300, 1.0)],
    ids=["runs", "few-moved", "long-keys-shuffled", "merge-sorted", "sparse-keys"],
)
def test_the_order_is_a_stable_sorts(keys: int, rows: int, shuffled: float, compiled: bool) -> None:
    for seed in range(5):
        packed = _stream(seed, keys, rows, shuffled)
        rows_out, ordered, sorted_keys = stable_key_order(packed, SHIFT, keys, compiled=compiled)
        expected = np.argsort(packed, kind="stable")
        assert rows_out.tolist() == expected.tolist()
        assert ordered.tolist() == packed[expected].tolist()
        if shuffled == 0.0:
            assert sorted_keys == 0  # every key's rows came in order: counting sort alone
        else:
            assert 0 < sorted_keys <= keys


def test_both_repair_paths_run_and_agree() -> None:
    # One key with few rows out of order (insertion), one with many (merge sort).
    small = [(1 << SHIFT) | v for v in (5, 3, 3, 1)]
    large = [(2 << SHIFT) | v for v in np.random.default_rng(1).integers(0, 9, 200)]
    packed = np.asarray([*large[:100], *small, *large[100:]], dtype=np.int64)
    for compiled in (True, False):
        rows, ordered, sorted_keys = stable_key_order(packed, SHIFT, 3, compiled=compiled)
        assert rows.tolist() == np.argsort(packed, kind="stable").tolist()
        assert ordered.tolist() == np.sort(packed, kind="stable").tolist()
        assert sorted_keys == 2
    assert key_order._INSERTION_MAX < 100


def test_no_rows_and_one_row() -> None:
    rows, ordered, sorted_keys = stable_key_order(np.zeros(0, dtype=np.int64), SHIFT, 1)
    assert rows.size == 0 and ordered.size == 0 and sorted_keys == 0
    rows, ordered, _ = stable_key_order(np.asarray([7], dtype=np.int64), SHIFT, 1)
    assert rows.tolist() == [0] and ordered.tolist() == [7]
