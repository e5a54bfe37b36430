"""Funnel attempts as vectorised NumPy passes over each person's events, sorted once by DuckDB
(person, ts, first step satisfied, event id), the way ClickHouse's `windowFunnel` scans a
person's events once instead of joining step tables.

Every step is found for all attempts at once: `next_with(k, positions)` is a binary search
into the sorted positions of step k's events, so a funnel of n steps costs n array passes
over the attempts, whatever the data. One strategy per order (`ordered`, `strict`,
`unordered`) over the shared `EventStream`; the semantics are docs/analytics.md's
("Funnels"), judged by tests/support/reference_analytics.py and the rule tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from services.query.analyses.event_order import EventOrder

Ints = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]


class EventStream:
    """One funnel's events, in the order (person, ts, step rank, event id): `mask` has bit k set
    when the event satisfies step k, `xmask` bit i when it satisfies exclusion i; `in_sequence`
    marks the events a strict funnel's "next event" walks over."""

    def __init__(self, events: EventOrder) -> None:
        self.events = events
        n = events.table.num_rows
        self.size = n
        self.t: Ints = events.ints("t")
        self.mask: Ints = events.ints("mask")
        self.xmask: Ints = events.ints("xmask")
        self.in_sequence: Flags = events.flags("in_sequence")
        # Dense person keys for this query: persons arrive grouped, so a key is the count of
        # person changes so far; the string ids are only read back for the persons kept.
        changed = np.ones(n, dtype=bool)
        changed[1:] = ~events.same_key
        self.person: Ints = np.cumsum(changed, dtype=np.int64) - 1
        # Where each (person, ts) group ends: a repeated identical step needs a later ts.
        new_group = changed.copy()
        if n > 1:
            new_group[1:] |= self.t[1:] != self.t[:-1]
        starts = np.flatnonzero(new_group)
        lengths = np.diff(np.append(starts, n))
        ends = starts + lengths - 1
        self.group_start: Ints = np.repeat(starts, lengths)
        self.group_end: Ints = np.repeat(ends, lengths)
        self._positions: dict[tuple[str, int], Ints] = {}

    def _with(self, column: str, bit: int) -> Ints:
        """Positions of the events with `bit` set in `column`, then `size` as a sentinel."""
        key = (column, bit)
        if key not in self._positions:
            values = self.mask if column == "mask" else self.xmask
            self._positions[key] = _with_sentinel(np.flatnonzero(values & (1 << bit)), self.size)
        return self._positions[key]

    def _next_in(self, positions: Ints, at: Ints, person: Ints) -> Ints:
        """The first of `positions` at or after `at` of the same person, else -1."""
        found = positions[np.searchsorted(positions, at)]
        ok = (found < self.size) & (self.person[np.minimum(found, self.size - 1)] == person)
        return np.where(ok, found, -1)

    def next_step(self, k: int, at: Ints, person: Ints) -> Ints:
        return self._next_in(self._with("mask", k), at, person)

    def next_exclusion(self, i: int, at: Ints, person: Ints) -> Ints:
        return self._next_in(self._with("xmask", i), at, person)

    def next_in_sequence(self, at: Ints, person: Ints) -> Ints:
        key = ("in_sequence", 0)
        if key not in self._positions:
            self._positions[key] = _with_sentinel(np.flatnonzero(self.in_sequence), self.size)
        return self._next_in(self._positions[key], at, person)


@dataclass
class Attempts:
    """One row per attempt: its first event's position, its person, how many steps it reached,
    each step's event position (-1 past `reached`) and whether an exclusion removes its person."""

    first: Ints
    person: Ints
    reached: Ints
    positions: Ints  # (attempts, n)
    times: Ints  # (attempts, n), ts in microseconds; meaningless past `reached`
    excluded: Flags


@dataclass(frozen=True)
class FunnelShape:
    """What the strategies need of a funnel: its size, window, which steps repeat the step
    before them exactly (or, unordered, an earlier identical or same-named step) and the
    exclusions as (bit, from_step, to_step), steps 1-based."""

    n: int
    window_us: int
    repeats_previous: tuple[bool, ...]
    identical_before: tuple[tuple[int, ...], ...]
    same_name_before: tuple[tuple[int, ...], ...]
    exclusions: tuple[tuple[int, int, int], ...]


