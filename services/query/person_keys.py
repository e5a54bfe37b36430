"""Which rows of a scan carry integer person keys (`person_key`, `device_key`; migration 0024),
so that analyses may group and sort persons as integers rather than as id strings.

A scan is keyed when every row has a `person_key` and every alias has both keys. Parts written
before the keys existed (or merged with such parts) and rows PostgreSQL held before migration
0024 are not; a scan holding any of them resolves persons by their ids only, as before. Parts are
immutable (a changed part is a new object name), so what a part holds is read from its footer
once and remembered, with its columns (scan_engine.FileColumns).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq


def footer_is_keyed(metadata: pq.FileMetaData) -> bool:
    """Every row of the Parquet part has a `person_key` (by its footer's statistics)."""
    names = metadata.schema.names
    if "person_key" not in names:
        return False
    column = names.index("person_key")
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_null_count or stats.null_count:
            return False
    return True


def rows_are_keyed(table: pa.Table) -> bool:
    """Every row of `table` (rows read from PostgreSQL) has a person key."""
    return "person_key" in table.column_names and table.column("person_key").null_count == 0


def aliases_are_keyed(aliases: pa.Table) -> bool:
    """Every alias has the keys of its device and of its person."""
    return all(
        name in aliases.column_names and aliases.column(name).null_count == 0
        for name in ("device_key", "person_key")
    )
