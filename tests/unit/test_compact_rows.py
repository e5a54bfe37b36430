"""Cached hot rows are held compactly and read back unchanged: repeated text as dictionaries
with the narrowest index, distinct text plain, appended rows in the day's own column types."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from services.query.compact_rows import MAX_CHUNKS, append, compact, plain


def rows(count: int, *, names: int = 3, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array(range(start, start + count), pa.int64()),
            "event_id": pa.array([f"event-{start + i:08d}" for i in range(count)]),
            "name": pa.array([f"name-{i % names}" for i in range(count)]),
            "url": pa.array([None if i % 4 else "https://example.com/" for i in range(count)]),
        }
    )


def test_repeated_text_is_a_dictionary_with_the_narrowest_index_and_reads_back_unchanged() -> None:
    table = rows(1000, names=200)
    kept = compact(table)
    assert kept.schema.field("name").type == pa.dictionary(pa.int16(), pa.string())
    assert kept.schema.field("url").type == pa.dictionary(pa.int8(), pa.string())
    assert kept.schema.field("event_id").type == pa.string()  # all distinct: plain is smaller
    for column in ("name", "url"):
        assert kept.column(column).nbytes < table.column(column).nbytes / 2
    assert plain(kept).equals(table)


def test_appended_rows_keep_the_day_one_schema_until_a_column_outgrows_its_index() -> None:
    kept = compact(rows(100))
    more = rows(50, start=100)
    grown = append(kept, more)
    assert grown.schema == kept.schema and grown.column(0).num_chunks == 2
    assert plain(grown).equals(pa.concat_tables([rows(100), more]))
    # 300 distinct names no longer fit the int8 index: the day is encoded again, whole.
    wide = rows(300, names=300, start=150)
    regrown = append(grown, wide)
    assert regrown.schema.field("name").type == pa.dictionary(pa.int16(), pa.string())
    assert regrown.column(0).num_chunks == 1
    assert plain(regrown).equals(pa.concat_tables([rows(100), more, wide]))


def test_many_appends_are_merged_into_one_chunk() -> None:
    kept = compact(rows(10))
    expected = [rows(10)]
    for n in range(1, MAX_CHUNKS + 1):
        kept = append(kept, rows(10, start=10 * n))
        expected.append(rows(10, start=10 * n))
    assert kept.column(0).num_chunks < MAX_CHUNKS
    assert plain(kept).equals(pa.concat_tables(expected))


def test_duckdb_reads_compact_and_plain_rows_alike() -> None:
    table = rows(500, names=7)
    con = duckdb.connect()
    con.register("kept", append(compact(table.slice(0, 300)), table.slice(300)))
    con.register("plain_rows", table)
    query = (
        "SELECT name, count(*), count(url), min(event_id) FROM {} WHERE name IN"
        " ('name-1', 'name-4') OR url IS NOT NULL GROUP BY name ORDER BY name"
    )
    expected = con.sql(query.format("plain_rows")).fetchall()
    assert con.sql(query.format("kept")).fetchall() == expected
