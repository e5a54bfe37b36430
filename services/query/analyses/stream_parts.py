"""A large event stream split into parts by person, each part's NumPy kernel (sort, attempts,
best attempt) run on a small thread pool, the parts' results merged back exactly.

A person's events all fall in one part (the part is the person's number modulo the parts) and
every analysis that splits this way decides per person, so the parts' persons are disjoint and
their union is the whole answer. NumPy and Arrow release the GIL in their sorts and gathers, so
two parts on two threads overlap; below `MIN_PART_EVENTS` the pool costs more than it saves.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from services.query.analyses.event_order import Ints

T = TypeVar("T")

# Events below which a stream is walked in one piece (measured: below it the pool's start and
# the merge cost more than the second thread saves).
MIN_PART_EVENTS = 50_000


def part_count(events: int, threads: int, min_events: int = MIN_PART_EVENTS) -> int:
    """How many parts a stream of `events` is walked in: one per thread when it is large."""
    return threads if threads > 1 and events >= min_events else 1


def person_parts(codes: Ints, parts: int) -> list[Ints]:
    """Per part, its rows (ascending): those whose person number is the part modulo `parts`."""
    # (A power of two's remainder is a mask: integer division costs several times more.)
    part_of = codes & (parts - 1) if parts & (parts - 1) == 0 else codes % parts
    return [np.flatnonzero(part_of == i) for i in range(parts)]


def walk_parts(parts: int, work: Callable[[int], T]) -> list[T]:
    """`work(part)` for every part, on `parts` threads (in this thread when one part); results
    in part order. The first exception raised by a part propagates."""
    if parts == 1:
        return [work(0)]
    with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="stream-part") as pool:
        return list(pool.map(work, range(parts)))
