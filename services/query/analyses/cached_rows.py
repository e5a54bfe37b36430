"""A funnel's events read straight from the scan's in-memory Arrow tables, without DuckDB, when
every row of the scan is in one: each day file's columns in the decoded-column cache
(services/query/column_cache.py) and PostgreSQL's rows in the hot rows' tables
(services/query/hot_rows.py).

DuckDB's read of the cached tables (a scan of each row's name, path, ts and bot flag, the
step masks' CASE, the person keys) cost ~170 ms of CPU for the 120-day benchmark funnel at
scale 1 and handed over every row of the steps' event names, which NumPy then filtered again
by mask. Here:

- the step and exclusion masks are computed once per distinct (event name, page path) of the
  tables, by DuckDB, with the very SQL the stream's query uses (`FunnelQuery._masks`), so
  their semantics are SQL's;
- one compiled pass per batch (`_kept_rows`) reads each row's masks by its name's and path's
  dictionary codes, keeps the rows inside the range, not bots (unless asked) and marked by a
  step or an exclusion, and writes their person (resolved through the aliases there when
  their keys are dense), time and masks; the batches are split over the analysis threads.

The stream comes out as the query's would once its persons are resolved (`pid`, `t`, `mask`,
`xmask` when there are exclusions), in another row order, which `in_event_order` makes exact
anyway (rows tied on person, time and step still raise `TiesNeedEventIds` when they differ:
the query then reads the event ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from services.query.analyses.jit import Compiled
from services.query.analyses.stream_parts import MIN_PART_EVENTS, walk_parts
from services.query.column_cache import CachedRows
from services.query.person_keys import PersonKeyResolver

Ints = npt.NDArray[np.int64]

# Distinct (event name, path) pairs whose masks DuckDB computes at most; beyond that (a site
# with very many page paths and path conditions) the stream's query reads the rows instead.
MAX_MASK_PAIRS = 1_000_000


def _dictionary(array: pa.Array) -> pa.DictionaryArray:
    """A text column of a batch, dictionary-encoded (encoded here if held plain)."""
    if isinstance(array, pa.DictionaryArray):
        return array
    return pc.dictionary_encode(array)


def _microseconds(ts: pa.Array) -> pa.Array:
    """Timestamps as int64 microseconds since the epoch."""
    if pa.types.is_timestamp(ts.type) and ts.type.unit != "us":
        ts = ts.cast(pa.timestamp("us", tz=ts.type.tz))
    return ts.cast(pa.int64())


def _raw(array: pa.Array) -> npt.NDArray[Any]:
    """The values buffer of a fixed-width array without copying (the values under NULL are
    unspecified)."""
    dtype = (
        np.dtype(array.type.to_pandas_dtype())
        if not pa.types.is_timestamp(array.type)
        else np.dtype(np.int64)
    )
    values = np.frombuffer(array.buffers()[1], dtype=dtype, count=array.offset + len(array))
    return values[array.offset :]


def _bits(flags: pa.Array) -> npt.NDArray[np.uint8]:
    """A boolean array's bits (from bit `flags.offset` of the first byte)."""
    return np.frombuffer(flags.buffers()[1], dtype=np.uint8)


def _validity(array: pa.Array) -> tuple[npt.NDArray[np.uint8], int]:
    """The validity bitmap and its bit offset; empty when no value is NULL."""
    if not array.null_count:
        return np.zeros(0, dtype=np.uint8), 0
    return np.frombuffer(array.buffers()[0], dtype=np.uint8), array.offset


