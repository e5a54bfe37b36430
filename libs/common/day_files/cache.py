"""A bounded local cache of day-file parts for one query process: parts are downloaded from the
object store on first use and evicted least recently used first once the cache holds more than
`max_bytes`. Object names are immutable (a changed part is a new part), so a cached file is
never stale. Parts pinned by an open scan are never evicted under it; while pinned parts alone
exceed the bound the cache is over it, and comes back under when they are released.

One process per cache directory: the index lives in memory (rebuilt from the files at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from libs.common.day_files.catalog import DayPart
from libs.common.day_files.layout import parse_object_name
from libs.common.object_store import ObjectChecksumMismatch, ObjectStore


@dataclass
class CacheStats:
    """Counters since the cache was opened."""

    hits: int = 0
    misses: int = 0
    bytes_downloaded: int = 0
    evictions: int = 0
    download_seconds: float = 0.0


@dataclass
class _Entry:
    path: Path
    size: int
    pins: int = 0


class DayFileCache:
    """Local copies of parts, keyed by object name, at most ~`max_bytes` on disk."""

    def __init__(
        self, root: Path, max_bytes: int, store: ObjectStore, *, max_downloads: int = 4
    ) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes
        self.store = store
        self.stats = CacheStats()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._downloads: dict[str, asyncio.Future[_Entry]] = {}
        self._download_slots = asyncio.Semaphore(max_downloads)
        self.bytes = 0
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_index()

    def _load_index(self) -> None:
        """Index the parts a previous run left, oldest access first."""
        found: list[tuple[float, str, Path, int]] = []
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            if path.name.endswith(".partial"):
                path.unlink(missing_ok=True)
                continue
            name = path.relative_to(self.root).as_posix()
            if parse_object_name(name) is None:
                continue
            stat = path.stat()
            found.append((stat.st_mtime, name, path, stat.st_size))
        for _, name, path, size in sorted(found):
            self._entries[name] = _Entry(path, size)
            self.bytes += size
        self._evict()

    def _local_path(self, object_name: str) -> Path:
        if parse_object_name(object_name) is None:
            raise ValueError(f"not a day-file object name: {object_name!r}")
        return self.root / object_name

    def __contains__(self, object_name: str) -> bool:
        return object_name in self._entries

    async def acquire(self, parts: Sequence[DayPart]) -> list[Path]:
        """Local paths of `parts` (downloaded when missing), pinned until `release(parts)`.
        If any part cannot be had, none stays pinned and the first error is raised."""
        results = await asyncio.gather(
            *(self._acquire_one(p) for p in parts), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            self.release([p for p, r in zip(parts, results, strict=True) if isinstance(r, _Entry)])
            raise failures[0]
        self._evict()
        return [r.path for r in results if isinstance(r, _Entry)]

    def release(self, parts: Sequence[DayPart]) -> None:
        """Unpin parts from `acquire`; the cache then trims itself back under its bound."""
        for part in parts:
            entry = self._entries.get(part.object_name)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1
        self._evict()

    async def _acquire_one(self, part: DayPart) -> _Entry:
        entry = self._entries.get(part.object_name)
        if entry is not None:
            self.stats.hits += 1
            entry.pins += 1
            self._entries.move_to_end(part.object_name)
            with contextlib.suppress(FileNotFoundError):
                os.utime(entry.path)  # so a restart keeps the recency order
            return entry
        pending = self._downloads.get(part.object_name)
        if pending is None:
            pending = asyncio.ensure_future(self._download(part))
            self._downloads[part.object_name] = pending
            pending.add_done_callback(lambda _: self._downloads.pop(part.object_name, None))
        else:
            self.stats.hits += 1  # someone else is fetching it: one download serves both
        entry = await asyncio.shield(pending)
        entry.pins += 1
        self._entries.move_to_end(part.object_name)
        return entry

    async def _download(self, part: DayPart) -> _Entry:
        path = self._local_path(part.object_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        async with self._download_slots:
            info = await self.store.get_to_file(part.object_name, path)
        if part.md5 is not None and info.md5 is not None and info.md5 != part.md5:
            path.unlink(missing_ok=True)
            raise ObjectChecksumMismatch(part.object_name, part.md5, info.md5)
        size = path.stat().st_size
        self.stats.misses += 1
        self.stats.bytes_downloaded += size
        self.stats.download_seconds += time.perf_counter() - started
        entry = _Entry(path, size)
        self._entries[part.object_name] = entry
        self.bytes += size
        return entry

    def _evict(self) -> None:
        """Drop unpinned entries, least recently used first, until under the bound."""
        if self.bytes <= self.max_bytes:
            return
        for name in list(self._entries):
            if self.bytes <= self.max_bytes:
                break
            entry = self._entries[name]
            if entry.pins:
                continue
            del self._entries[name]
            entry.path.unlink(missing_ok=True)
            self.bytes -= entry.size
            self.stats.evictions += 1
            self._prune_folders(entry.path.parent)

    def _prune_folders(self, folder: Path) -> None:
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent
