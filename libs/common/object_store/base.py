"""The object-store interface every adapter implements: immutable named objects with an MD5, a
storage tier, user metadata and OCI's Archive semantics (an Archive object is unreadable until
a restore completes; a restored copy expires after the hours asked for)."""

from __future__ import annotations

import base64
import builtins
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

import msgspec

from libs.common.errors import StrataError

StorageTier = Literal["Standard", "InfrequentAccess", "Archive"]
ArchivalState = Literal["Archived", "Restoring", "Restored"]
STORAGE_TIERS: tuple[str, ...] = get_args(StorageTier)

# OCI accepts 1..240 hours for a restored copy; 24 is its default.
MIN_RESTORE_HOURS = 1
MAX_RESTORE_HOURS = 240
DEFAULT_RESTORE_HOURS = 24
MAX_NAME_BYTES = 1024  # OCI's limit on an object name (UTF-8)

# User metadata travels as `opc-meta-<key>` HTTP headers, whose names are case-insensitive:
# keys are lower-case so both adapters give back exactly what was put.
_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")
_METADATA_VALUE = re.compile(r"^[\x20-\x7e]{0,1024}$")
# Metadata keys the adapters keep for themselves (e.g. the whole-object MD5 of a multipart
# upload); a caller may not set them and never sees them.
RESERVED_METADATA_PREFIX = "strata-"


class ObjectStoreError(StrataError):
    """An object-store call failed (after the adapter's own retries)."""

    code = "object_store_failed"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.service_code = code  # the store's own error code (OCI's, e.g. NotRestored)


class ObjectNotFound(ObjectStoreError):
    """No object has this name."""

    code = "object_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"object not found: {name}", status=404, code="ObjectNotFound")
        self.name = name


class ObjectArchived(ObjectStoreError):
    """The object is in the Archive tier and not (yet) restored: restore it, then read it."""

    code = "object_archived"

    def __init__(self, name: str, archival_state: str) -> None:
        detail = "a restore is in progress" if archival_state == "Restoring" else "restore it first"
        super().__init__(
            f"object is archived ({archival_state}): {name}; {detail}",
            status=409,
            code="NotRestored",
        )
        self.name = name
        self.archival_state = archival_state


