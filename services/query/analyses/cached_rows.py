"""A funnel's events read straight from the decoded-column cache's tables (services/query/
column_cache.py) with NumPy, without DuckDB, when every row of the scan is there.

DuckDB's read of the cached tables (a scan of each row's name, path, ts and bot flag, the
step masks' CASE, the person keys) cost ~170 ms of CPU for the 120-day benchmark funnel at
scale 1 and handed over every row of the steps' event names, which NumPy then filtered again
by mask. Here each table's rows cost a few gathers from small look-up tables:

- the step and exclusion masks are computed once per distinct (event name, page path) of the
  tables, by DuckDB, with the very SQL the stream's query uses (`FunnelQuery.mask_sql`), so
  their semantics are SQL's; each row then reads its mask from a table indexed by its name's
  and path's dictionary codes;
- only rows inside the range, not bots (unless asked) and marked by a step or an exclusion
  are kept, and only their person keys and times are gathered.

The stream comes out as the query's would once its persons are resolved (`pid`, `t`, `mask`,
`xmask` when there are exclusions), in another row order, which `in_event_order` makes exact
anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from services.query.analyses.event_order import bool_values
from services.query.analyses.stream_parts import MIN_PART_EVENTS, walk_parts
from services.query.column_cache import CachedRows

Ints = npt.NDArray[np.int64]

# Distinct (event name, path) pairs whose masks DuckDB computes at most; beyond that (a site
# with very many page paths and path conditions) the stream's query reads the rows instead.
MAX_MASK_PAIRS = 1_000_000


def _dictionary(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """One dictionary-encoded chunk of a cached text column (encoded here if stored plain)."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(array, pa.DictionaryArray):
        return array
    return pc.dictionary_encode(array)


def _codes(array: pa.DictionaryArray, nulls_to: int) -> Ints:
    """The dictionary indices as int64, NULL as `nulls_to`."""
    indices = array.indices
    width = np.dtype(indices.type.to_pandas_dtype())
    raw = np.frombuffer(indices.buffers()[1], dtype=width, count=indices.offset + len(indices))
    codes = raw[indices.offset :].astype(np.int64)
    if indices.null_count:
        # (The values under NULL are unspecified: replaced.)
        codes[~bool_values(indices.is_valid())] = nulls_to
    return codes


def _instant_us(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=value.tzinfo)
    return delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds


