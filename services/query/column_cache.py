"""The columns the analyses read most (funnels, paths, retention), decoded from local day files
and kept in memory between scans, so a repeated analysis over the same days skips the Parquet
decoding (docs/analytics.md, "The decoded-column cache").

A day file is immutable (a part that changes, by an erasure's rewrite or a re-export, is a new
object name and so a new local file), so an entry is keyed by the file's path, inode and size
and never goes stale: a superseded part is simply no longer asked for and ages out. Entries are
filled off the scan's path, on a background thread, after a scan first reads the file from
Parquet; a scan pins the entries it uses (they cannot be evicted, and are not freed anyway
while a scan holds them), and a fill drops the least recently used entries that are neither
pinned nor used by the scan that asked for it or a later one; when those do not make room,
the fill is skipped.

Each entry is one Arrow table of `CACHED_COLUMNS` in the file's row order, text columns
dictionary-encoded where it pays (services/query/compact_rows.py), plus `tie_row`: the row's
position as the scan's views give it (event_scan.TIE_COLUMNS: file number << 32 | row in the
file), the file numbered by the cache, from `FIRST_FILE_NUMBER` up, apart from the numbers a
scan gives the files it reads from Parquet. A scan reads all its cached files of one schema as
one table (a UNION ALL branch per file cost ~0.4 ms a file at every query). An entry's size is
the Arrow buffers it holds (`get_total_buffer_size`).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.query.compact_rows import compact

# What funnels, paths and retention read in their usual forms (the ids behind `person_id`,
# the keys behind `person_key`, the session, the event's name and page path, the filters on
# bots and interactivity); a query naming any other column reads the day files.
CACHED_COLUMNS = (
    "ts",
    "name",
    "distinct_id",
    "user_id",
    "session_id",
    "path",
    "is_bot",
    "non_interactive",
    "person_key",
    "device_key",
)
TIE_ROW = "tie_row"
# Cached files are numbered from here (a scan numbers the files it reads from Parquet from 0),
# cycling below 2 ** 31 so that number << 32 fits a BIGINT.
FIRST_FILE_NUMBER = 1 << 30
# The scan's views over the cached columns are named as the others plus this
# (`events_scan_cached`, ...; services/query/event_scan.py) and have these columns at most.
CACHED_VIEW_SUFFIX = "_cached"
CACHED_VIEW_COLUMNS = frozenset(
    (*CACHED_COLUMNS, "person_id", "stored_key", "alias_key", "tie_row", "tie_id")
)

_FileKey = tuple[str, int, int]  # path, inode, size


@dataclass(frozen=True)
class CachedRows:
    """Every row of a scan as in-memory Arrow tables: the column cache's (one per day file) and
    the hot rows' (PostgreSQL's, services/query/hot_rows.py), with the scan's own bounds: rows
    at or after `start` and before `end` (a table may hold more), bots left out unless
    `include_bots`."""

    tables: tuple[pa.Table, ...]
    start: datetime
    end: datetime
    include_bots: bool


@dataclass(frozen=True)
class CachedFiles:
    """What `ColumnCache.acquire` found: the cached table of each such path, pinned until
    `ColumnCache.release`; `since`: when it was asked (`fill_later`'s argument)."""

    tables: dict[str, pa.Table]
    keys: tuple[_FileKey, ...] = ()
    since: int = 0


@dataclass
class _Entry:
    table: pa.Table
    nbytes: int
    used: int  # the `acquire` (or fill) that last used it
    pins: int = 0


class ColumnCache:
    """Decoded `CACHED_COLUMNS` of local day files, LRU within `max_bytes` (0: disabled).
    Thread-safe: scans pin and release from their threads, fills run on the cache's own."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0  # bytes of the cached tables' Arrow buffers
        self.fills = 0  # files decoded and kept since start (tests, benchmarks)
        self.served = 0  # files scans read from the cache since start (tests, benchmarks)
        self._numbers = itertools.count()
        self._clock = itertools.count(1)  # orders acquires and fills
        self._entries: OrderedDict[_FileKey, _Entry] = OrderedDict()
        self._filling: set[_FileKey] = set()
        self._lock = threading.Lock()
        # One thread: fills are background work, never competing with scans for more than it.
        self._filler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="column-cache")

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def acquire(self, paths: Sequence[str]) -> CachedFiles:
        """The cached tables of those of `paths` that have one, pinned until `release`."""
        if not self.enabled:
            return CachedFiles({})
        keys = [(path, _key(path)) for path in paths]
        found: dict[str, pa.Table] = {}
        pinned: list[_FileKey] = []
        with self._lock:
            now = next(self._clock)
            for path, key in keys:
                entry = self._entries.get(key) if key is not None else None
                if key is not None and entry is not None:
                    entry.pins += 1
                    entry.used = now
                    self._entries.move_to_end(key)
                    found[path] = entry.table
                    pinned.append(key)
            self.served += len(found)
        return CachedFiles(found, tuple(pinned), now)

    def release(self, cached: CachedFiles) -> None:
        """Unpin what `acquire` returned."""
        with self._lock:
            for key in cached.keys:
                entry = self._entries.get(key)
                if entry is not None and entry.pins > 0:
                    entry.pins -= 1

    def fill_later(self, paths: Sequence[str], since: int | None = None) -> Future[None] | None:
        """Decode these files' columns on the cache's thread (those not cached or being
        filled already); the future (tests wait on it), or None when there is nothing to do.
        A fill evicts only files not used since `since` (the scan's `CachedFiles.since`):
        a scan over more days than fit keeps the days it found cached instead of replacing
        them with its others, which the next such scan would replace back, and so on."""
        if not self.enabled or not paths:
            return None
        wanted: list[tuple[str, _FileKey]] = []
        with self._lock:
            if since is None:
                since = next(self._clock)
            for path in paths:
                key = _key(path)
                if key is not None and key not in self._entries and key not in self._filling:
                    self._filling.add(key)
                    wanted.append((path, key))
        if not wanted:
            return None
        try:
            return self._filler.submit(self._fill, wanted, since)
        except RuntimeError:  # shut down
            with self._lock:
                self._filling.difference_update(key for _, key in wanted)
            return None

    def fill(self, paths: Sequence[str]) -> None:
        """Decode these files' columns now (benchmarks; the service fills with `fill_later`)."""
        future = self.fill_later(paths)
        if future is not None:
            future.result()

    def settle(self) -> None:
        """Wait until the fills asked for so far are done (tests)."""
        try:
            self._filler.submit(lambda: None).result()
        except RuntimeError:  # shut down
            pass

    def _fill(self, wanted: list[tuple[str, _FileKey]], since: int) -> None:
        for path, key in wanted:
            with self._lock:
                # Decoding costs ~0.4 µs an event: not for a file the budget has no room for
                # (sized as the average entry).
                typical = self.nbytes // len(self._entries) if self._entries else 0
                if self._evictable(typical, since) is None:
                    self._filling.discard(key)
                    continue
            number = FIRST_FILE_NUMBER + next(self._numbers) % FIRST_FILE_NUMBER
            try:
                table = decoded_columns(path, number)
            except (OSError, pa.ArrowInvalid):
                # Evicted from the local day-file cache meanwhile: a later scan fills it.
                table = None
            with self._lock:
                self._filling.discard(key)
                if table is not None:
                    self._keep(key, table, since)

    def _evictable(self, nbytes: int, since: int) -> list[_FileKey] | None:
        """The least recently used entries to drop for `nbytes` more, none of them pinned or
        used since `since`; None when those are not enough."""
        excess = self.nbytes + nbytes - self.max_bytes
        dropped: list[_FileKey] = []
        for key, entry in self._entries.items():
            if excess <= 0:
                break
            if entry.pins or entry.used >= since:
                continue
            dropped.append(key)
            excess -= entry.nbytes
        return dropped if excess <= 0 else None

    def _keep(self, key: _FileKey, table: pa.Table, since: int) -> None:
        nbytes = table.get_total_buffer_size()
        dropped = self._evictable(nbytes, since)
        if dropped is None:
            return  # no room beside what open and recent scans use
        for old in dropped:
            self.nbytes -= self._entries.pop(old).nbytes
        self._entries[key] = _Entry(table, nbytes, since)
        self.nbytes += nbytes
        self.fills += 1

    def close(self) -> None:
        """Stop filling (a fill under way finishes) and drop every entry."""
        self._filler.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._entries.clear()
            self.nbytes = 0


def cacheable(columns: frozenset[str], tie_order: bool) -> bool:
    """Whether a file with these columns can be served from the cache: it has every cached
    column and claims the tie order (its rows' ties are then ordered by position, so the cache
    need not hold event ids)."""
    return tie_order and columns.issuperset(CACHED_COLUMNS)


def decoded_columns(path: str, number: int) -> pa.Table:
    """A day file's `CACHED_COLUMNS`, compact, and each row's `tie_row` as file `number`."""
    table = compact(pq.read_table(path, columns=list(CACHED_COLUMNS)))
    rows = (np.int64(number) << 32) + np.arange(table.num_rows, dtype=np.int64)
    return table.append_column(TIE_ROW, pa.array(rows))


def _key(path: str) -> _FileKey | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (path, stat.st_ino, stat.st_size)
