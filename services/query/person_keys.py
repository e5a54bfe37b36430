"""Which rows of a scan carry integer person keys (`person_key`, `device_key`; migration 0024),
so that analyses may group and sort persons as integers rather than as id strings.

A scan is keyed when every row has a `person_key` and every alias has both keys. Parts written
before the keys existed (or merged with such parts) and rows PostgreSQL held before migration
0024 are not; a scan holding any of them resolves persons by their ids only, as before. Parts are
immutable (a changed part is a new object name), so what a part holds is read from its footer
once and remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq


class KeyedParts:
    """Remembers, per local part path, whether every row of the part has a person key."""

    def __init__(self, max_paths: int = 100_000) -> None:
        self.max_paths = max_paths
        self._known: OrderedDict[str, bool] = OrderedDict()

    def unkeyed(self, paths: Iterable[str]) -> frozenset[str]:
        """The paths among `paths` with some row without a person key."""
        out = []
        for path in paths:
            keyed = self._known.get(path)
            if keyed is None:
                keyed = self._known[path] = part_is_keyed(path)
                if len(self._known) > self.max_paths:
                    self._known.popitem(last=False)
            if not keyed:
                out.append(path)
        return frozenset(out)


def part_is_keyed(path: str) -> bool:
    """Every row of the Parquet part has a `person_key` (by its footer's statistics)."""
    metadata = pq.read_metadata(path)
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
