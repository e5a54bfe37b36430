"""Funnel attempts as vectorised NumPy passes over each person's events, sorted once by
(person, ts, first step satisfied, event id), the way ClickHouse's `windowFunnel` scans a
person's events once instead of joining step tables.

Every step is found for all attempts at once: `next_step(k, at, person)` is a binary search of
each attempt still going among the positions holding step k's events, or, while many attempts
go on, two gathers: from a running count of those events over the stream, then of that event's
position; so a funnel of n steps costs n array passes over the attempts. One strategy per
order (`ordered`, `strict`, `unordered`) over the shared `EventStream`; the semantics are
docs/analytics.md's ("Funnels"), judged by tests/support/reference_analytics.py and the rule
tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from services.query.analyses.event_order import EventOrder
from services.query.analyses.funnel_kernel import ordered_best

Ints = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]

# A step's look-ups below which each is a binary search among its hits' positions rather
# than a gather from a running count of them over the stream: one in this many events
# (measured at 3.1M events: a search ~25 ns a look-up, the running count ~0.6 ns an event).
RANK_MIN_SHARE = 32


class EventStream:
    """One funnel's events, in the order (person, ts, step rank, event id): `mask` has bit k set
    when the event satisfies step k, `xmask` bit i when it satisfies exclusion i; `in_sequence`
    marks the events a strict funnel's "next event" walks over."""

    def __init__(self, events: EventOrder) -> None:
        self.events = events
        n = events.rows.size
        self.size = n
        columns = events.table.column_names
        self.t: Ints = events.t
        self.mask: Ints = events.ints("mask")
        # Without exclusions (or outside a strict funnel) the query leaves these columns out.
        self.xmask: Ints = events.ints("xmask") if "xmask" in columns else np.zeros(n, np.int64)
        self.in_sequence: Flags = (
            events.flags("in_sequence") if "in_sequence" in columns else np.ones(n, dtype=bool)
        )
        # Dense person keys for this query, equal for one person's events (which come
        # together); the string ids are only read back for the persons kept.
        self.person: Ints = events.key
        self.persons = int(events.key.max()) + 1 if n else 0
        # Per step/exclusion/sequence: the hits' positions (and `size` after them), and how
        # many hits come before each position.
        self._positions: dict[tuple[str, int], Ints] = {}
        self._rank: dict[tuple[str, int], npt.NDArray[np.signedinteger[Any]]] = {}
        self._narrow_bits: dict[str, npt.NDArray[Any]] = {}
        self._key_ts_end: Ints | None = None
        self._group_start: Ints | None = None
        self._group_end: Ints | None = None

    def _groups(self) -> tuple[Ints, Ints]:
        """Per position, where its (person, ts) group starts and ends: a repeated identical
        step needs a later ts."""
        if self._group_start is None or self._group_end is None:
            n = self.size
            new_group = np.ones(n, dtype=bool)
            if n > 1:
                new_group[1:] = ~self.events.same_key | (self.t[1:] != self.t[:-1])
            starts = np.flatnonzero(new_group)
            lengths = np.diff(np.append(starts, n))
            self._group_start = np.repeat(starts, lengths)
            self._group_end = np.repeat(starts + lengths - 1, lengths)
        return self._group_start, self._group_end

    @property
    def group_start(self) -> Ints:
        return self._groups()[0]

    @property
    def group_end(self) -> Ints:
        return self._groups()[1]

    def _narrow(self, column: str) -> npt.NDArray[Any]:
        """`mask` or `xmask` in the narrowest unsigned type holding its bits: each step's
        hits then read an eighth of the memory (one pass, made once)."""
        narrow = self._narrow_bits.get(column)
        if narrow is None:
            bits: Ints = self.mask if column == "mask" else self.xmask
            width = int(bits.max()).bit_length() if bits.size else 0
            dtype = np.uint8 if width <= 8 else np.uint16 if width <= 16 else np.uint32
            narrow = self._narrow_bits[column] = bits.astype(dtype) if width <= 32 else bits
        return narrow

    def step_hits(self, k: int) -> Flags:
        """Whether each event satisfies step k."""
        return self._hits(("mask", k))

    def _hits(self, key: tuple[str, int]) -> Flags:
        column, bit = key
        if column == "in_sequence":
            return self.in_sequence
        return np.asarray((self._narrow(column) & (1 << bit)) != 0, dtype=bool)

    def _next_at(self, key: tuple[str, int], at: Ints) -> Ints:
        """Per attempt, the first position at or after `at` where `key`'s hits are (`size`:
        none), whoever's it is."""
        positions, rank = self._positions.get(key), self._rank.get(key)
        many = rank is not None or at.size * RANK_MIN_SHARE >= self.size
        if positions is None or (many and rank is None):
            hits = self._hits(key)
            if positions is None:
                positions = self._positions[key] = np.append(np.flatnonzero(hits), self.size)
            if many:
                # How many hits come before each position: one running sum (32-bit: half
                # the memory to write and read).
                dtype = np.int32 if self.size < 2**31 else np.int64
                rank = np.empty(self.size + 1, dtype)
                rank[0] = 0
                np.cumsum(hits.view(np.uint8), dtype=dtype, out=rank[1:])
                self._rank[key] = rank
        if rank is not None:
            # Many look-ups (or the count is made already): each is a gather of the count of
            # hits before it, then of that hit's position; a fraction of a binary search's
            # cost each. (`at` is at most `size`; `take` widens the 32-bit counts itself.)
            found: Ints = np.take(positions, rank[at])
            return found
        # Few: a binary search each among the hits' positions (`at` comes mostly ascending,
        # attempts being in stream order, and NumPy's search then starts from the last).
        return positions[np.searchsorted(positions[:-1], at)]

    def _next_in(self, key: tuple[str, int], at: Ints, person: Ints) -> Ints:
        """Per attempt, the first position at or after `at` where `key`'s hits are, if of the
        same person, else -1."""
        found = self._next_at(key, at)
        ok = (found < self.size) & (self.person[np.minimum(found, self.size - 1)] == person)
        return np.where(ok, found, -1)

    def within(self, found: Ints, bound: Ints) -> Flags:
        """Whether each position `found` (`size`: none) holds an event of the person at or
        before the time `bound` packs (`EventOrder.key_ts_bound`), `found` being at or after
        a position of that person: one gather, the packed (person, ts) never decreasing."""
        if self._key_ts_end is None:
            assert self.events.key_ts is not None
            self._key_ts_end = np.append(self.events.key_ts, np.iinfo(np.int64).max)
        return self._key_ts_end[found] <= bound

    def next_step(self, k: int, at: Ints, person: Ints) -> Ints:
        return self._next_in(("mask", k), at, person)

    def next_step_at(self, k: int, at: Ints) -> Ints:
        """`next_step` whoever's the event is (`size`: none)."""
        return self._next_at(("mask", k), at)

    def next_exclusion(self, i: int, at: Ints, person: Ints) -> Ints:
        return self._next_in(("xmask", i), at, person)

    def next_in_sequence(self, at: Ints, person: Ints) -> Ints:
        return self._next_in(("in_sequence", 0), at, person)


