"""A large ordered event stream split into parts by person, each part's kernel (attempts, best
attempt) run on a small thread pool, the parts' results joined back exactly.

The stream is ordered once, whole (event_order.py: a counting sort by person, cheap next to
what comes after it), then cut into consecutive runs of persons of about equal size: a
person's events all fall in one part, every analysis that splits this way decides per person,
and the parts come in person order, so their results side by side are the whole answer. The
kernels release the GIL, so two parts on two threads overlap; below `MIN_PART_EVENTS` the
pool costs more than it saves.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from services.query.analyses.event_order import EventOrder

T = TypeVar("T")

# Events below which a stream is walked in one piece (measured: below it the pool's start and
# the merge cost more than the second thread saves).
MIN_PART_EVENTS = 50_000


def part_count(events: int, threads: int, min_events: int = MIN_PART_EVENTS) -> int:
    """How many parts a stream of `events` is walked in: one per thread when it is large."""
    return threads if threads > 1 and events >= min_events else 1


def person_parts(events: EventOrder, parts: int) -> list[EventOrder]:
    """`events` cut into `parts` consecutive runs of persons, each about as many events (a run
    may be empty when one person holds more than a part's share)."""
    n = events.key.size
    if n == 0:
        return [events] * parts
    # Each cut moves back to where its person's events start (the key numbers ascend along
    # the stream).
    targets = events.key[np.arange(1, parts) * n // parts]
    cuts = np.searchsorted(events.key, targets, side="left")
    bounds = [0, *(int(c) for c in cuts), n]
    return [events.part(bounds[i], bounds[i + 1]) for i in range(parts)]


def walk_parts(parts: int, work: Callable[[int], T]) -> list[T]:
    """`work(part)` for every part, on `parts` threads (in this thread when one part); results
    in part order. The first exception raised by a part propagates."""
    if parts == 1:
        return [work(0)]
    with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="stream-part") as pool:
        return list(pool.map(work, range(parts)))
