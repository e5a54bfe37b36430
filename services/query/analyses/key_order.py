"""The stable sort of a stream's packed (key number, ts[, rank]) values (event_order.py), compiled:
a counting sort by key number, then a sort of each key's values only where they are not
already ascending.

A stream's keys are numbered densely from 0, and its rows mostly come with each key's rows in
order already: day files hold a person's rows together in time order, so a funnel's rows read
day by day are a run per day of ascending values. `np.argsort(kind="stable")` merges those
runs pass after pass over the whole stream (~56 ms for the 120-day benchmark funnel's 3.1M
rows, ~10 more to gather the values after). Here one pass counts the rows per key, one writes
each row (and its value) to its key's next slot, which keeps the rows of a key in the order
they came, and one more finds the keys whose values still descend somewhere (rows of two days'
files out of order, an alias's rows from another stored key, hot rows) and sorts just those,
stably (~30 ms in all). The result is exactly a stable sort's. Compiled on first use with Numba
(jit.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from services.query.analyses.jit import Compiled

Ints = npt.NDArray[np.int64]

# A key's values out of order are sorted in place by insertion up to this many rows, else by
# a merge sort of the key's rows (both stable).
_INSERTION_MAX = 32


def _stable_key_order(  # pragma: no cover - run compiled; tests also run it as Python
    packed: Ints, shift: int, keys: int, rows: Ints, ordered: Ints
) -> int:
    """Write to `rows` the stable ascending order of `packed` (each value's key number, below
    `keys`, is `value >> shift`) and to `ordered` the values in that order. Returns how many
    keys' rows had to be sorted after the counting sort."""
    n = packed.size
    start = np.zeros(keys + 1, dtype=np.int64)
    for i in range(n):
        start[(packed[i] >> shift) + 1] += 1
    for k in range(keys):
        start[k + 1] += start[k]
    cursor = start[:keys].copy()
    for i in range(n):
        value = packed[i]
        key = value >> shift
        at = cursor[key]
        cursor[key] = at + 1
        rows[at] = i
        ordered[at] = value
    # Keys ascend from one key's rows to the next's: a value below the one before it is out
    # of order inside its key's rows.
    sorted_keys = 0
    j = 1
    while j < n:
        if ordered[j] >= ordered[j - 1]:
            j += 1
            continue
        key = ordered[j] >> shift
        a, b = start[key], start[key + 1]
        if b - a <= _INSERTION_MAX:
            for m in range(a + 1, b):
                value, row = ordered[m], rows[m]
                p = m - 1
                while p >= a and ordered[p] > value:
                    ordered[p + 1] = ordered[p]
                    rows[p + 1] = rows[p]
                    p -= 1
                ordered[p + 1] = value
                rows[p + 1] = row
        else:
            order = np.argsort(ordered[a:b], kind="mergesort")
            ordered[a:b] = ordered[a:b][order]
            rows[a:b] = rows[a:b][order]
        sorted_keys += 1
        j = b + 1  # (the next key's first value is above this key's last)
    return sorted_keys


_compiled_stable_key_order = Compiled(_stable_key_order)


def stable_key_order(
    packed: Ints, shift: int, keys: int, *, compiled: bool = True
) -> tuple[Ints, Ints, int]:
    """(`np.argsort(packed, kind="stable")`, `packed` in that order, how many keys' rows were
    sorted after the counting sort) for non-negative `packed` whose values' key numbers,
    `value >> shift`, are below `keys`; `compiled=False` runs the same code as Python (tests)."""
    kernel: Callable[..., int] = _compiled_stable_key_order if compiled else _stable_key_order
    packed = np.ascontiguousarray(packed, dtype=np.int64)
    rows = np.empty(packed.size, dtype=np.int64)
    ordered = np.empty(packed.size, dtype=np.int64)
    sorted_keys = kernel(packed, shift, keys, rows, ordered)
    return rows, ordered, sorted_keys


def load_key_order() -> None:
    """Compile the sort now (or load it from its cache): the query service's warm-up."""
    stable_key_order(np.array([1, 0], dtype=np.int64), 0, 2)