@dataclass
class Attempts:
    """One row per attempt: its first event's position, its person, how many steps it reached,
    each step's event position (-1 past `reached`) and whether an exclusion removes its person."""

    first: Ints
    person: Ints
    reached: Ints
    positions: Ints  # (attempts, n)
    # (attempts, n), ts in microseconds, meaningless past `reached`; None: each step's event's
    # ts (taken for the best attempts only, a gather over every attempt's steps costing more)
    times: Ints | None
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

    def best(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> BestAttempts:
        """Each person's best attempt (`best_attempts` of every attempt)."""
        return best_attempts(stream, shape, self.attempts(stream, shape, starts))

    def _chain(
        self, stream: EventStream, shape: FunnelShape, first: Ints, strict: bool
    ) -> Attempts:
        """Steps 2..n after each attempt's first event, all attempts at once."""
        count = first.size
        person = stream.person[first]
        deadline = stream.t[first] + shape.window_us
        # Step-major: each step's positions are contiguous. Each step looks only at the
        # attempts still going (`going`, with their position, person and deadline).
        positions = np.full((shape.n, count), -1, dtype=np.int64)
        positions[0] = first
        reached = np.ones(count, dtype=np.int64)
        going, at, whose, until = np.arange(count), first, person, deadline
        if stream.events.key_ts is not None and not strict:
            # (person, deadline) packed as the stream's (person, ts): a found event is the
            # attempt's and in its window when its packed value is at most this bound.
            bound = stream.events.key_ts_bound(person, deadline)
            for k in range(1, shape.n):
                after = (stream.group_end[at] if shape.repeats_previous[k] else at) + 1
                found = stream.next_step_at(k, after)
                valid = stream.within(found, bound)
                going, at, bound = going[valid], found[valid], bound[valid]
                positions[k, going] = at
                reached[going] = k + 1
            return self._excluded(stream, shape, first, person, deadline, reached, positions)
        for k in range(1, shape.n):
            if strict:
                # The very next event of the sequence, which must satisfy step k.
                found = stream.next_in_sequence(at + 1, whose)
                safe = np.maximum(found, 0)
                valid = (found >= 0) & ((stream.mask[safe] & (1 << k)) != 0)
                if shape.repeats_previous[k]:
                    valid &= stream.t[safe] > stream.t[at]
            else:
                bound = (stream.group_end[at] if shape.repeats_previous[k] else at) + 1
                found = stream.next_step(k, bound, whose)
                safe = np.maximum(found, 0)
                valid = found >= 0
            valid &= stream.t[safe] <= until
            going, at, whose, until = going[valid], found[valid], whose[valid], until[valid]
            positions[k, going] = at
            reached[going] = k + 1
        return self._excluded(stream, shape, first, person, deadline, reached, positions)

    def _excluded(
        self,
        stream: EventStream,
        shape: FunnelShape,
        first: Ints,
        person: Ints,
        deadline: Ints,
        reached: Ints,
        positions: Ints,
    ) -> Attempts:
        """The attempts with `positions` (step-major) and whether an exclusion removes each."""
        count = first.size
        positions = positions.T
        excluded = np.zeros(count, dtype=bool)
        for bit, from_step, to_step in shape.exclusions:
            began = reached >= from_step
            lo = positions[:, from_step - 1]
            after = stream.group_end[np.maximum(lo, 0)] + 1  # strictly later ts
            found = stream.next_exclusion(bit, after, person)
            hit = began & (found >= 0)
            x_t = stream.t[np.maximum(found, 0)]
            ended = reached >= to_step
            to_t = stream.t[np.maximum(positions[:, to_step - 1], 0)]
            hit &= np.where(ended, x_t < to_t, x_t <= deadline)
            excluded |= hit
        return Attempts(first, person, reached, positions, None, excluded)


class OrderedFunnel(FunnelOrder):
    """Step k is the first later event satisfying it, inside the window."""

    def attempts(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> Attempts:
        first = np.flatnonzero(starts & stream.step_hits(0)).astype(np.int64)
        return self._chain(stream, shape, first, strict=False)

    def best(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> BestAttempts:
        """The same persons and attempts as `best_attempts` of `attempts`, from the compiled
        kernel (funnel_kernel.py): one pass per person, not n passes over every attempt."""
        first, reached, positions = ordered_best(
            stream.t,
            stream.mask,
            stream.xmask,
            stream.events.same_key,
            starts,
            n=shape.n,
            window_us=shape.window_us,
            repeats=np.asarray(shape.repeats_previous, dtype=bool),
            exclusions=shape.exclusions,
        )
        return BestAttempts(
            events=stream.events,
            first=first,
            reached=reached,
            # (As `best_attempts`: a step not reached reads position 0's ts, never used.)
            times=stream.t[np.maximum(positions, 0)] if stream.size else positions,
            has_breakdown="bd" in stream.events.table.column_names,
        )


class StrictFunnel(FunnelOrder):
    """Step k must be the person's very next interactive event."""

    def attempts(self, stream: EventStream, shape: FunnelShape, starts: Flags) -> Attempts:
        first = np.flatnonzero(starts & stream.step_hits(0)).astype(np.int64)
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


@dataclass(frozen=True)
class BestAttempts:
    """One row per person not excluded by any attempt, at their best attempt (the earliest of
    those that got furthest): how many steps it reached and each step's ts (meaningless past
    `reached`); `first` is the attempt's first position in the stream."""

    events: EventOrder
    first: Ints
    reached: Ints
    times: Ints  # (persons, n)
    has_breakdown: bool

    def table(self) -> pa.Table:
        """(pid, reached, t1..tn, bd) with the ts past `reached` NULL."""
        columns: dict[str, pa.Array | pa.ChunkedArray] = {
            "pid": self.events.take("pid", self.first),
            "reached": pa.array(self.reached),
        }
        for k in range(self.times.shape[1]):
            columns[f"t{k + 1}"] = pa.array(self.times[:, k], mask=self.reached <= k)
        if self.has_breakdown:
            columns["bd"] = self.events.take("bd", self.first)
        else:
            columns["bd"] = pa.nulls(self.first.size, pa.string())
        return pa.table(columns)


def best_attempts(stream: EventStream, shape: FunnelShape, attempts: Attempts) -> BestAttempts:
    """Each person's best attempt, persons with an excluded attempt left out."""
    person, reached = attempts.person, attempts.reached
    keep: Ints | None = None
    if attempts.excluded.any():
        excluded = np.zeros(stream.persons, dtype=bool)
        excluded[person[attempts.excluded]] = True
        keep = np.flatnonzero(~excluded[person])
        person, reached = person[keep], reached[keep]
    # Attempts come in stream order: grouped by person, the earliest first. The best is the
    # first of a person's attempts that reached the person's furthest step: the smallest
    # (steps short of n, attempt number) per person, packed in one integer.
    count = person.size
    head = np.ones(count, dtype=bool)
    head[1:] = person[1:] != person[:-1]
    heads = np.flatnonzero(head)
    packed = (shape.n - reached) * count + np.arange(count)
    rows = np.minimum.reduceat(packed, heads) % count if heads.size else heads
    if keep is not None:
        rows = keep[rows]
    return BestAttempts(
        events=stream.events,
        first=attempts.first[rows],
        reached=attempts.reached[rows],
        times=(
            stream.t[np.maximum(attempts.positions[rows], 0)]
            if attempts.times is None
            else attempts.times[rows]
        ),
        has_breakdown="bd" in stream.events.table.column_names,
    )
