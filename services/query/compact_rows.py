"""Event rows kept in memory compactly, in a form DuckDB scans as it is: each text column of a
day is dictionary-encoded with the narrowest index its distinct values fit (event names,
paths, browsers, countries and ids repeat: a value costs one or two bytes a row instead of its
length plus a 4-byte offset), unless its values are mostly distinct (event ids), which stay
plain. Rows appended later are encoded in the same column types when they fit, so a day stays
one schema; appended chunks are merged as `append` says, and when a column outgrows its index
the day is encoded again as one chunk.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

MAX_CHUNKS = 32  # chunks a day may hold (log2 of its growth): many small chunks slow DuckDB down
# The narrowest dictionary index for a number of distinct values.
_INDEX_TYPES = ((127, pa.int8()), (32_767, pa.int16()), (2**31 - 1, pa.int32()))


def _index_type(distinct: int) -> pa.DataType:
    for most, index in _INDEX_TYPES:
        if distinct <= most:
            return index
    raise ValueError(f"{distinct} distinct values do not fit a dictionary index")


def _index_fits(index: pa.DataType, distinct: int) -> bool:
    return distinct <= next(most for most, kind in _INDEX_TYPES if kind == index)


def _compact_column(array: pa.Array) -> pa.Array:
    if not pa.types.is_string(array.type):
        return array
    encoded = pc.dictionary_encode(array)
    narrowed = pa.DictionaryArray.from_arrays(
        encoded.indices.cast(_index_type(len(encoded.dictionary))), encoded.dictionary
    )
    return narrowed if narrowed.nbytes < array.nbytes else array


def plain(rows: pa.Table) -> pa.Table:
    """`rows` with dictionary-encoded columns decoded back to their value types."""
    schema = pa.schema(
        [
            pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
            for f in rows.schema
        ]
    )
    return rows if schema == rows.schema else rows.cast(schema)


def compact(rows: pa.Table) -> pa.Table:
    """`rows` (plain or compact) as one chunk, each text column encoded as it fits best."""
    rows = plain(rows).combine_chunks()
    columns = [_compact_column(rows.column(i).combine_chunks()) for i in range(rows.num_columns)]
    return pa.Table.from_arrays(columns, names=rows.column_names)


def _encode_like(schema: pa.Schema, rows: pa.Table) -> pa.Table | None:
    """Plain `rows` in `schema`'s column types (each text column's dictionary index as there),
    or None when a column's distinct values outgrow its index."""
    columns = []
    for field in schema:
        column = rows.column(field.name).combine_chunks()
        if pa.types.is_dictionary(field.type):
            encoded = pc.dictionary_encode(column)
            if not _index_fits(field.type.index_type, len(encoded.dictionary)):
                return None
            column = pa.DictionaryArray.from_arrays(
                encoded.indices.cast(field.type.index_type), encoded.dictionary
            )
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def append(rows: pa.Table, more: pa.Table) -> pa.Table:
    """Compact `rows` followed by plain `more` (same columns), still compact.

    A day's chunks are merged like a binary counter: a new chunk is merged with the one before
    it while that one is no larger, and reaching the first chunk encodes the whole day again
    (its dictionaries chosen anew). So a day holds about log2(rows / batch) chunks and each row
    is re-encoded about log2 times over the day's life, however often a small batch is appended
    (today's day gains rows at every scan); re-encoding the whole day every few appends cost a
    busy query service most of its CPU."""
    if more.num_rows == 0:
        return rows
    more = more.select(rows.column_names)
    if rows.num_rows == 0:
        return compact(more)
    new = _encode_like(rows.schema, more)
    if new is None:
        return compact(pa.concat_tables([plain(rows), more]))
    parts = [pa.Table.from_batches([batch]) for batch in rows.to_batches()] + [new]
    while len(parts) >= 2 and parts[-2].num_rows <= parts[-1].num_rows:
        if len(parts) == 2:
            return compact(pa.concat_tables([plain(part) for part in parts]))
        merged = _encode_like(rows.schema, pa.concat_tables([plain(p) for p in parts[-2:]]))
        if merged is None:
            return compact(pa.concat_tables([plain(part) for part in parts]))
        parts[-2:] = [merged]
    if len(parts) > MAX_CHUNKS:
        return compact(pa.concat_tables([plain(part) for part in parts]))
    return pa.concat_tables(parts)
