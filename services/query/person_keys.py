"""Which rows of a scan carry integer person keys (`person_key`, `device_key`; migration 0024),
so that analyses may group and sort persons as integers rather than as id strings.

A scan is keyed when every row has a `person_key` and every alias has both keys. Parts written
before the keys existed (or merged with such parts) and rows PostgreSQL held before migration
0024 are not; a scan holding any of them resolves persons by their ids only, as before. Parts are
immutable (a changed part is a new object name), so what a part holds is read from its footer
once and remembered, with its columns (scan_engine.FileColumns).

A keyed scan holds three relations over the same rows (services/query/event_scan.py):
`events_scan_keyed`, whose `person_key` has the aliases applied by a join on every row;
`events_scan_stored`, the keys as stored (`person_key`, and `alias_key`, the key an alias
applies to: the device's), no join; and `person_key_aliases(device, person)`, for readers of the
stored view that resolve only the rows they need (`resolved_person_keys`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

Ints = npt.NDArray[np.int64]
# The scan's relation of alias keys: (device, person), one row per device.
PERSON_KEY_ALIASES = "person_key_aliases"
# Keys spread wider than this (and than 4 per alias) are looked up by binary search instead of
# a dense table over their span.
_MAX_DENSE_SPAN = 1 << 24
_NONE = np.iinfo(np.int64).min  # no key is this


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


class PersonKeyResolver:
    """Rows' persons as `events_scan_keyed` gives them, from their stored keys, by a project's
    aliases (`devices`, `persons`: their keys, each device once), the look-up built once for
    many calls (a stream read in parts)."""

    def __init__(self, devices: Ints, persons: Ints) -> None:
        self._dense: Ints | None = None
        self._low = 0
        self._ordered: Ints | None = None
        self._persons = persons
        self._order: Ints | None = None
        if devices.size == 0:
            return
        low = int(devices.min())
        span = int(devices.max()) - low + 1
        if span <= max(4 * devices.size, _MAX_DENSE_SPAN):
            # A project's keys are dense: one slot per key of the aliases' span, _NONE where
            # none, and a _NONE slot either side that keys outside the span are clipped to, so
            # every row is one gather (no selection of the rows inside: a third of the time on
            # 3M rows).
            self._dense = np.full(span + 2, _NONE, dtype=np.int64)
            self._dense[devices - low + 1] = persons
            self._low = low
        else:
            self._order = np.argsort(devices)
            self._ordered = devices[self._order]

    @property
    def empty(self) -> bool:
        """No alias: every row's person is its stored key."""
        return self._dense is None and self._ordered is None

    @property
    def dense(self) -> tuple[Ints, int, int] | None:
        """The dense look-up, when the keys are dense: (table, low, none), slot `key - low + 1`
        holding the person of the alias of device `key` or `none` (keys outside the span are
        clipped to the first or last slot, which hold `none`)."""
        if self._dense is None:
            return None
        return self._dense, self._low, _NONE

    def __call__(self, alias_key: Ints, person_key: Ints) -> Ints:
        """The person of the alias whose device is `alias_key`, else the stored `person_key`."""
        if alias_key.size == 0 or (self._dense is None and self._ordered is None):
            return person_key.copy()
        if self._dense is not None:
            at = alias_key - (self._low - 1)
            np.clip(at, 0, self._dense.size - 1, out=at)
            found = self._dense[at]
            return np.where(found != _NONE, found, person_key)
        assert self._ordered is not None and self._order is not None
        resolved = person_key.copy()
        at = np.minimum(np.searchsorted(self._ordered, alias_key), self._ordered.size - 1)
        hit = self._ordered[at] == alias_key
        resolved[hit] = self._persons[self._order[at[hit]]]
        return resolved


def resolved_person_keys(alias_key: Ints, person_key: Ints, devices: Ints, persons: Ints) -> Ints:
    """Each row's person as `events_scan_keyed` gives it, from its stored keys: the person of
    the alias whose device is `alias_key`, else the stored `person_key` (`devices`, `persons`:
    the aliases' keys, each device once)."""
    return PersonKeyResolver(devices, persons)(alias_key, person_key)
