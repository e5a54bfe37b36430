"""Person parts of an ordered stream (stream_parts.py): consecutive runs of persons, every
person's events in exactly one part, the parts side by side the whole stream, the split only
for large streams with more than one thread, results in part order."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from services.query.analyses.event_order import in_event_order
from services.query.analyses.stream_parts import (
    MIN_PART_EVENTS,
    part_count,
    person_parts,
    walk_parts,
)


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_parts_are_runs_of_whole_persons_that_make_up_the_stream(parts: int) -> None:
    rng = np.random.default_rng(parts)
    # One heavy person (key 4) holds more than a part's share.
    keys = np.concatenate([rng.integers(0, 12, 300), np.full(400, 4)])
    table = pa.table({"pid": keys, "t": rng.integers(0, 10**6, keys.size)})
    events = in_event_order(table, key="pid", ts="t", event_id=None)
    cut = person_parts(events, parts)
    assert len(cut) == parts
    assert np.concatenate([p.rows for p in cut]).tolist() == events.rows.tolist()
    assert np.concatenate([p.t for p in cut]).tolist() == events.t.tolist()
    owners: dict[int, int] = {}
    for i, part in enumerate(cut):
        assert part.same_key.size == max(part.rows.size - 1, 0)
        assert part.same_key.tolist() == (part.key[1:] == part.key[:-1]).tolist()
        for key in set(part.key.tolist()):
            assert owners.setdefault(key, i) == i  # a person in one part only
        # The part's rows are the table's: its persons' keys read back through them.
        assert table["pid"].take(pa.array(part.rows)).to_pylist() == [
            int(k) for k in np.sort(keys)[np.isin(np.sort(keys), part.key)]
        ]
    assert sorted(owners) == sorted(set(keys.tolist()))


def test_no_events_make_empty_parts() -> None:
    table = pa.table({"pid": pa.array([], pa.int64()), "t": pa.array([], pa.int64())})
    events = in_event_order(table, key="pid", ts="t", event_id=None)
    assert [p.rows.size for p in person_parts(events, 2)] == [0, 0]


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
