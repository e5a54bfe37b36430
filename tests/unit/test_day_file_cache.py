"""The local day-file cache stays within its byte bound (least recently used parts go first),
never evicts a part an open scan is reading, downloads each part once however many scans ask
for it, survives a restart, and refuses a download whose MD5 differs from the catalog's."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import pytest

from libs.common.day_files import DayFileCache, DayPart, part_object_name
from libs.common.object_store import ObjectChecksumMismatch, ObjectNotFound
from libs.common.object_store.file_store import FileObjectStore

PART_BYTES = 1000
PART_IDS = [f"01HX{n:022d}" for n in range(6)]


async def make_parts(store: FileObjectStore) -> list[DayPart]:
    parts = []
    for number, part_id in enumerate(PART_IDS):
        name = part_object_name("acme", date(2024, 3, 1 + number), part_id)
        info = await store.put(name, bytes([number]) * PART_BYTES)
        parts.append(
            DayPart(
                part_id=part_id,
                project_id="acme",
                day=date(2024, 3, 1 + number),
                object_name=name,
                kind="export",
                state="active",
                xid_from=0,
                xid_to=10,
                md5=info.md5,
            )
        )
    return parts


def bytes_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


async def use(cache: DayFileCache, *parts: DayPart) -> list[Path]:
    paths = await cache.acquire(list(parts))
    cache.release(list(parts))
    return paths


async def test_bound_holds_and_least_recently_used_parts_go_first(tmp_path: Path) -> None:
    async with FileObjectStore(tmp_path / "objects") as store:
        p = await make_parts(store)
        cache = DayFileCache(tmp_path / "cache", int(PART_BYTES * 2.5), store)
        for part in (p[0], p[1], p[2]):
            await use(cache, part)
            assert cache.bytes <= cache.max_bytes
            assert bytes_on_disk(tmp_path / "cache") == cache.bytes
        assert p[0].object_name not in cache  # the oldest went when the third arrived
        await use(cache, p[1])  # p[1] is now more recent than p[2]
        await use(cache, p[3])
        assert p[1].object_name in cache and p[3].object_name in cache
        assert p[2].object_name not in cache
        assert bytes_on_disk(tmp_path / "cache") <= cache.max_bytes
        assert (cache.stats.hits, cache.stats.misses) == (1, 4)
        path = (await use(cache, p[0]))[0]  # evicted earlier: downloaded again
        assert path.read_bytes() == bytes([0]) * PART_BYTES
        assert cache.stats.misses == 5 and cache.stats.evictions == 3


async def test_parts_in_use_are_kept_until_released(tmp_path: Path) -> None:
    async with FileObjectStore(tmp_path / "objects") as store:
        p = await make_parts(store)
        cache = DayFileCache(tmp_path / "cache", int(PART_BYTES * 2.5), store)
        held = p[:4]
        paths = await cache.acquire(held)
        # One scan needs more than the bound: every file it reads stays while it reads.
        assert all(path.exists() for path in paths)
        await use(cache, p[4])  # another scan meanwhile must not take them away
        assert all(path.exists() for path in paths)
        cache.release(held)
        assert cache.bytes <= cache.max_bytes
        assert bytes_on_disk(tmp_path / "cache") == cache.bytes


async def test_concurrent_scans_share_one_download(tmp_path: Path) -> None:
    async with FileObjectStore(tmp_path / "objects") as store:
        p = await make_parts(store)
        cache = DayFileCache(tmp_path / "cache", 10 * PART_BYTES, store)
        results = await asyncio.gather(*(cache.acquire([p[0], p[1]]) for _ in range(5)))
        assert len({tuple(r) for r in results}) == 1
        assert cache.stats.misses == 2 and cache.stats.bytes_downloaded == 2 * PART_BYTES
        for _ in range(5):
            cache.release([p[0], p[1]])


async def test_a_restart_finds_the_cached_parts(tmp_path: Path) -> None:
    async with FileObjectStore(tmp_path / "objects") as store:
        p = await make_parts(store)
        first = DayFileCache(tmp_path / "cache", 10 * PART_BYTES, store)
        for part in p[:3]:
            await use(first, part)
        second = DayFileCache(tmp_path / "cache", int(PART_BYTES * 2.5), store)
        assert second.bytes <= second.max_bytes  # trimmed to the new, smaller bound
        await use(second, p[2])
        assert second.stats.misses == 0  # the most recent part survived the restart


async def test_a_download_that_differs_from_the_catalog_is_refused(tmp_path: Path) -> None:
    async with FileObjectStore(tmp_path / "objects") as store:
        p = await make_parts(store)
        wrong = DayPart(**{**{f: getattr(p[0], f) for f in p[0].__struct_fields__}, "md5": "x"})
        cache = DayFileCache(tmp_path / "cache", 10 * PART_BYTES, store)
        with pytest.raises(ObjectChecksumMismatch):
            await cache.acquire([wrong])
        assert bytes_on_disk(tmp_path / "cache") == 0 and cache.bytes == 0


async def test_a_failed_acquire_pins_nothing(tmp_path: Path) -> None:
    async with FileObjectStore(tmp_path / "objects") as store:
        p = await make_parts(store)
        await store.delete(p[1].object_name)  # superseded and deleted after planning
        cache = DayFileCache(tmp_path / "cache", PART_BYTES, store)
        with pytest.raises(ObjectNotFound):
            await cache.acquire([p[0], p[1]])
        await use(cache, p[2])  # p[0] must be evictable again
        assert p[0].object_name not in cache and cache.bytes <= cache.max_bytes
