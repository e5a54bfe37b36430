"""Cold and archive storage behind one small async interface (docs/object-store.md).

store = object_store_from_settings(settings)   # or open_object_store("file:///...")
async with store:
    info = await store.put("events/v1/.../part-1.parquet", path, storage_tier="Standard")
    await store.get_to_file(info.name, local_path)
"""

from libs.common.object_store.base import (
    ArchivalState,
    ByteRange,
    ObjectArchived,
    ObjectChecksumMismatch,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    StorageTier,
    md5_base64,
)
from libs.common.object_store.store_url import (
    ObjectStoreOptions,
    default_store_url,
    object_store_from_settings,
    open_object_store,
    options_from_settings,
)

__all__ = [
    "ArchivalState",
    "ByteRange",
    "ObjectArchived",
    "ObjectChecksumMismatch",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreOptions",
    "StorageTier",
    "default_store_url",
    "md5_base64",
    "object_store_from_settings",
    "open_object_store",
    "options_from_settings",
]