class FunnelOrder:
    """A funnel order: where attempts start and how each next step is found."""

    def attempts(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> Attempts:
        raise NotImplementedError

    def _chain(
        self, stream: EventStream, shape: FunnelShape, first: Ints, strict: bool
    ) -> Attempts:
        """Steps 2..n after each attempt's first event, all attempts at once."""
        count = first.size
        person = stream.person[first]
        deadline = stream.t[first] + shape.window_us
        positions = np.full((count, shape.n), -1, dtype=np.int64)
        positions[:, 0] = first
        alive = np.ones(count, dtype=bool)
        at = first
        for k in range(1, shape.n):
            if strict:
                # The very next event of the sequence, which must satisfy step k.
                found = stream.next_in_sequence(at + 1, person)
                valid = found >= 0
                safe = np.maximum(found, 0)
                valid &= (stream.mask[safe] & (1 << k)) != 0
                if shape.repeats_previous[k]:
                    valid &= stream.t[safe] > stream.t[at]
            else:
                bound = (stream.group_end[at] if shape.repeats_previous[k] else at) + 1
                found = stream.next_step(k, bound, person)
                valid = found >= 0
                safe = np.maximum(found, 0)
            alive &= valid & (stream.t[safe] <= deadline)
            positions[alive, k] = found[alive]
            at = np.where(alive, found, at)
        reached = (positions >= 0).sum(axis=1).astype(np.int64)
        times = stream.t[np.maximum(positions, 0)]
        excluded = np.zeros(count, dtype=bool)
        for bit, from_step, to_step in shape.exclusions:
            began = reached >= from_step
            lo = positions[:, from_step - 1]
            after = stream.group_end[np.maximum(lo, 0)] + 1  # strictly later ts
            found = stream.next_exclusion(bit, after, person)
            hit = began & (found >= 0)
            x_t = stream.t[np.maximum(found, 0)]
            ended = reached >= to_step
            hit &= np.where(ended, x_t < times[:, to_step - 1], x_t <= deadline)
            excluded |= hit
        return Attempts(first, person, reached, positions, times, excluded)


class OrderedFunnel(FunnelOrder):
    """Step k is the first later event satisfying it, inside the window."""

    def attempts(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> Attempts:
        first = np.flatnonzero(starts & ((stream.mask & 1) != 0)).astype(np.int64)
        return self._chain(stream, shape, first, strict=False)


class StrictFunnel(FunnelOrder):
    """Step k must be the person's very next interactive event."""

    def attempts(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> Attempts:
        first = np.flatnonzero(starts & ((stream.mask & 1) != 0)).astype(np.int64)
        return self._chain(stream, shape, first, strict=True)


class UnorderedFunnel(FunnelOrder):
    """An attempt starts at each timestamp with any step's event; steps, in step order, take
    the first event from there not credited to an earlier step (an identical earlier step's
    event must be at a strictly earlier ts), credited when inside the window."""

    def attempts(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> Attempts:
        first_of_group = stream.group_start == np.arange(stream.size)
        first = np.flatnonzero(starts & first_of_group & (stream.mask != 0)).astype(np.int64)
        count = first.size
        person = stream.person[first]
        deadline = stream.t[first] + shape.window_us
        credited = np.full((count, shape.n), -1, dtype=np.int64)
        for k in range(shape.n):
            bound = first.copy()
            for j in shape.identical_before[k]:  # the latest credited one wins
                bound = np.where(credited[:, j] >= 0, stream.group_end[credited[:, j]] + 1, bound)
            found = stream.next_step(k, bound, person)
            for _ in shape.same_name_before[k]:
                taken = np.zeros(count, dtype=bool)
                for j in shape.same_name_before[k]:
                    taken |= (found >= 0) & (found == credited[:, j])
                found = np.where(taken, stream.next_step(k, found + 1, person), found)
            ok = (found >= 0) & (stream.t[np.maximum(found, 0)] <= deadline)
            credited[ok, k] = found[ok]
        reached = (credited >= 0).sum(axis=1).astype(np.int64)
        # Times of the credited steps in time order; the unreached come last.
        times = np.where(credited >= 0, stream.t[np.maximum(credited, 0)], np.iinfo(np.int64).max)
        times.sort(axis=1)
        excluded = np.zeros(count, dtype=bool)
        return Attempts(first, person, reached, credited, times, excluded)


ORDER_STRATEGIES: dict[str, FunnelOrder] = {
    "ordered": OrderedFunnel(),
    "strict": StrictFunnel(),
    "unordered": UnorderedFunnel(),
}


def best_attempts(stream: EventStream, shape: FunnelShape, attempts: Attempts) -> pa.Table:
    """One row per person not excluded by any attempt: (pid, reached, t1..tn, bd) of their
    best attempt, the earliest of those that got furthest; ts past `reached` are NULL."""
    excluded_persons = np.unique(attempts.person[attempts.excluded])
    keep = ~np.isin(attempts.person, excluded_persons)
    person = attempts.person[keep]
    reached = attempts.reached[keep]
    first = attempts.first[keep]
    times = attempts.times[keep]
    # Attempts come in stream order, so within a person the earliest comes first: a stable
    # sort on (person, -reached) leaves each person's best attempt at the head of its run.
    order = np.lexsort((first, -reached, person))
    person, reached, first, times = person[order], reached[order], first[order], times[order]
    head = np.ones(person.size, dtype=bool)
    head[1:] = person[1:] != person[:-1]
    rows = np.flatnonzero(head)
    picked = first[rows]
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "pid": stream.events.take("pid", picked),
        "reached": pa.array(reached[rows]),
    }
    for k in range(shape.n):
        columns[f"t{k + 1}"] = pa.array(times[rows, k], mask=reached[rows] <= k)
    columns["bd"] = stream.events.take("bd", picked)
    return pa.table(columns)


def _with_sentinel(positions: npt.NDArray[np.intp], size: int) -> Ints:
    return np.append(positions.astype(np.int64), np.int64(size))
