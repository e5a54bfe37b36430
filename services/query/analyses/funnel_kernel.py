"""The ordered funnel compiled: one pass over each person's sorted events finds every attempt's
steps and keeps the person's best attempt, the way ClickHouse's `windowFunnel` walks a person's
events once, instead of the NumPy passes over all attempts (funnel_orders.py) that write and
read every attempt's steps once per step.

Same rules as `OrderedFunnel` (docs/analytics.md, "Funnels"): every first-step event that may
start an attempt starts one; step k is the first event after step k-1's (after its whole
timestamp when step k repeats step k-1 exactly) satisfying it, at or before the attempt's
start plus the window; an exclusion event after the `from` step's timestamp and before the
`to` step's time (or, when the attempt never reached `to`, at or before its deadline) removes
the person; a person counts at the earliest attempt that got furthest. The NumPy strategy
stays as the reference the tests compare this with (tests/unit/test_funnel_chains.py).

Per person, the kernel first makes, for each step, the position of the next event satisfying
it from every position of the person's run (a backward pass: the run's events times the
steps, in a buffer the size of the longest run), so each attempt's step is one look-up; a
person's remaining attempts are skipped once one reached the last step and no exclusion is
left to check. Compiled on first use with Numba (jit.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from services.query.analyses.jit import Compiled

Ints = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]


def _ordered_best(  # pragma: no cover - run compiled; `ordered_best` runs it in Python in tests
    t: Ints,
    mask: Ints,
    xmask: Ints,
    same_key: Flags,
    starts: Flags,
    n: int,
    window_us: int,
    repeats: Flags,
    x_bit: Ints,
    x_from: Ints,
    x_to: Ints,
) -> tuple[Ints, Ints, Ints]:
    """Per person with an attempt and no excluded attempt, in stream order: the best attempt's
    first position, steps reached and step positions (-1 past `reached`)."""
    size = t.size
    # The persons' runs: [run_start[p], run_start[p + 1]).
    runs = 1
    for i in range(size - 1):
        if not same_key[i]:
            runs += 1
    run_start = np.empty(runs + 1, np.int64)
    run_start[0] = 0
    r = 1
    longest = 0
    for i in range(size - 1):
        if not same_key[i]:
            run_start[r] = i + 1
            longest = max(longest, i + 1 - run_start[r - 1])
            r += 1
    run_start[runs] = size
    longest = max(longest, size - run_start[runs - 1])
    exclusions = x_bit.size
    grouped = exclusions > 0
    for k in range(n):
        grouped |= repeats[k]
    # Per step (and exclusion): from each position of a run, the next one satisfying it
    # (`length`: none), positions relative to the run's start.
    next_step = np.empty((longest + 1, n), np.int64)
    next_x = np.empty((max(exclusions, 1), longest + 1), np.int64)
    group_end = np.empty(longest + 1, np.int64)
    firsts = np.empty(runs, np.int64)
    reached_out = np.empty(runs, np.int64)
    positions_out = np.full((runs, n), -1, np.int64)
    steps = np.empty(n, np.int64)
    kept = 0
    for p in range(runs):
        a, b = run_start[p], run_start[p + 1]
        length = b - a
        any_start = False
        for i in range(a, b):
            if starts[i] and (mask[i] & 1):
                any_start = True
                break
        if not any_start:
            continue
        # The last position of each position's (person, ts) group (for repeated steps and
        # exclusions only).
        if grouped:
            group_end[length - 1] = length - 1
            for i in range(length - 2, -1, -1):
                group_end[i] = group_end[i + 1] if t[a + i] == t[a + i + 1] else i
        # One backward pass for every step (position-major: a position's steps side by side).
        for k in range(1, n):
            next_step[length, k] = length
        for i in range(length - 1, -1, -1):
            bits = mask[a + i]
            for k in range(1, n):
                later = next_step[i + 1, k]
                next_step[i, k] = i if (bits >> k) & 1 else later
        for e in range(exclusions):
            bit = np.int64(1) << x_bit[e]
            next_x[e, length] = length
            for i in range(length - 1, -1, -1):
                next_x[e, i] = i if xmask[a + i] & bit else next_x[e, i + 1]
        best = 0
        best_first = -1
        excluded = False
        for i in range(length):
            if not (starts[a + i] and (mask[a + i] & 1)):
                continue
            deadline = t[a + i] + window_us
            steps[0] = i
            got = 1
            at = i
            for k in range(1, n):
                after = (group_end[at] if repeats[k] else at) + 1
                found = next_step[after, k]
                if found >= length or t[a + found] > deadline:
                    break
                steps[k] = found
                at = found
                got += 1
            for e in range(exclusions):
                if got < x_from[e]:
                    continue
                x = next_x[e, group_end[steps[x_from[e] - 1]] + 1]
                if x >= length:
                    continue
                if got >= x_to[e]:
                    hit = t[a + x] < t[a + steps[x_to[e] - 1]]
                else:
                    hit = t[a + x] <= deadline
                if hit:
                    excluded = True
                    break
            if excluded:
                break
            if got > best:
                best = got
                best_first = i
                for k in range(got):
                    positions_out[kept, k] = a + steps[k]
                for k in range(got, n):
                    positions_out[kept, k] = -1
                if got == n and exclusions == 0:
                    break  # no later attempt is better, and none can exclude the person
        if excluded:
            for k in range(n):
                positions_out[kept, k] = -1
            continue
        firsts[kept] = a + best_first
        reached_out[kept] = best
        kept += 1
    return firsts[:kept], reached_out[:kept], positions_out[:kept]


_compiled_ordered_best = Compiled(_ordered_best)


def load_funnel_kernel() -> None:
    """Compile the kernel now (or load it from its cache): the query service's warm-up, so
    the first funnel after a start does not wait for it."""
    one = np.zeros(1, dtype=np.int64)
    ordered_best(
        one,
        one + 1,
        one,
        np.zeros(0, dtype=bool),
        np.ones(1, dtype=bool),
        n=2,
        window_us=1,
        repeats=np.zeros(2, dtype=bool),
        exclusions=(),
    )


def ordered_best(
    t: Ints,
    mask: Ints,
    xmask: Ints,
    same_key: Flags,
    starts: Flags,
    *,
    n: int,
    window_us: int,
    repeats: Flags,
    exclusions: tuple[tuple[int, int, int], ...],
    compiled: bool = True,
) -> tuple[Ints, Ints, Ints]:
    """The ordered funnel's best attempt per person of a stream sorted by (person, ts, step
    rank, event id): `t`, `mask` (bit k: step k) and `xmask` (bit i: exclusion i) per
    position, `same_key[i]`: position i + 1 is of position i's person, `starts`: where an
    attempt may start (its first step is checked here), `repeats[k]`: step k repeats step k-1
    exactly, `exclusions`: (bit, from step, to step), steps 1-based. Returns (first position,
    reached, step positions) per person kept, in stream order; `compiled=False` runs the same
    code as Python (tests: its lines are then measured and checked)."""
    kernel: Callable[..., tuple[Ints, Ints, Ints]] = (
        _compiled_ordered_best if compiled else _ordered_best
    )
    x: Any = np.asarray(exclusions, dtype=np.int64).reshape(-1, 3)
    return kernel(
        np.ascontiguousarray(t, dtype=np.int64),
        np.ascontiguousarray(mask, dtype=np.int64),
        np.ascontiguousarray(xmask, dtype=np.int64),
        np.ascontiguousarray(same_key, dtype=np.bool_),
        np.ascontiguousarray(starts, dtype=np.bool_),
        n,
        window_us,
        np.ascontiguousarray(repeats, dtype=np.bool_),
        np.ascontiguousarray(x[:, 0]),
        np.ascontiguousarray(x[:, 1]),
        np.ascontiguousarray(x[:, 2]),
    )
