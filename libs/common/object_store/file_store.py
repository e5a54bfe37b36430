"""`file:///path`: a local directory with the object-store semantics of OCI (the embedded
default, and the reference the OCI adapter's contract tests are held to).

Layout under the root:
  objects/<name segments>/@object/meta.json   name, size, MD5, etag, tier, restore state
  objects/<name segments>/@object/data-<id>   the bytes meta.json points at
  staging/                                    data being written, renamed in when complete
  .lock                                       serialises commits (flock, across processes)

A write streams into staging, then under the lock moves the data file in and replaces
meta.json with a rename: that rename is the commit, so a reader sees the old object or the new
one, and a crash leaves at most an unreferenced file that the next commit there removes.
Segments are percent-encoded and `@` never survives encoding, so `@object` can not collide with
a folder of another name (`a` and `a/b` may both exist, as on OCI).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote, unquote

import msgspec

from libs.common.object_store.base import (
    DEFAULT_RESTORE_HOURS,
    ByteRange,
    ObjectArchived,
    ObjectChecksumMismatch,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    StorageTier,
    check_byte_range,
    md5_base64,
    resolve_byte_range,
    validate_metadata,
    validate_name,
    validate_restore_hours,
    validate_tier,
)

T = TypeVar("T")
Clock = Callable[[], datetime]

_OBJECT_DIR = "@object"
_META = "meta.json"
_CHUNK = 1024 * 1024
_SAFE = "=+,-_.~"  # kept readable in folder names (project=acme, dt=2024-01-01)
_MAX_SEGMENT = 200  # bytes; file systems allow 255 per path component
_STALE_STAGING_S = 3600.0  # staging files this old belong to a crashed writer


def utc_now() -> datetime:
    """The wall clock in UTC (the default clock; tests pass their own)."""
    return datetime.now(UTC)


class _StoredObject(msgspec.Struct, kw_only=True):
    """meta.json: everything about one object except its bytes."""

    name: str
    data_file: str
    size: int
    md5: str
    etag: str
    storage_tier: str
    metadata: dict[str, str]
    time_modified: datetime
    # Archive restores: readable from restore_ready_at until restored_until.
    restore_ready_at: datetime | None = None
    restored_until: datetime | None = None

    def archival_state(self, now: datetime) -> str | None:
        if self.storage_tier != "Archive":
            return None
        if self.restore_ready_at is None or self.restored_until is None:
            return "Archived"
        if now >= self.restored_until:
            return "Archived"  # the restored copy expired
        if now < self.restore_ready_at:
            return "Restoring"
        return "Restored"

    def info(self, now: datetime, *, with_metadata: bool = True) -> ObjectInfo:
        state = self.archival_state(now)
        return ObjectInfo(
            name=self.name,
            size=self.size,
            etag=self.etag,
            md5=self.md5,
            storage_tier=self.storage_tier,
            archival_state=state,
            restored_until=self.restored_until if state == "Restored" else None,
            time_modified=self.time_modified,
            metadata=dict(self.metadata) if with_metadata else {},
        )


_decode_meta = msgspec.json.Decoder(_StoredObject)


def _encode_segment(segment: str) -> str:
    if segment == "":
        return "@empty"
    if segment in (".", ".."):
        return segment.replace(".", "%2E")
    encoded = quote(segment, safe=_SAFE)
    if len(encoded) > _MAX_SEGMENT:
        # Too long for one path component: a readable head plus a digest of the whole.
        digest = hashlib.sha1(segment.encode("utf-8")).hexdigest()
        encoded = f"{encoded[:150]}@{digest}"
    return encoded


def _decode_segment(encoded: str) -> str | None:
    """The name segment a folder stands for; None when only meta.json knows (long segments)."""
    if encoded == "@empty":
        return ""
    if "@" in encoded:
        return None
    return unquote(encoded)


class FileObjectStore(ObjectStore):
    """Objects in a local directory, with OCI's tiers and Archive restore semantics.

    `restore_delay_s` is how long a restore takes (OCI: up to an hour; 0 in tests). `clock`
    tells the time for restores and their expiry, so tests can move it forward.
    """

    def __init__(
        self,
        root: Path,
        *,
        restore_delay_s: float = 0.0,
        threads: int = 8,
        list_page_size: int = 1000,
        clock: Clock = utc_now,
        url: str | None = None,
    ) -> None:
        self.root = root.resolve()
        self.url = url or f"file://{self.root}"
        self.restore_delay = timedelta(seconds=restore_delay_s)
        self.clock = clock
        self.list_page_size = list_page_size
        self._objects = self.root / "objects"
        self._staging = self.root / "staging"
        self._lock_path = self.root / ".lock"
        for directory in (self._objects, self._staging):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock_path.touch(exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="file-store")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- paths and locking ------------------------------------------------------------------

    def _object_dir(self, name: str) -> Path:
        return self._objects.joinpath(*map(_encode_segment, name.split("/")), _OBJECT_DIR)

    @contextlib.contextmanager
    def _commit_lock(self) -> Iterator[None]:
        # flock on a fresh descriptor: excludes other threads of this process as well as
        # other processes sharing the directory (tiering and query both use the store).
        with open(self._lock_path, "rb") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _read_meta(self, name: str) -> _StoredObject:
        try:
            raw = (self._object_dir(name) / _META).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(name) from None
        return _decode_meta.decode(raw)

    def _write_meta(self, object_dir: Path, meta: _StoredObject) -> None:
        staged = self._staging / f"meta-{secrets.token_hex(8)}"
        with open(staged, "wb") as f:
            f.write(msgspec.json.encode(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, object_dir / _META)
        _fsync_dir(object_dir)

    def _open_data(self, name: str) -> tuple[_StoredObject, IO[bytes]]:
        """meta.json and an open handle on the data it names (retrying if a concurrent
        overwrite removed that data file between the two reads)."""
        for _ in range(5):
            meta = self._read_meta(name)
            state = meta.archival_state(self.clock())
            if state not in (None, "Restored"):
                raise ObjectArchived(name, state or "Archived")
            try:
                return meta, open(self._object_dir(name) / meta.data_file, "rb")
            except FileNotFoundError:
                continue
        raise ObjectStoreError(f"object {name} keeps changing while being read")

    # -- writes ------------------------------------------------------------------------------

    async def put(
        self,
        name: str,
        data: bytes | Path,
        *,
        storage_tier: StorageTier = "Standard",
        content_md5: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        validate_name(name)
        tier = validate_tier(storage_tier)
        user_metadata = validate_metadata(metadata)
        return await self._run(self._put, name, data, tier, content_md5, user_metadata)

    def _put(
        self,
        name: str,
        data: bytes | Path,
        storage_tier: str,
        content_md5: str | None,
        metadata: dict[str, str],
    ) -> ObjectInfo:
        staged = self._staging / f"data-{secrets.token_hex(8)}"
        try:
            size, md5 = _write_staged(staged, data)
            if content_md5 is not None and content_md5 != md5:
                raise ObjectChecksumMismatch(name, content_md5, md5)
            with self._commit_lock():
                object_dir = self._object_dir(name)
                object_dir.mkdir(parents=True, exist_ok=True)
                data_file = f"data-{secrets.token_hex(8)}"
                os.replace(staged, object_dir / data_file)
                meta = _StoredObject(
                    name=name,
                    data_file=data_file,
                    size=size,
                    md5=md5,
                    etag=uuid.uuid4().hex,
                    storage_tier=storage_tier,
                    metadata=metadata,
                    time_modified=self.clock(),
                )
                self._write_meta(object_dir, meta)
                self._remove_unreferenced(object_dir, data_file)
        finally:
            staged.unlink(missing_ok=True)
        self._remove_stale_staging()
        return meta.info(self.clock())

    def _remove_unreferenced(self, object_dir: Path, data_file: str) -> None:
        """Data files meta.json no longer names: the replaced version, or a crash's leftover
        (under the commit lock, every data file but the committed one is such)."""
        for entry in object_dir.iterdir():
            if entry.name.startswith("data-") and entry.name != data_file:
                entry.unlink(missing_ok=True)

    def _remove_stale_staging(self) -> None:
        cutoff = time.time() - _STALE_STAGING_S
        for entry in self._staging.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()

    async def delete(self, name: str, *, missing_ok: bool = False) -> None:
        validate_name(name)
        await self._run(self._delete, name, missing_ok)

    def _delete(self, name: str, missing_ok: bool) -> None:
        with self._commit_lock():
            object_dir = self._object_dir(name)
            try:
                (object_dir / _META).unlink()
            except (FileNotFoundError, NotADirectoryError):
                if missing_ok:
                    return
                raise ObjectNotFound(name) from None
            shutil.rmtree(object_dir, ignore_errors=True)
            # Prune now-empty folders up to objects/ (under the lock, so no writer is
            # between creating a folder and filling it).
            parent = object_dir.parent
            while parent != self._objects:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    async def set_storage_tier(self, name: str, storage_tier: StorageTier) -> None:
        validate_name(name)
        tier = validate_tier(storage_tier)
        await self._run(self._set_storage_tier, name, tier)

    def _set_storage_tier(self, name: str, storage_tier: str) -> None:
        with self._commit_lock():
            meta = self._read_meta(name)
            if meta.storage_tier == storage_tier:
                return
            if meta.storage_tier == "Archive":
                state = meta.archival_state(self.clock())
                if state != "Restored":
                    raise ObjectArchived(name, state or "Archived")
            meta.storage_tier = storage_tier
            meta.restore_ready_at = None
            meta.restored_until = None
            self._write_meta(self._object_dir(name), meta)

    async def restore(self, name: str, hours: int = DEFAULT_RESTORE_HOURS) -> None:
        validate_name(name)
        validate_restore_hours(hours)
        await self._run(self._restore, name, hours)

    def _restore(self, name: str, hours: int) -> None:
        with self._commit_lock():
            meta = self._read_meta(name)
            now = self.clock()
            state = meta.archival_state(now)
            if state is None:
                raise ObjectStoreError(
                    f"object is not in the Archive tier: {name}", status=400, code="NotArchived"
                )
            if state == "Restored":
                # A restore of a restored object extends how long it stays readable.
                assert meta.restored_until is not None
                meta.restored_until = max(meta.restored_until, now + timedelta(hours=hours))
            elif state == "Restoring":
                assert meta.restore_ready_at is not None
                meta.restored_until = meta.restore_ready_at + timedelta(hours=hours)
            else:
                meta.restore_ready_at = now + self.restore_delay
                meta.restored_until = meta.restore_ready_at + timedelta(hours=hours)
            self._write_meta(self._object_dir(name), meta)

    # -- reads -------------------------------------------------------------------------------

    async def head(self, name: str) -> ObjectInfo:
        validate_name(name)
        meta = await self._run(self._read_meta, name)
        return meta.info(self.clock())

    async def get(self, name: str, *, byte_range: ByteRange | None = None) -> bytes:
        validate_name(name)
        if byte_range is not None:
            check_byte_range(byte_range)
        return await self._run(self._get, name, byte_range)

    def _get(self, name: str, byte_range: ByteRange | None) -> bytes:
        meta, handle = self._open_data(name)
        with handle:
            if byte_range is None:
                data = handle.read()
                actual = md5_base64(data)
                if actual != meta.md5:
                    raise ObjectChecksumMismatch(name, meta.md5, actual)
                return data
            start, stop = resolve_byte_range(byte_range, meta.size)
            handle.seek(start)
            return handle.read(max(stop - start, 0))

    async def get_to_file(self, name: str, path: Path) -> ObjectInfo:
        validate_name(name)
        return await self._run(self._get_to_file, name, path)

    def _get_to_file(self, name: str, path: Path) -> ObjectInfo:
        meta, handle = self._open_data(name)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            with handle, open(partial, "wb") as out:
                digest = hashlib.md5()
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            actual = base64.b64encode(digest.digest()).decode("ascii")
            if actual != meta.md5:
                raise ObjectChecksumMismatch(name, meta.md5, actual)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return meta.info(self.clock())

    def _names_under(self, prefix: str) -> list[str]:
        """Every object name starting with `prefix`, sorted as OCI lists them (by code point)."""
        folders = prefix.split("/")[:-1]  # complete segments narrow the walk
        top = self._objects.joinpath(*map(_encode_segment, folders))
        found: list[str] = []
        for directory, subdirs, files in os.walk(top):
            if os.path.basename(directory) != _OBJECT_DIR:
                continue
            subdirs.clear()
            if _META not in files:
                continue  # being deleted, or a write that never committed
            relative = Path(directory).relative_to(self._objects).parts[:-1]
            segments = [_decode_segment(part) for part in relative]
            if any(segment is None for segment in segments):
                try:
                    name = _decode_meta.decode(Path(directory, _META).read_bytes()).name
                except FileNotFoundError:
                    continue
            else:
                name = "/".join(s for s in segments if s is not None)
            if name.startswith(prefix):
                found.append(name)
        found.sort()
        return found

    def _infos(self, names: list[str]) -> list[ObjectInfo]:
        now = self.clock()
        infos = []
        for name in names:
            try:
                infos.append(self._read_meta(name).info(now, with_metadata=False))
            except ObjectNotFound:
                continue  # deleted since the walk
        return infos

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        names = await self._run(self._names_under, prefix)
        for start in range(0, len(names), self.list_page_size):
            page = await self._run(self._infos, names[start : start + self.list_page_size])
            for info in page:
                yield info


def _write_staged(staged: Path, data: bytes | Path) -> tuple[int, str]:
    """Copy `data` into `staged`, durably; its size and base64 MD5."""
    digest = hashlib.md5()
    size = 0
    with open(staged, "wb") as out:
        if isinstance(data, Path):
            with open(data, "rb") as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        else:
            digest.update(data)
            out.write(data)
            size = len(data)
        out.flush()
        os.fsync(out.fileno())
    return size, base64.b64encode(digest.digest()).decode("ascii")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
