"""The order funnels and paths walk a stream in: by (key, ts, [rank,] event id), where the key is
a person or a session id. Sorting on those strings costs DuckDB about a third of a paths query
(ids longer than 12 bytes are compared out of line), so DuckDB sorts on integers only, a 64-bit
hash of the key (the `h` column the query returns), the timestamp and the rank, and NumPy
settles what that leaves open:

- two keys with one hash could interleave their rows: adjacent rows of one hash with different
  keys show it, and the stream is then sorted on the strings instead (so rare it costs nothing);
- rows of one key with the same timestamp and rank are put in event-id order. Only those rows
  move, and only among themselves, so the key runs and timestamps are the table's as read:
  `rows` maps each position of the exact order to the table's row, for the other columns.

Keys come out grouped, not in string order; nothing downstream needs them sorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

Ints = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]

HASH = "h"  # the column holding hash(key), which the query sorts by first


@dataclass(frozen=True)
class EventOrder:
    """A stream in exact order: position i is row `rows[i]` of `table` (`rows` None: row i)."""

    table: pa.Table
    rows: Ints | None
    same_key: Flags  # position i + 1 has the key of position i (n - 1 values)

    def ints(self, column: str) -> Ints:
        values = np.asarray(self.table[column].to_numpy(), dtype=np.int64)
        return values if self.rows is None else values[self.rows]

    def flags(self, column: str) -> Flags:
        values = np.asarray(self.table[column].to_numpy(zero_copy_only=False), dtype=bool)
        return values if self.rows is None else values[self.rows]

    def take(self, column: str, positions: Ints) -> pa.ChunkedArray:
        """The column's values at these positions of the order."""
        rows = positions if self.rows is None else self.rows[positions]
        return self.table[column].take(pa.array(rows))


def in_event_order(
    table: pa.Table, *, key: str, ts: str, event_id: str, rank: Ints | None = None
) -> EventOrder:
    """`table`, sorted by DuckDB on (`HASH`, `ts`[, rank]), in the exact order (key, ts,
    rank, event id); `rank` is the rank's value per row (equal values: equal ranks)."""
    n = table.num_rows
    same_key = _same_as_previous(table[key])
    if n < 2:
        return EventOrder(table, None, same_key)
    hashes = np.asarray(table[HASH].to_numpy(), dtype=np.uint64)
    if np.any((hashes[1:] == hashes[:-1]) & ~same_key):
        table = _sorted_on_strings(table, key, ts, event_id, rank)
        same_key = _same_as_previous(table[key])
        return EventOrder(table, None, same_key)
    times = np.asarray(table[ts].to_numpy(), dtype=np.int64)
    tied = same_key & (times[1:] == times[:-1])
    if rank is not None:
        tied &= rank[1:] == rank[:-1]
    if not tied.any():
        return EventOrder(table, None, same_key)
    # The rows of tie groups: each tied pair's two rows; a group starts where a row is not
    # tied to the one before it.
    in_group = np.zeros(n, dtype=bool)
    in_group[:-1] |= tied
    in_group[1:] |= tied
    members = np.flatnonzero(in_group)
    starts = np.ones(members.size, dtype=bool)
    starts[1:] = ~tied[members[1:] - 1]
    settled = pc.sort_indices(
        pa.table({"group": np.cumsum(starts), "id": table[event_id].take(pa.array(members))}),
        sort_keys=[("group", "ascending"), ("id", "ascending")],
    )
    rows = np.arange(n, dtype=np.int64)
    rows[members] = members[np.asarray(settled.to_numpy(), dtype=np.int64)]
    return EventOrder(table, rows, same_key)


def _same_as_previous(keys: pa.ChunkedArray) -> Flags:
    n = len(keys)
    if n < 2:
        return np.zeros(0, dtype=bool)
    same = pc.fill_null(pc.equal(keys.slice(1), keys.slice(0, n - 1)), False)
    return np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)


def _sorted_on_strings(
    table: pa.Table, key: str, ts: str, event_id: str, rank: Ints | None
) -> pa.Table:
    columns = {key: table[key], ts: table[ts], event_id: table[event_id]}
    # DuckDB's ORDER BY puts NULLs last.
    names = [key, ts]
    if rank is not None:
        columns["rank"] = pa.array(rank)
        names.append("rank")
    names.append(event_id)
    terms = [(name, "ascending", "at_end") for name in names]
    order = pc.sort_indices(pa.table(columns), sort_keys=terms)
    return table.take(order)
