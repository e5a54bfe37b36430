"""What event scans are built from: one in-process DuckDB database per query process (its thread
and memory limits bound every scan together), the local cache of day files, and the projects'
person aliases and rows of days without files, kept in memory between scans."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow.parquet as pq

from libs.common.day_files import DayFileCache
from libs.common.day_files.layout import TIE_ORDER, TIE_ORDER_KEY
from libs.common.model.columns import DERIVED_EVENT_COLUMNS, EVENTS, SCANNED_EVENT_COLUMNS
from services.query.column_cache import ColumnCache
from services.query.erased_persons import ErasedIds
from services.query.hot_rows import HotRows
from services.query.person_aliases import AliasCache
from services.query.person_keys import footer_is_keyed

# The view's columns, in order: the stored columns libs/common/model marks scanned, with the
# computed person_id after the event's name. The person keys are read with the rows but
# exposed resolved, by `events_scan_keyed` only (services/query/person_keys.py).
STORED_COLUMNS = SCANNED_EVENT_COLUMNS
KEY_COLUMNS = tuple(c for c in STORED_COLUMNS if c in DERIVED_EVENT_COLUMNS)
_EVENT_COLUMNS = tuple(c for c in STORED_COLUMNS if c not in KEY_COLUMNS)
_BEFORE_PERSON = _EVENT_COLUMNS.index("name") + 1
SCAN_COLUMNS = (*_EVENT_COLUMNS[:_BEFORE_PERSON], "person_id", *_EVENT_COLUMNS[_BEFORE_PERSON:])
# `events_scan_keyed`: the same rows with the person's integer key instead of its id.
KEYED_SCAN_COLUMNS = (
    *_EVENT_COLUMNS[:_BEFORE_PERSON],
    "person_key",
    *_EVENT_COLUMNS[_BEFORE_PERSON:],
)
# DuckDB's spelling of each PostgreSQL type a stored column has (libs/common/model/columns.py),
# for the NULLs that stand in for a column a part written before it existed lacks.
_DUCKDB_TYPES = {
    "text": "VARCHAR",
    "jsonb": "VARCHAR",
    "timestamptz": "TIMESTAMPTZ",
    "boolean": "BOOLEAN",
    "integer": "INTEGER",
    "bigint": "BIGINT",
}


def null_of(column: str) -> str:
    """A typed NULL standing in for the stored `column`."""
    return f"CAST(NULL AS {_DUCKDB_TYPES[EVENTS[column].pg_type]})"


@dataclass(frozen=True)
class FileFooter:
    """What a day file's footer says: its columns, whether every row has a person key, and
    whether rows tied on (person key, ts) are in event-id code-point order (`TIE_ORDER`)."""

    columns: frozenset[str]
    keyed: bool
    tie_order: bool = False


def footer_claims_tie_order(metadata: pq.FileMetaData) -> bool:
    """The file says its rows tied on (person_key, ts) are in event-id code-point order."""
    values = metadata.metadata or {}
    return values.get(TIE_ORDER_KEY.encode()) == TIE_ORDER.encode()


class FileColumns:
    """What each local day file holds, read from its Parquet footer once: the columns (a scan
    reads files of one set of columns with a plain `read_parquet`; DuckDB's `union_by_name`
    reads every file's footer again each time the view is bound, ~0.1 ms a file, twice a scan;
    only parts written before a column was added form another group) and whether every row
    has a person key (services/query/person_keys.py), both from one read of the footer. A file
    is known by path, inode and size: a part's content never changes under its object name,
    and a re-downloaded file is a new inode."""

    def __init__(self, *, max_files: int = 100_000) -> None:
        self.max_files = max_files
        self._files: OrderedDict[tuple[str, int, int], FileFooter] = OrderedDict()
        self._sets: dict[frozenset[str], frozenset[str]] = {}  # one object per column set
        self.footers_read = 0  # since start (tests)

    def groups(self, paths: Sequence[str]) -> list[tuple[frozenset[str], bool, list[str]]]:
        """`paths` grouped by the columns their files hold and whether they claim the tie
        order, in order of first appearance."""
        grouped: dict[tuple[frozenset[str], bool], list[str]] = {}
        for path in paths:
            footer = self.of(path)
            grouped.setdefault((footer.columns, footer.tie_order), []).append(path)
        return [(columns, tie_order, group) for (columns, tie_order), group in grouped.items()]

    def unkeyed(self, paths: Sequence[str]) -> frozenset[str]:
        """The paths among `paths` with some row without a person key."""
        return frozenset(path for path in paths if not self.of(path).keyed)

    def of(self, path: str) -> FileFooter:
        stat = os.stat(path)
        key = (path, stat.st_ino, stat.st_size)
        footer = self._files.get(key)
        if footer is None:
            metadata = pq.read_metadata(path)
            names = frozenset(metadata.schema.names)
            footer = FileFooter(
                self._sets.setdefault(names, names),
                footer_is_keyed(metadata),
                footer_claims_tie_order(metadata),
            )
            self.footers_read += 1
            self._files[key] = footer
            while len(self._files) > self.max_files:
                self._files.popitem(last=False)
        return footer


class ScanEngine:
    """A shared DuckDB instance plus the day-file cache (None: every day is read from
    PostgreSQL, correct only while PostgreSQL still holds every day asked for; for tests and
    tools without an object store)."""

    def __init__(
        self,
        cache: DayFileCache | None = None,
        *,
        threads: int = 2,
        memory_limit: str = "1GB",
        hot_rows_cache_bytes: int = 512 * 1024**2,
        column_cache_bytes: int = 0,  # off unless given (the service: STRATA_COLUMN_CACHE_BYTES)
        temp_directory: str = "",
    ) -> None:
        self.cache = cache
        self.aliases = AliasCache()
        self.erased = ErasedIds()  # persons of open erasure requests, hidden from every scan
        self.hot_rows = HotRows(STORED_COLUMNS, max_bytes=hot_rows_cache_bytes)
        self.file_columns = FileColumns()  # each cached part's columns and person keys
        # The analyses' usual columns of local day files, decoded (0 bytes: off)
        self.columns = ColumnCache(column_cache_bytes)
        self.db = duckdb.connect(
            ":memory:",
            config={"threads": threads, "memory_limit": memory_limit},
        )
        if temp_directory:
            # Where a query past the memory limit spills (DuckDB's default is ./.tmp, which a
            # read-only root file system does not allow).
            self.db.execute("SET GLOBAL temp_directory = ?", [temp_directory])
        # Built in, but settings of extensions can only be set once they are loaded.
        self.db.execute("LOAD parquet; LOAD icu")
        self.db.execute("SET GLOBAL TimeZone = 'UTC'")
        # Day files are immutable (a changed part is a new object name), so their footers can
        # be cached across scans.
        self.db.execute("SET GLOBAL parquet_metadata_cache = true")

    def connection(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the shared database: its temp views and registered tables are
        its own."""
        con = self.db.cursor()
        con.execute("SET TimeZone = 'UTC'")
        return con

    def close(self) -> None:
        """Close the DuckDB database (scans still open fail afterwards)."""
        self.columns.close()
        self.db.close()
