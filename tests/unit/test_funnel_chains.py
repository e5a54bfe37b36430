"""The funnel kernels (services/query/analyses/funnel_orders.py, and the compiled ordered one
of funnel_kernel.py) against a plain walk of each attempt over random streams: every
attempt's reached step, step positions and exclusion, and every person's best attempt, with
ties, repeated identical steps, exclusions and windows, each step's events looked up by a
running count of them or by binary searches."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from services.query.analyses import funnel_kernel, funnel_orders
from services.query.analyses.event_order import in_event_order
from services.query.analyses.funnel_orders import (
    ORDER_STRATEGIES,
    Attempts,
    BestAttempts,
    EventStream,
    FunnelShape,
    best_attempts,
)
from services.query.analyses.funnels import first_step


def _stream(rng: random.Random, n: int, repeats: tuple[bool, ...]) -> EventStream:
    """A few persons' events at a few distinct times (many ties), each satisfying random steps
    (a step repeating the one before it exactly is satisfied by the same events) and
    exclusions."""
    rows = []
    for person in range(rng.randint(1, 6)):
        for i in range(rng.randint(0, 40)):
            mask = 0
            for k in range(n):
                hit = (mask >> (k - 1)) & 1 if repeats[k] else int(rng.random() < 0.35)
                mask |= hit << k
            xmask = int(rng.random() < 0.1) | int(rng.random() < 0.1) << 1
            rows.append((f"p{person}", rng.randint(0, 30) * 10, mask, xmask, f"e{person}-{i}"))
    rng.shuffle(rows)
    table = pa.table(
        {
            "pid": pa.array([r[0] for r in rows], pa.string()),
            "t": pa.array([r[1] for r in rows], pa.int64()),
            "mask": pa.array([r[2] for r in rows], pa.int64()),
            "xmask": pa.array([r[3] for r in rows], pa.int64()),
            "eid": pa.array([r[4] for r in rows], pa.string()),
        }
    )
    rank = first_step(np.asarray(table["mask"].to_numpy(), dtype=np.int64), n)
    return EventStream(in_event_order(table, key="pid", ts="t", event_id="eid", rank=rank))


def _walked(stream: EventStream, shape: FunnelShape, starts: np.ndarray) -> list[tuple]:
    """Per attempt, (first, reached, positions, excluded), one attempt at a time: step k is
    the person's first event after step k-1's (at a later ts when it repeats it exactly)
    satisfying it, inside the window; an exclusion event strictly after the `from_step`
    event's ts and before the `to_step` event (or up to the window's end when not reached)."""
    size, t, mask, xmask, person = stream.size, stream.t, stream.mask, stream.xmask, stream.person

    def next_hit(bits: np.ndarray, bit: int, after: int, who: int) -> int:
        for j in range(after, size):
            if person[j] != who:
                return -1
            if bits[j] >> bit & 1:
                return j
        return -1

    def group_end(i: int) -> int:
        j = i
        while j + 1 < size and person[j + 1] == person[i] and t[j + 1] == t[i]:
            j += 1
        return j

    out = []
    for first in range(size):
        if not (starts[first] and mask[first] & 1):
            continue
        who, deadline = int(person[first]), int(t[first]) + shape.window_us
        positions = [first]
        for k in range(1, shape.n):
            at = positions[-1]
            after = (group_end(at) if shape.repeats_previous[k] else at) + 1
            found = next_hit(mask, k, after, who)
            if found < 0 or t[found] > deadline:
                break
            positions.append(found)
        reached = len(positions)
        excluded = False
        for bit, from_step, to_step in shape.exclusions:
            if reached < from_step:
                continue
            found = next_hit(xmask, bit, group_end(positions[from_step - 1]) + 1, who)
            if found < 0:
                continue
            if reached >= to_step:
                excluded |= bool(t[found] < t[positions[to_step - 1]])
            else:
                excluded |= bool(t[found] <= deadline)
        out.append((first, reached, positions + [-1] * (shape.n - reached), excluded))
    return out


def _rows(attempts: Attempts) -> list[tuple]:
    positions = attempts.positions
    return [
        (int(f), int(r), [int(p) for p in ps], bool(x))
        for f, r, ps, x in zip(
            attempts.first, attempts.reached, positions, attempts.excluded, strict=True
        )
    ]


@pytest.mark.parametrize("share", [1, 10**9], ids=["counted", "searched"])
@pytest.mark.parametrize("order", ["ordered", "strict"])
@pytest.mark.parametrize("seed", range(60))
def test_attempts_match_a_walk_of_each_attempt(
    seed: int, order: str, share: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each step's look-ups by a running count of its events, or by binary searches.
    monkeypatch.setattr(funnel_orders, "RANK_MIN_SHARE", share)
    shape, stream, starts = _random_funnel(random.Random(seed))
    attempts = ORDER_STRATEGIES[order].attempts(stream, shape, starts)
    if order == "ordered":
        assert _rows(attempts) == _walked(stream, shape, starts)
    best = best_attempts(stream, shape, attempts)
    assert _best_rows(stream, best) == _expected_best(stream, _rows(attempts), attempts.person)


def _random_funnel(rng: random.Random) -> tuple[FunnelShape, EventStream, np.ndarray]:
    n = rng.choice([2, 3, 4, 5, 10])
    repeats = (False, *(rng.random() < 0.3 for _ in range(n - 1)))
    exclusions = tuple(
        (bit, f, rng.randint(f + 1, n))
        for bit in range(2)
        if rng.random() < 0.6
        for f in [rng.randint(1, n - 1)]
    )
    shape = FunnelShape(
        n=n,
        window_us=rng.choice([0, 20, 60, 150, 400]),
        repeats_previous=repeats,
        identical_before=tuple(() for _ in range(n)),
        same_name_before=tuple(() for _ in range(n)),
        exclusions=exclusions,
    )
    stream = _stream(rng, n, repeats)
    starts = np.asarray([rng.random() < 0.8 for _ in range(stream.size)], dtype=bool)
    return shape, stream, starts


def _expected_best(
    stream: EventStream, rows: list[tuple], persons: np.ndarray
) -> dict[int, tuple[int, int, list[int]]]:
    """Per person without an excluded attempt: the earliest attempt that got furthest, as
    (first, reached, each reached step's ts)."""
    excluded_persons = {int(persons[i]) for i, row in enumerate(rows) if row[3]}
    expected: dict[int, tuple[int, int, list[int]]] = {}
    for i, (first, reached, positions, _) in enumerate(rows):
        who = int(persons[i])
        if who not in excluded_persons and (who not in expected or reached > expected[who][1]):
            expected[who] = (first, reached, [int(stream.t[p]) for p in positions[:reached]])
    return expected


def _best_rows(stream: EventStream, best: BestAttempts) -> dict[int, tuple[int, int, list[int]]]:
    return {
        int(stream.person[f]): (int(f), int(r), [int(x) for x in ts[:r]])
        for f, r, ts in zip(best.first, best.reached, best.times, strict=True)
    }


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("seed", range(60))
def test_compiled_ordered_best_matches_a_walk_of_each_attempt(
    seed: int, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel compiled, and the same code run as Python (its lines measured).
    if not compiled:
        kernel = funnel_kernel.ordered_best
        monkeypatch.setattr(
            funnel_orders, "ordered_best", lambda *a, **k: kernel(*a, **k, compiled=False)
        )
    shape, stream, starts = _random_funnel(random.Random(seed))
    walked = _walked(stream, shape, starts)
    persons = stream.person[[row[0] for row in walked]] if walked else np.zeros(0, np.int64)
    best = ORDER_STRATEGIES["ordered"].best(stream, shape, starts)
    assert _best_rows(stream, best) == _expected_best(stream, walked, persons)


@pytest.mark.parametrize("seed", range(20))
def test_next_step_by_search_and_by_running_count_agree(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Few look-ups search the hits' positions, many gather from a running count of them.
    rng = random.Random(seed)
    stream = _stream(rng, 3, (False, False, False))
    at = np.asarray(sorted(rng.randint(0, stream.size) for _ in range(8)), dtype=np.int64)
    found = {}
    for share in (1, 10**9):
        monkeypatch.setattr(funnel_orders, "RANK_MIN_SHARE", share)
        fresh = EventStream(stream.events)
        found[share] = [fresh.next_step_at(k, at).tolist() for k in range(3)]
    size, mask = stream.size, stream.mask
    expected = [
        [next((j for j in range(a, size) if mask[j] >> k & 1), size) for a in at] for k in range(3)
    ]
    assert found[1] == found[10**9] == expected