def _kept_rows(  # pragma: no cover - run compiled; tests also run it as Python
    name_codes: npt.NDArray[Any],
    name_block: Ints,
    path_codes: npt.NDArray[Any],
    path_bits: npt.NDArray[np.uint8],
    path_offset: int,
    path_number: Ints,
    no_path: int,
    lut: npt.NDArray[Any],
    xlut: npt.NDArray[Any],
    ts: Ints,
    lo: int,
    hi: int,
    bot_bits: npt.NDArray[np.uint8],
    bot_offset: int,
    keep_bots: bool,
    person: Ints,
    device: Ints,
    device_bits: npt.NDArray[np.uint8],
    device_offset: int,
    aliases: Ints,
    aliases_low: int,
    no_alias: int,
    out_pid: Ints,
    out_ak: Ints,
    out_t: Ints,
    out_mask: npt.NDArray[Any],
    out_xmask: npt.NDArray[Any],
) -> int:
    """One pass over a table's rows: those whose step mask (`lut[block of the name + number of
    the path]`, `path_number` ending with the NULL path's number) or exclusion mask (`xlut`,
    the same way; empty: no exclusions) is not zero, inside [lo, hi), not bots unless
    `keep_bots`, written to the outputs (the person's key; the alias key, the device's, else
    the person's, unless `out_ak` is empty; ts; masks). The person's key is resolved by
    `aliases` (PersonKeyResolver.dense: slot `key - aliases_low + 1` holds the alias's
    person or `no_alias`) when it is not empty, else stored. Returns how many. An empty
    `path_codes`: no path is read (every row's is `no_path`); an empty validity bitmap: no
    NULL."""
    with_path = path_codes.size > 0
    path_nulls = path_bits.size > 0
    device_nulls = device_bits.size > 0
    excluding = xlut.size > 0
    resolving = aliases.size > 0
    top = aliases.size - 1
    kept = 0
    last = path_number.size - 1  # the NULL path's slot
    # Validity and selections as arithmetic, not branches: whether a row's path or device is
    # NULL follows no pattern a branch predictor learns (-60 % time per row).
    for i in range(ts.size):
        at = name_block[name_codes[i]]
        if with_path:
            valid = 1
            if path_nulls:
                j = path_offset + i
                valid = (path_bits[j >> 3] >> (j & 7)) & 1
            # (The code under a NULL is unspecified: never used as an index.)
            at += path_number[path_codes[i] * valid + last * (1 - valid)]
        else:
            at += no_path
        mask = lut[at]
        xmask = xlut[at] if excluding else mask
        t = ts[i]
        # Every row is written at `kept`, which moves on only past a kept row: whether a
        # row is kept (its masks, most of all) follows no pattern a branch predictor learns.
        keep = (mask != 0) | (xmask != 0)
        keep &= (t >= lo) & (t < hi)
        if not keep_bots:
            keep &= ((bot_bits[(bot_offset + i) >> 3] >> ((bot_offset + i) & 7)) & 1) == 0
        stored = person[i]
        alias = stored
        if device_nulls:
            j = device_offset + i
            has = np.int64((device_bits[j >> 3] >> (j & 7)) & 1)
            alias = stored + has * (device[i] - stored)
        else:
            alias = device[i]
        if resolving:
            # The alias's person where the look-up has one, else the stored key.
            found = aliases[min(max(alias - aliases_low + 1, 0), top)]
            stored = stored if found == no_alias else found
        out_t[kept] = t
        out_pid[kept] = stored
        if out_ak.size:
            out_ak[kept] = alias
        out_mask[kept] = mask
        if excluding:
            out_xmask[kept] = xmask
        kept += keep
    return kept


