"""What event scans are built from: one in-process DuckDB database per query process (its thread
and memory limits bound every scan together), the local cache of day files, and the projects'
person aliases and rows of days without files, kept in memory between scans."""

from __future__ import annotations

import duckdb

from libs.common.day_files import DayFileCache
from libs.common.model.columns import DERIVED_EVENT_COLUMNS, SCANNED_EVENT_COLUMNS
from services.query.erased_persons import ErasedIds
from services.query.hot_rows import HotRows
from services.query.person_aliases import AliasCache
from services.query.person_keys import KeyedParts

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
        temp_directory: str = "",
    ) -> None:
        self.cache = cache
        self.aliases = AliasCache()
        self.keyed_parts = KeyedParts()  # which cached parts carry person keys
        self.erased = ErasedIds()  # persons of open erasure requests, hidden from every scan
        self.hot_rows = HotRows(STORED_COLUMNS, max_bytes=hot_rows_cache_bytes)
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
        self.db.close()