class ObjectChecksumMismatch(ObjectStoreError):
    """The bytes do not have the MD5 the caller (or the stored object) says they have."""

    code = "object_checksum_mismatch"

    def __init__(self, name: str, expected_md5: str, actual_md5: str) -> None:
        super().__init__(
            f"MD5 mismatch for {name}: expected {expected_md5}, got {actual_md5}",
            status=400,
            code="UnmatchedContentMD5",
        )
        self.name = name
        self.expected_md5 = expected_md5
        self.actual_md5 = actual_md5


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a store knows about one object.

    `md5` is the base64 MD5 of the whole content (OCI's Content-MD5 form). `list()` may leave it
    None for an OCI multipart object (OCI lists a multipart checksum instead); `head()` always
    has it for objects Strata wrote. `restored_until` is when a restored copy of an Archive
    object expires and the object is Archived again (OCI's `time-of-archival` header).
    `metadata` is filled by `head()` and `put()`, empty from `list()`.
    """

    name: str
    size: int
    etag: str
    md5: str | None
    storage_tier: str
    archival_state: str | None = None
    restored_until: datetime | None = None
    time_modified: datetime | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def time_of_archival(self) -> datetime | None:
        """OCI's name for `restored_until`: when a restored object returns to Archived."""
        return self.restored_until

    @property
    def readable(self) -> bool:
        """Whether `get` would return the bytes now (not an unrestored Archive object)."""
        return self.storage_tier != "Archive" or self.archival_state == "Restored"


ByteRange = tuple[int, int | None]


class ObjectStore(ABC):
    """An async object store. Adapters: `FileObjectStore` (file://), `OciObjectStore` (oci://).

    Names are OCI object names (UTF-8, up to 1024 bytes, `/` is an ordinary character used as
    a folder separator by convention). Writes are atomic: a reader sees the old object or the
    new one, never a mix. Use `async with` (or `close()`) to release threads and connections.
    """

    url: str

    @abstractmethod
    async def put(
        self,
        name: str,
        data: bytes | Path,
        *,
        storage_tier: StorageTier = "Standard",
        content_md5: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Store `data` (bytes, or a file streamed from disk) as `name`, replacing any object of
        that name. With `content_md5` (base64) the write fails with `ObjectChecksumMismatch`
        unless the bytes have that MD5, and nothing is stored."""

    @abstractmethod
    async def get(self, name: str, *, byte_range: ByteRange | None = None) -> bytes:
        """The object's bytes, or `data[start:stop]` for `byte_range=(start, stop)` (stop None:
        to the end; a negative start with stop None: the last -start bytes). Raises
        `ObjectNotFound`, or `ObjectArchived` for an Archive object that is not restored."""

    @abstractmethod
    async def get_to_file(self, name: str, path: Path) -> ObjectInfo:
        """Stream the object into `path` (written atomically, MD5 verified), for files too large
        to hold in memory. Same errors as `get`."""

    @abstractmethod
    async def head(self, name: str) -> ObjectInfo:
        """The object's size, etag, MD5, tier, archival state and metadata; `ObjectNotFound`."""

    @abstractmethod
    async def delete(self, name: str, *, missing_ok: bool = False) -> None:
        """Delete the object; `ObjectNotFound` if there is none (unless `missing_ok`)."""

    @abstractmethod
    async def set_storage_tier(self, name: str, storage_tier: StorageTier) -> None:
        """Move the object to another tier in place. Leaving Archive needs a completed restore
        (`ObjectArchived` otherwise), as on OCI."""

    @abstractmethod
    async def restore(self, name: str, hours: int = DEFAULT_RESTORE_HOURS) -> None:
        """Start restoring an Archive object; once done it is readable for `hours`. Restoring a
        restored object extends it. `ObjectStoreError` if the object is not in Archive."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose name starts with `prefix`, in name order, fetched page by page."""

    @abstractmethod
    async def close(self) -> None:
        """Release the store's threads and connections."""

    async def exists(self, name: str) -> bool:
        """Whether an object of this name exists (in any tier)."""
        try:
            await self.head(name)
        except ObjectNotFound:
            return False
        return True

    async def names(self, prefix: str = "") -> builtins.list[str]:
        """The names of every object under `prefix`, in name order."""
        return [info.name async for info in self.list(prefix)]

    async def __aenter__(self) -> ObjectStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def md5_base64(data: bytes) -> str:
    """The base64 MD5 of `data`, the form OCI's Content-MD5 uses."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def validate_name(name: str) -> None:
    """Reject names OCI would reject (empty, too long, control characters)."""
    if not name or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"object name must be 1..{MAX_NAME_BYTES} UTF-8 bytes: {name!r}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise ValueError(f"object name contains a control character: {name!r}")


def validate_tier(storage_tier: str) -> StorageTier:
    """The tier, checked against OCI's three storage tiers."""
    if storage_tier not in STORAGE_TIERS:
        raise ValueError(
            f"storage tier must be one of {', '.join(STORAGE_TIERS)}: {storage_tier!r}"
        )
    return storage_tier  # type: ignore[return-value]


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """User metadata as the stores keep it: lower-case keys, printable ASCII values."""
    checked: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not _METADATA_KEY.match(key):
            raise ValueError(
                f"metadata key must be lower-case letters, digits, '-' or '_': {key!r}"
            )
        if key.startswith(RESERVED_METADATA_PREFIX):
            raise ValueError(f"metadata keys starting {RESERVED_METADATA_PREFIX!r} are reserved")
        if not isinstance(value, str) or not _METADATA_VALUE.match(value):
            raise ValueError(f"metadata value must be printable ASCII: {key}={value!r}")
        checked[key] = value
    return checked


def validate_restore_hours(hours: int) -> int:
    """Hours a restored copy stays readable, within OCI's bounds."""
    if not MIN_RESTORE_HOURS <= hours <= MAX_RESTORE_HOURS:
        raise ValueError(f"restore hours must be {MIN_RESTORE_HOURS}..{MAX_RESTORE_HOURS}: {hours}")
    return hours


def resolve_byte_range(byte_range: ByteRange, size: int) -> tuple[int, int]:
    """`byte_range` as absolute [start, stop) offsets clamped to an object of `size` bytes,
    with Python slice semantics (an empty result when start >= stop)."""
    start, stop = byte_range
    if start < 0:
        if stop is not None:
            raise ValueError("a negative (suffix) range start needs stop=None")
        return max(size + start, 0), size
    if stop is None:
        return min(start, size), size
    if stop < start:
        raise ValueError(f"byte range stop {stop} is before start {start}")
    return min(start, size), min(stop, size)


def check_byte_range(byte_range: ByteRange) -> None:
    """Reject ranges `resolve_byte_range` would, before any I/O."""
    resolve_byte_range(byte_range, 0)
