"""The order funnels and paths walk a stream in: by (key, ts, [rank,] event id), where the key is
a person or a session id. DuckDB hands the rows over unsorted (its ORDER BY, carrying string
payload, cost more than everything after it) and NumPy puts them in that order:

- string keys are numbered by a dictionary encoding of the strings (exact: no hash that two
  ids could share), so keys come out grouped in first-seen order, not in string order; nothing
  downstream needs them sorted; integer keys (persons' `person_key`) are their own numbers;
- one sort on a single int64 that packs (key number, ts offset within the stream, rank) when
  their bits fit in 63, else a lexicographic sort of the three;
- rows of one key with the same timestamp and rank are then put in event-id order. Only those
  rows move, and only among themselves. A caller that reads nothing of a row but the columns of
  `table` may leave the event ids out: tied rows equal in every column are interchangeable (no
  answer can tell their order apart), so only ties between rows that differ need the ids, and
  `TiesNeedEventIds` says when the table has such ties.

`rows` maps each position of the exact order to the table's row, for the other columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from libs.common.errors import StrataError
from services.query.analyses.key_order import stable_key_order

Ints = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]
# Integer keys spread wider than this (and than 4 per row) are not renumbered: the pass over
# the spread would cost more than the sort it may save.
_MAX_DENSE_SPREAD = 1 << 22


class TiesNeedEventIds(StrataError):
    """Rows tied on (key, ts, rank) differ in some column, and the table holds no event ids to
    put them in order: read the rows again with their event ids."""

    code = "ties_need_event_ids"


@dataclass(frozen=True)
class EventOrder:
    """A stream in exact order: position i is row `rows[i]` of `table`; `key[i]` numbers its
    key (equal numbers: equal key strings), `t[i]` is its timestamp and `same_key[i]` says
    position i + 1 has the key of position i (n - 1 values)."""

    table: pa.Table
    rows: Ints
    key: Ints
    t: Ints
    same_key: Flags
    # When (key number, ts) fit 62 bits: `key_ts[i]` packs position i's key number above
    # `time_bits` bits of its ts offset from `t0`, so it never decreases along the stream and
    # one comparison with `key_ts_bound` tells a later position of the same key at or before
    # a time. None when the order came from a sort of separate columns.
    key_ts: Ints | None = None
    time_bits: int = 0
    t0: int = 0

    def key_ts_bound(self, key: Ints, t: Ints) -> Ints:
        """Per (key number, ts): the largest `key_ts` of that key at or before that ts (`t` at
        or after the stream's first ts); `key_ts` must exist."""
        top = (1 << self.time_bits) - 1
        return (key << self.time_bits) | np.minimum(t - self.t0, top)

    def part(self, begin: int, end: int) -> EventOrder:
        """Positions [begin, end) as a stream of their own (views, no copy): `begin` and `end`
        must fall where the key changes, so each key's events stay together. Positions are
        then numbered from `begin`; rows still name rows of `table`, and key numbers stay the
        whole stream's."""
        return EventOrder(
            self.table,
            self.rows[begin:end],
            self.key[begin:end],
            self.t[begin:end],
            self.same_key[begin : max(end - 1, begin)],
            None if self.key_ts is None else self.key_ts[begin:end],
            self.time_bits,
            self.t0,
        )

    def ints(self, column: str) -> Ints:
        # Gathered in the column's own width, then widened: a narrow column (the funnels'
        # one-byte masks) is gathered from an eighth of the memory.
        values = np.asarray(self.table[column].to_numpy())
        return np.take(values, self.rows).astype(np.int64, copy=False)

    def flags(self, column: str) -> Flags:
        values = np.asarray(self.table[column].to_numpy(zero_copy_only=False), dtype=bool)
        return values[self.rows]

    def take(self, column: str, positions: Ints) -> pa.ChunkedArray:
        """The column's values at these positions of the order."""
        return self.table[column].take(pa.array(self.rows[positions]))


def key_codes(keys: pa.ChunkedArray) -> Ints:
    """Small non-negative numbers for `keys`, equal for equal keys: for strings a dictionary
    encoding (NULL is one key), for integer keys (integer person keys, no NULL) their rank
    among the keys present (or, when they are spread very wide, the keys less the smallest)."""
    if pa.types.is_integer(keys.type):
        values = np.asarray(keys.to_numpy(), dtype=np.int64)
        if values.size == 0:
            return values
        offsets = values - values.min()
        spread = int(offsets.max()) + 1
        if spread > _MAX_DENSE_SPREAD and spread > 4 * values.size:
            return np.asarray(offsets, dtype=np.int64)
        # A key's number is how many keys present are below it (one pass over the spread):
        # the fewest bits for the packed sort, as the strings' dictionary gives.
        present = np.zeros(spread, dtype=bool)
        present[offsets] = True
        # (Numbered from 0 over the spread, then one gather per row: no pass over the rows
        # to widen or shift them.)
        numbers: Ints = np.cumsum(present, dtype=np.int64)
        numbers -= 1
        codes: Ints = np.take(numbers, offsets)
        return codes
    # One chunk first: encoding the chunks one by one and combining them costs more.
    encoded = pc.dictionary_encode(keys.combine_chunks(), null_encoding="encode")
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def bool_values(flags: pa.Array) -> Flags:
    """A boolean Arrow array without NULLs as a NumPy array: its bits unpacked in one pass
    (`to_numpy` converts them one by one)."""
    n = len(flags)
    if n == 0:
        return np.zeros(0, dtype=bool)
    bits = np.frombuffer(flags.buffers()[1], dtype=np.uint8)
    first = flags.offset
    unpacked = np.unpackbits(bits, count=first + n, bitorder="little")
    return unpacked[first:].view(bool)


def run_key_codes(keys: pa.ChunkedArray, hashes: pa.ChunkedArray) -> Ints:
    """`key_codes` of string keys whose rows mostly come in runs of equal keys, given each
    row's 64-bit hash of its key: the same numbers (first-seen order), but only the runs'
    hashes are grouped, by a sort of those few whose hash shares a bucket with another run's,
    where a dictionary encoding would hash every row's string into a table as large as the
    keys are many. Exact: runs are found by
    comparing the strings, and keys of one hash are compared too (any two that differ, a true
    collision, and the dictionary encoding numbers them instead)."""
    if hashes.null_count or keys.null_count or len(keys) == 0:
        return key_codes(keys)
    ids = keys.combine_chunks()
    n = len(ids)
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    starts[1:] = bool_values(pc.not_equal(ids[1:], ids[:-1]))
    heads = np.flatnonzero(starts)
    hashed = np.asarray(hashes.to_numpy(), dtype=np.uint64)[heads]
    # Only runs whose hash shares a bucket (its top bits, ~4 buckets per run) with another
    # run's can share a key or a hash: only those are sorted; the rest lead themselves.
    bits = min(max(1, (4 * heads.size - 1).bit_length()), 32)
    bucket = (hashed >> np.uint64(64 - bits)).astype(np.int64)
    run = np.arange(heads.size, dtype=np.int32)
    # The last run written to a bucket owns it: any other run there shares it, and so does
    # the owner (cheaper than counting per bucket, whose int64 counters outgrow the caches).
    owner = np.empty(1 << bits, dtype=np.int32)
    owner[bucket] = run
    owners = owner[bucket]
    shares = owners != run
    shares[owners[shares]] = True
    shared_runs = np.flatnonzero(shares)
    order = shared_runs[np.argsort(hashed[shared_runs])]
    ordered = hashed[order]
    # Each run's first run of the same key (by hash, checked on the strings).
    leader = np.arange(heads.size, dtype=np.int64)
    again = np.zeros(order.size, dtype=bool)
    again[1:] = ordered[1:] == ordered[:-1]
    if again.any():
        group = np.cumsum(~again) - 1
        first_run = np.minimum.reduceat(order, np.flatnonzero(~again))
        shared = again.copy()
        shared[:-1] |= again[1:]
        at = np.flatnonzero(shared)
        runs, leaders = order[at], first_run[group[at]]
        same = pc.equal(ids.take(pa.array(heads[runs])), ids.take(pa.array(heads[leaders])))
        if not pc.all(same).as_py():
            return key_codes(keys)
        leader[runs] = leaders
    # Keys numbered in the order their first run comes, as the dictionary encoding does.
    numbers = np.cumsum(leader == np.arange(heads.size), dtype=np.int64) - 1
    return np.repeat(numbers[leader], np.diff(heads, append=n))


def in_event_order(
    table: pa.Table,
    *,
    key: str,
    ts: str,
    event_id: str | None,
    rank: Ints | None = None,
    codes: Ints | None = None,
    tie_row: str | None = None,
    tie_run: str | None = None,
) -> EventOrder:
    """The rows of `table`, in any order, in the exact order (key, ts, rank, event id); `rank`
    is the rank's value per row (small non-negative integers, equal values: equal ranks);
    `codes`, when given, the key's numbers per row as `key_codes` makes them. Without
    `event_id` (None), tied rows equal in every column of `table` keep the order they came in,
    and ties between rows that differ raise `TiesNeedEventIds`.

    With `tie_row` (the scan's `tie_row`: file number << 32 | row in a day file claiming the
    tie order, else NULL) the `event_id` column may be NULL where `tie_row` is not (or be
    left out, None, when every row has a position: the ids are then all missing), and
    `tie_run` names the rows' stored person key: tied rows all of one file and one stored key
    lie in event-id order in that file, so their positions order them; tied rows all with ids
    are ordered by the ids; any other tie (rows of two files, two stored keys, or a file and
    PostgreSQL) raises `TiesNeedEventIds`: read the rows again with every event id."""
    codes = key_codes(table[key]) if codes is None else codes
    times = np.asarray(table[ts].to_numpy(), dtype=np.int64)
    n = times.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return EventOrder(table, empty, empty, empty, np.zeros(0, dtype=bool))
    t0 = int(times.min())
    offsets = times - t0
    key_bits = int(codes.max()).bit_length()
    time_bits = int(offsets.max()).bit_length()
    rank_bits = int(rank.max()).bit_length() if rank is not None else 0
    # Ranks in the packed value when they fit; else only rows tied on (key, ts) are put in
    # rank order afterwards (such ties are few: 200k persons' keys and 120 days of
    # microseconds take 62 bits, and sorting three keys instead costs about three times more).
    ranked = rank is not None and key_bits + time_bits + rank_bits <= 63
    if not ranked:
        rank_bits = 0
    if key_bits + time_bits <= 63:
        # One int64 per row holds (key, ts[, rank]): one sort, and the sorted values give the
        # keys, times and ties without gathering the columns again.
        packed = (codes << (time_bits + rank_bits)) | (offsets << rank_bits)
        if ranked:
            assert rank is not None
            packed |= rank
        # Stable: a counting sort by key number, then each key's rows sorted only where they
        # are out of order (key_order.py): rows come as read, where day files already hold a
        # key's rows together in time order (`SORT_KEYS`). It gives the sorted values too.
        rows, packed, _ = stable_key_order(packed, time_bits + rank_bits, int(codes.max()) + 1)
        key_ts = packed >> rank_bits if rank_bits else packed
        codes = key_ts >> time_bits
        times = (key_ts & ((1 << time_bits) - 1)) + t0
        same_key = codes[1:] == codes[:-1]
        tied = packed[1:] == packed[:-1]
        if rank is not None and not ranked and tied.any():
            tied = _rank_ties(rows, tied, rank)
        # (Tied rows moved below share their key and ts: `key_ts` stays as sorted.)
        # (Below 63 bits, so no bound reaches the largest int64, which callers may use as a
        # sentinel past the end.)
        packing: tuple[Ints | None, int, int] = (
            (key_ts, time_bits, t0) if key_bits + time_bits < 63 else (None, 0, 0)
        )
    else:
        columns = (times, codes) if rank is None else (rank, times, codes)
        rows = np.lexsort(columns).astype(np.int64, copy=False)
        codes, times = codes[rows], times[rows]
        same_key = codes[1:] == codes[:-1]
        tied = same_key & (times[1:] == times[:-1])
        if rank is not None:
            ranks = rank[rows]
            tied &= ranks[1:] == ranks[:-1]
        packing = (None, 0, 0)
    if tied.any():
        if event_id is None and tie_row is None:
            # Equal tied neighbours make equal groups: their order cannot change any answer.
            pairs = np.flatnonzero(tied)
            if not _interchangeable(table, rows[pairs], rows[pairs + 1]):
                raise TiesNeedEventIds
            return EventOrder(table, rows, codes, times, same_key, *packing)
        # The rows of tie groups: each tied pair's two rows; a group starts where a row is
        # not tied to the one before it.
        in_group = np.zeros(n, dtype=bool)
        in_group[:-1] |= tied
        in_group[1:] |= tied
        members = np.flatnonzero(in_group)
        starts = np.ones(members.size, dtype=bool)
        starts[1:] = ~tied[members[1:] - 1]
        group = np.cumsum(starts)
        taken = pa.array(rows[members])
        # Without an id column (positions only), every id is missing: a group not ordered
        # by position needs the ids read.
        ids = (
            table[event_id].take(taken)
            if event_id is not None
            else pa.nulls(len(taken), pa.string())
        )
        if tie_row is not None:
            by_position, position = _position_groups(table, taken, starts, group, tie_row, tie_run)
            if by_position.any():
                has_id = ids.is_valid().to_numpy(zero_copy_only=False)
                if not (has_id | by_position).all():
                    raise TiesNeedEventIds
                # These groups by position.
                at = np.flatnonzero(by_position)
                moved = members[at[np.lexsort((position[at], group[at]))]]
                rows[members[at]] = rows[moved]
                # The others by id, below.
                rest = np.flatnonzero(~by_position)
                members, group, ids = members[rest], group[rest], ids.take(pa.array(rest))
            elif ids.null_count:
                raise TiesNeedEventIds
        settled = pc.sort_indices(
            pa.table({"group": group, "id": ids}),
            sort_keys=[("group", "ascending"), ("id", "ascending")],
        )
        rows[members] = rows[members[np.asarray(settled.to_numpy(), dtype=np.int64)]]
    return EventOrder(table, rows, codes, times, same_key, *packing)


def _position_groups(
    table: pa.Table, taken: pa.Array, starts: Flags, group: Ints, tie_row: str, tie_run: str | None
) -> tuple[Flags, Ints]:
    """Per member of the tie groups (`taken`: their rows; `starts`: where each group starts,
    `group`: its number from 1), whether its group is ordered by position (every member has
    one, of the group's first member's file, with its stored key: `tie_run`), and the
    members' positions."""
    missing = np.iinfo(np.int64).min
    filled = pc.fill_null(table[tie_row].take(taken), missing)
    position = np.asarray(filled.to_numpy(), dtype=np.int64)
    heads = np.flatnonzero(starts)
    head = heads[group - 1]
    ok = (position != missing) & (position >> 32 == position[head] >> 32)
    if tie_run is not None:
        run = table[tie_run].take(taken)
        same = pc.equal(run, run.take(pa.array(head)))
        both_null = pc.and_(run.is_null(), run.take(pa.array(head)).is_null())
        ok &= pc.or_(pc.fill_null(same, False), both_null).to_numpy(zero_copy_only=False)
    whole = np.logical_and.reduceat(ok, heads)
    return np.repeat(whole, np.diff(heads, append=ok.size)), position


def _rank_ties(rows: Ints, tied: Flags, rank: Ints) -> Flags:
    """Put the rows tied on (key, ts) in rank order among themselves (in place, stable), and
    say which neighbours are still tied, on the rank too."""
    in_group = np.zeros(rows.size, dtype=bool)
    in_group[:-1] |= tied
    in_group[1:] |= tied
    members = np.flatnonzero(in_group)
    starts = np.ones(members.size, dtype=bool)
    starts[1:] = ~tied[members[1:] - 1]
    order = np.lexsort((rank[rows[members]], np.cumsum(starts)))
    rows[members] = rows[members[order]]
    pairs = np.flatnonzero(tied)
    still = np.zeros_like(tied)
    still[pairs] = rank[rows[pairs]] == rank[rows[pairs + 1]]
    return still


def _interchangeable(table: pa.Table, first: Ints, second: Ints) -> bool:
    """Rows `first[i]` and `second[i]` are equal in every column of `table` (NULL equal to
    NULL), for every i."""
    a_rows, b_rows = pa.array(first), pa.array(second)
    for column in table.itercolumns():
        a, b = column.take(a_rows), column.take(b_rows)
        same = pc.fill_null(pc.equal(a, b), False)
        same = pc.or_(same, pc.and_(pc.is_null(a), pc.is_null(b)))
        if not pc.all(same).as_py():
            return False
    return True
