"""Person parts of a stream (stream_parts.py): every person's rows in exactly one part, the
split only for large streams with more than one thread, results in part order."""

from __future__ import annotations

import threading

import numpy as np

from services.query.analyses.stream_parts import (
    MIN_PART_EVENTS,
    part_count,
    person_parts,
    walk_parts,
)


def test_each_persons_rows_fall_in_one_part_and_every_row_in_a_part() -> None:
    codes = np.array([0, 3, 1, 0, 2, 3, 3, 5, 4, 1], dtype=np.int64)
    parts = person_parts(codes, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(codes.size))
    for part in parts:
        assert np.all(np.diff(part) > 0)  # rows ascending: the read order kept
    owner = {int(codes[row]): i for i, part in enumerate(parts) for row in part}
    for i, part in enumerate(parts):
        assert all(owner[int(codes[row])] == i for row in part)


def test_small_streams_and_one_thread_are_not_split() -> None:
    assert part_count(MIN_PART_EVENTS - 1, threads=2) == 1
    assert part_count(MIN_PART_EVENTS, threads=2) == 2
    assert part_count(10**7, threads=1) == 1
    assert part_count(5, threads=3, min_events=0) == 3


def test_parts_run_on_threads_and_come_back_in_part_order() -> None:
    names = walk_parts(3, lambda part: (part, threading.current_thread().name))
    assert [part for part, _ in names] == [0, 1, 2]
    assert all(name.startswith("stream-part") for _, name in names)
    assert walk_parts(1, lambda part: (part, threading.current_thread().name)) == [
        (0, threading.current_thread().name)
    ]