def funnel_rows(
    con: duckdb.DuckDBPyConnection,
    rows: CachedRows,
    *,
    start: datetime,
    end: datetime,
    include_bots: bool,
    names: Sequence[str],
    uses_path: bool,
    masks_sql: str,
    params: Sequence[object],
    resolve: Callable[[Ints, Ints], Ints],
    threads: int = 1,
    min_rows: int = MIN_PART_EVENTS,
) -> pa.Table | None:
    """The rows of `rows.tables` in [start, end) (and the scan's bounds), bots left out unless
    both allow them, whose event name is among `names` and whose masks (`masks_sql`: a SELECT
    list giving `mask` and maybe `xmask` over `e.name` and, with `uses_path`, `e.path`, with
    `params`) are not all zero: (pid, t, mask[, xmask]), `pid` the person's key as
    `resolve(alias key, stored person key)` gives it, the tables read on up to `threads`
    threads when they hold `min_rows` rows or more. None when there are too many distinct
    paths to compute the masks per pair."""
    tables = rows.tables
    lo = _instant_us(max(start, rows.start))
    hi = _instant_us(min(end, rows.end))
    keep_bots = include_bots and rows.include_bots
    wanted = pa.array(sorted(set(names)), pa.string())
    # The paths of every table, once: the masks are computed per (name, path) pair.
    if uses_path:
        dictionaries = [_dictionary(t["path"]).dictionary for t in tables]
        paths = pc.unique(pa.concat_arrays(dictionaries)) if dictionaries else wanted[:0]
        if len(wanted) * (len(paths) + 1) > MAX_MASK_PAIRS:
            return None
    else:
        paths = pa.array([], pa.string())
    width = len(paths) + 1  # a path's number, NULL last
    # The look-up's rows: a block of `width` per name of `wanted` (a path each, NULL last),
    # after a first block of zeros for the names no step or exclusion names.
    count = len(wanted) * width
    pairs = pa.table(
        {
            "i": pa.array(np.arange(width, width + count, dtype=np.int64)),
            "name": pa.array(np.repeat(wanted.to_numpy(zero_copy_only=False), width), pa.string()),
            "path": pa.concat_arrays([paths, pa.nulls(1, pa.string())] * len(wanted))
            if len(wanted)
            else pa.array([], pa.string()),
        }
    )
    con.register("strata_funnel_pairs", pairs)
    try:
        looked_up = con.sql(
            f"SELECT e.i, {masks_sql} FROM strata_funnel_pairs AS e", params=list(params)
        ).to_arrow_table()
    finally:
        con.unregister("strata_funnel_pairs")
    columns = [c for c in looked_up.column_names if c != "i"]
    at_rows = np.asarray(looked_up["i"].to_numpy(), dtype=np.int64)
    lookups = {}
    for c in columns:
        values = np.zeros(width + count, dtype=np.int64)
        values[at_rows] = np.asarray(looked_up[c].to_numpy(), dtype=np.int64)
        lookups[c] = values
    widest = max((int(v.max()) for v in lookups.values()), default=0)
    dtype = np.uint8 if widest < 1 << 8 else np.uint16 if widest < 1 << 16 else np.int64
    narrow = {c: v.astype(dtype) for c, v in lookups.items()}

    def read(table: pa.Table) -> list[npt.NDArray[np.generic]] | None:
        """The table's kept rows: (pid, t, then each of `columns`), or None."""
        name = _dictionary(table["name"])
        if not len(name.dictionary):
            return None
        # Each of the table's names: its block of the look-up (0: not a step's name).
        name_rows = pc.index_in(name.dictionary, wanted).fill_null(-1)
        block = np.asarray(name_rows.to_numpy(zero_copy_only=False), dtype=np.int64) + 1
        at = block[_codes(name, len(name.dictionary))] * width
        if uses_path:
            path = _dictionary(table["path"])
            path_numbers = pc.index_in(path.dictionary, paths)
            number = np.asarray(path_numbers.to_numpy(zero_copy_only=False), dtype=np.int64)
            number = np.append(number, width - 1)  # NULL
            at += number[_codes(path, len(path.dictionary))]
        else:
            at += width - 1
        marked = narrow[columns[0]][at] != 0
        for c in columns[1:]:
            marked |= narrow[c][at] != 0
        t = np.asarray(table["ts"].combine_chunks().cast(pa.int64()).to_numpy(), dtype=np.int64)
        marked &= (t >= lo) & (t < hi)
        if not keep_bots:
            marked &= ~bool_values(table["is_bot"].combine_chunks())
        kept = np.flatnonzero(marked)
        if not kept.size:
            return None
        person = table["person_key"].combine_chunks()
        # The alias key as `events_scan_stored` gives it: the device's key, else the person's.
        alias = pc.coalesce(table["device_key"].combine_chunks(), person)
        kept_at = at[kept]
        return [
            resolve(
                np.asarray(alias.to_numpy(), dtype=np.int64)[kept],
                np.asarray(person.to_numpy(), dtype=np.int64)[kept],
            ),
            t[kept],
            *(narrow[c][kept_at] for c in columns),
        ]

    # The tables in `threads` groups of consecutive days, read side by side.
    groups = min(threads, len(tables)) if sum(t.num_rows for t in tables) >= min_rows else 1
    bounds = np.linspace(0, len(tables), max(groups, 1) + 1).astype(int)

    def read_group(g: int) -> list[list[npt.NDArray[np.generic]]]:
        found = (read(table) for table in tables[bounds[g] : bounds[g + 1]])
        return [f for f in found if f is not None]

    read_parts = [part for group in walk_parts(max(groups, 1), read_group) for part in group]
    names_out = ["pid", "t", *columns]
    dtypes: list[type[np.generic]] = [np.int64, np.int64, *(dtype for _ in columns)]
    return pa.table(
        {
            c: pa.array(
                np.concatenate([part[i] for part in read_parts])
                if read_parts
                else np.zeros(0, dtypes[i])
            )
            for i, c in enumerate(names_out)
        }
    )
