"""Open an object store from its URL: `file:///path` or `oci://<namespace>/<bucket>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from libs.common.object_store.base import ObjectStore
from libs.common.object_store.file_store import Clock, FileObjectStore, utc_now
from libs.common.settings import TieringSettings


class ObjectStoreOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Everything but the URL: thread pool, file-store restore delay, OCI auth and tuning.
    `options_from_settings` fills it from TieringSettings; tests build it directly."""

    threads: int = 8
    list_page_size: int = 1000  # objects per listing request (OCI allows up to 1000)
    file_restore_delay_s: float = 0.0
    oci_auth: str = "config"
    oci_config_file: str = "~/.oci/config"
    oci_profile: str = "DEFAULT"
    oci_endpoint: str = ""
    oci_kms_key_id: str = ""
    oci_multipart_threshold: int = 128 * 1024 * 1024
    oci_part_size: int = 128 * 1024 * 1024
    oci_retry_attempts: int = 8
    oci_retry_base_sleep_s: float = 1.0


def options_from_settings(settings: TieringSettings) -> ObjectStoreOptions:
    """The object-store options an operator configured (STRATA_OCI_*, STRATA_OBJECT_STORE_*)."""
    return ObjectStoreOptions(
        threads=settings.object_store_threads,
        file_restore_delay_s=settings.file_restore_delay_s,
        oci_auth=settings.oci_auth,
        oci_config_file=settings.oci_config_file,
        oci_profile=settings.oci_profile,
        oci_endpoint=settings.oci_endpoint,
        oci_kms_key_id=settings.oci_kms_key_id,
    )


def default_store_url(data_dir: str | Path) -> str:
    """The embedded default: a file store under the data directory."""
    return f"file://{(Path(data_dir) / 'objects').resolve()}"


def open_object_store(
    url: str,
    options: ObjectStoreOptions | None = None,
    *,
    clock: Clock = utc_now,
    signer: Any = None,
) -> ObjectStore:
    """The store `url` names. `clock` drives the file store's restore timing (tests move it);
    `signer` replaces the configured OCI signer (any `oci` signer). Opening an oci:// store
    reads its config file or fetches principal tokens, so call it at start-up."""
    options = options or ObjectStoreOptions()
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"a file store URL is file:///absolute/path: {url!r}")
        return FileObjectStore(
            Path(unquote(parts.path)),
            restore_delay_s=options.file_restore_delay_s,
            threads=options.threads,
            list_page_size=options.list_page_size,
            clock=clock,
            url=url,
        )
    if parts.scheme == "oci":
        bucket = parts.path.strip("/")
        if not parts.netloc or not bucket or "/" in bucket or parts.query:
            raise ValueError(f"an OCI store URL is oci://<namespace>/<bucket>: {url!r}")
        # Imported here: the SDK is large and file-store deployments never need it.
        from libs.common.object_store.oci_store import OciObjectStore, OciStoreConfig

        config = OciStoreConfig(
            namespace=parts.netloc,
            bucket=bucket,
            auth=options.oci_auth,
            config_file=options.oci_config_file,
            profile=options.oci_profile,
            endpoint=options.oci_endpoint,
            kms_key_id=options.oci_kms_key_id,
            threads=options.threads,
            multipart_threshold=options.oci_multipart_threshold,
            part_size=options.oci_part_size,
            list_page_size=options.list_page_size,
            retry_attempts=options.oci_retry_attempts,
            retry_base_sleep_s=options.oci_retry_base_sleep_s,
        )
        return OciObjectStore(config, signer=signer)
    raise ValueError(f"object store URL must start file:// or oci://: {url!r}")


def object_store_from_settings(settings: TieringSettings) -> ObjectStore:
    """The tiering service's store: STRATA_OBJECT_STORE, or a file store under the data dir."""
    url = settings.object_store or default_store_url(settings.data_dir)
    return open_object_store(url, options_from_settings(settings))