_compiled_kept_rows = Compiled(_kept_rows)


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
    resolve: PersonKeyResolver,
    threads: int = 1,
    min_rows: int = MIN_PART_EVENTS,
) -> pa.Table | None:
    """The rows of `rows.tables` in [start, end) (and the scan's bounds), bots left out unless
    both allow them, whose event name is among `names` and whose masks (`masks_sql`: a SELECT
    list giving `mask` and maybe `xmask` over `e.name` and, with `uses_path`, `e.path`, with
    `params`) are not all zero: (pid, t, mask[, xmask]), `pid` the person's key with the
    aliases applied by `resolve`, the tables read on up to `threads`
    threads when they hold `min_rows` rows or more. None when there are too many distinct
    paths to compute the masks per pair."""
    # Every batch of every table: a day's hot rows come in a few chunks (compact_rows.py), each
    # with its dictionaries, read as they are.
    tables = [batch for table in rows.tables for batch in table.to_batches() if batch.num_rows]
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

    lut = narrow["mask"]
    xlut = narrow.get("xmask", lut[:0])
    no_bits = np.zeros(0, dtype=np.uint8)
    # Persons resolved in the pass when the aliases' look-up is a dense table, else after it.
    looked_up_keys = resolve.dense
    resolved_here = looked_up_keys is not None or resolve.empty
    dense, dense_low, no_alias = looked_up_keys or (np.zeros(0, dtype=np.int64), 0, 0)
    if dense.size and int(dense.max()) < 2**31 - 1:
        # Half the bytes (a look-up per row kept, at random: the smaller it is, the more of it
        # the CPU's caches hold).
        dense, no_alias = np.where(dense == no_alias, -1, dense).astype(np.int32), -1

    def read(table: pa.RecordBatch, out: list[npt.NDArray[Any]]) -> int:
        """Write the batch's kept rows to `out` (pid, ak, t, mask, xmask); how many."""
        name = _dictionary(table["name"])
        if not len(name.dictionary):
            return 0
        # Each of the table's names: its block of the look-up (0: not a step's name).
        name_rows = pc.index_in(name.dictionary, wanted).fill_null(-1)
        block = np.asarray(name_rows.to_numpy(zero_copy_only=False), dtype=np.int64) + 1
        block *= width
        if uses_path:
            path = _dictionary(table["path"])
            path_numbers = pc.index_in(path.dictionary, paths)
            number = np.asarray(path_numbers.to_numpy(zero_copy_only=False), dtype=np.int64)
            number = np.append(number, width - 1)  # NULL
            path_codes, (path_bits, path_offset) = _raw(path.indices), _validity(path.indices)
        else:
            number = np.zeros(0, dtype=np.int64)
            path_codes, path_bits, path_offset = np.zeros(0, dtype=np.int8), no_bits, 0
        ts = _microseconds(table["ts"])
        bots = table["is_bot"]
        device = table["device_key"]
        device_bits, device_offset = _validity(device)
        kept: int = _compiled_kept_rows(
            _raw(name.indices),
            block,
            path_codes,
            path_bits,
            path_offset,
            number,
            width - 1,
            lut,
            xlut,
            _raw(ts),
            lo,
            hi,
            _bits(bots),
            bots.offset,
            keep_bots,
            _raw(table["person_key"]),
            _raw(device),
            device_bits,
            device_offset,
            dense,
            dense_low,
            no_alias,
            *out,
        )
        return kept

    # The tables in `threads` groups of consecutive days, read side by side, each group's rows
    # written to one set of arrays (no copy per table, nor a concatenation of them).
    groups = min(threads, len(tables)) if sum(t.num_rows for t in tables) >= min_rows else 1
    groups = max(groups, 1)
    bounds = np.linspace(0, len(tables), groups + 1).astype(int)

    def read_group(g: int) -> list[npt.NDArray[Any]]:
        chosen = tables[bounds[g] : bounds[g + 1]]
        size = sum(t.num_rows for t in chosen)
        out: list[npt.NDArray[Any]] = [
            np.empty(size, dtype=np.int64),  # pid
            np.empty(0 if resolved_here else size, dtype=np.int64),  # ak, to resolve after
            np.empty(size, dtype=np.int64),  # t
            np.empty(size, dtype=lut.dtype),  # mask
            np.empty(size if xlut.size else 0, dtype=lut.dtype),  # xmask
        ]
        at = 0
        for table in chosen:
            at += read(table, [o[at:] if o.size else o for o in out])
        pid, ak, t, mask, xmask = (o[:at] if o.size else o for o in out)
        return [pid if resolved_here else resolve(ak, pid), t, mask, xmask]

    found = walk_parts(groups, read_group)
    stream = {
        "pid": np.concatenate([f[0] for f in found]),
        "t": np.concatenate([f[1] for f in found]),
        "mask": np.concatenate([f[2] for f in found]),
    }
    if xlut.size:
        stream["xmask"] = np.concatenate([f[3] for f in found])
    return pa.table({c: pa.array(v) for c, v in stream.items()})
