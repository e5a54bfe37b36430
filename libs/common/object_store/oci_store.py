"""`oci://<namespace>/<bucket>`: OCI Object Storage through the official `oci` SDK.

The SDK is synchronous, so every call runs in a bounded thread pool (`threads` workers; each
worker thread has its own `ObjectStorageClient`, sharing one signer, so no HTTP session is used
by two threads at once). Retries with backoff on 429, 5xx, timeouts and connection errors are
the SDK's own (`RetryStrategyBuilder`), with a circuit breaker per store.

Large objects use the multipart API directly (create, upload parts, commit; abort on failure)
rather than `UploadManager`: parts then run in this store's own bounded pool (UploadManager
starts its own threads and resizes the client's connection pool), each part carries its own
Content-MD5, and the whole object's MD5 is recorded as metadata so `head()` can report it
(OCI has no Content-MD5 for multipart objects).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import email.utils
import functools
import hashlib
import io
import math
import os
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import oci.auth.signers
import oci.circuit_breaker
import oci.config
import oci.exceptions
import oci.object_storage
import oci.retry
import oci.signer
import structlog
import urllib3.exceptions
from circuitbreaker import CircuitBreakerError
from oci._vendor import requests as oci_requests

from libs.common.object_store.base import (
    DEFAULT_RESTORE_HOURS,
    RESERVED_METADATA_PREFIX,
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
    validate_metadata,
    validate_name,
    validate_restore_hours,
    validate_tier,
)

T = TypeVar("T")
log = structlog.get_logger("object_store.oci")

MEBIBYTE = 1024 * 1024
MAX_PARTS = 10_000  # OCI's limit on parts per multipart upload
_CHUNK = MEBIBYTE
# The whole-object MD5 of a multipart upload, kept as user metadata (opc-meta-...).
_MULTIPART_MD5_KEY = f"{RESERVED_METADATA_PREFIX}content-md5"
_LIST_FIELDS = "name,size,etag,md5,timeCreated,timeModified,storageTier,archivalState"
_REFUSAL_STATUSES = frozenset({400, 403, 409})  # how OCI refuses reads of archived objects
OCI_AUTH_MODES = ("config", "instance_principal", "resource_principal", "workload_identity")


class OciStoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach one bucket. Defaults follow the SDK's own (retries, part size)."""

    namespace: str
    bucket: str
    auth: str = "config"  # one of OCI_AUTH_MODES
    config_file: str = "~/.oci/config"
    profile: str = "DEFAULT"
    endpoint: str = ""  # empty: derived from the region
    kms_key_id: str = ""  # Vault key OCID for server-side encryption of every write
    threads: int = 8
    multipart_threshold: int = 128 * MEBIBYTE  # larger objects are uploaded in parts
    part_size: int = 128 * MEBIBYTE
    list_page_size: int = 1000
    retry_attempts: int = 8
    retry_base_sleep_s: float = 1.0
    retry_max_sleep_s: float = 30.0
    retry_total_s: float = 600.0
    timeout_s: tuple[float, float] = (10.0, 300.0)  # connect, read


class _FilePart:
    """A read-only, seekable window onto `length` bytes of a file from `offset`: an upload
    part streamed from disk (the SDK rewinds it with seek/tell when it retries)."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._file = open(path, "rb")  # closed by close()
        self._offset = offset
        self._length = length
        self._position = 0
        self._file.seek(offset)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        remaining = self._length - self._position
        if size < 0 or size > remaining:
            size = remaining
        data = self._file.read(size)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = min(max(base + offset, 0), self._length)
        self._file.seek(self._offset + self._position)
        return self._position

    def close(self) -> None:
        self._file.close()


class _Part(msgspec.Struct, frozen=True):
    number: int
    offset: int
    length: int
    md5: str


class OciObjectStore(ObjectStore):
    """One OCI Object Storage bucket behind the `ObjectStore` interface."""

    def __init__(self, config: OciStoreConfig, *, signer: Any = None) -> None:
        if config.auth not in OCI_AUTH_MODES:
            raise ValueError(f"oci auth must be one of {', '.join(OCI_AUTH_MODES)}: {config.auth}")
        self.config = config
        self.url = f"oci://{config.namespace}/{config.bucket}"
        try:
            self._sdk_config, self._signer = _sdk_config_and_signer(config, signer)
        except oci.exceptions.ClientError as exc:  # no config file, a bad key, ...
            raise ObjectStoreError(f"OCI {config.auth} authentication: {exc!r}") from exc
        self._retry_strategy = oci.retry.RetryStrategyBuilder(
            max_attempts=config.retry_attempts,
            total_elapsed_time_seconds=config.retry_total_s,
            retry_base_sleep_time_seconds=config.retry_base_sleep_s,
            retry_max_wait_between_calls_seconds=config.retry_max_sleep_s,
            decorrelated_jitter=config.retry_base_sleep_s,
            service_error_retry_config=oci.retry.retry_checkers.RETRYABLE_STATUSES_AND_CODES,
            service_error_retry_on_any_5xx=True,
        ).get_retry_strategy()
        # The SDK's default breaker is one per process; a store of its own keeps one failing
        # bucket (or a test's injected faults) from tripping every other client.
        self._breaker = oci.circuit_breaker.CircuitBreakerStrategy(
            name=f"strata-object-store-{uuid.uuid4().hex}"
        )
        self._local = threading.local()
        self._clients: builtins.list[Any] = []
        self._clients_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=config.threads, thread_name_prefix="oci-object-store"
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _client(self) -> Any:
        """This worker thread's ObjectStorageClient."""
        client = getattr(self._local, "client", None)
        if client is None:
            kwargs: dict[str, Any] = {
                "signer": self._signer,
                "retry_strategy": self._retry_strategy,
                "circuit_breaker_strategy": self._breaker,
                "timeout": self.config.timeout_s,
            }
            if self.config.endpoint:
                kwargs["service_endpoint"] = self.config.endpoint
            client = oci.object_storage.ObjectStorageClient(self._sdk_config, **kwargs)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    async def _call(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the pool, turning SDK errors into the store's typed errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except oci.exceptions.ServiceError as exc:
            raise _service_error(name, exc) from exc
        except (
            oci.exceptions.ClientError,
            oci_requests.exceptions.RequestException,  # connection errors, timeouts
            urllib3.exceptions.HTTPError,  # the body stream broke off
            CircuitBreakerError,
            oci.exceptions.CircuitBreakerError,
        ) as exc:
            raise ObjectStoreError(f"OCI object storage call failed for {name}: {exc}") from exc

    def _sse(self) -> dict[str, str]:
        return {"opc_sse_kms_key_id": self.config.kms_key_id} if self.config.kms_key_id else {}

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
        size = len(data) if isinstance(data, bytes) else await self._call(name, _file_size, data)
        if size > self.config.multipart_threshold:
            return await self._put_multipart(name, data, size, tier, content_md5, user_metadata)
        md5 = await self._call(name, _md5_of, data)
        if content_md5 is not None and content_md5 != md5:
            raise ObjectChecksumMismatch(name, content_md5, md5)
        headers = await self._call(
            name, self._put_single, name, data, size, md5, tier, user_metadata
        )
        return _written_info(name, size, md5, tier, user_metadata, headers)

    def _put_single(
        self,
        name: str,
        data: bytes | Path,
        size: int,
        md5: str,
        storage_tier: str,
        metadata: dict[str, str],
    ) -> Mapping[str, str]:
        kwargs: dict[str, Any] = {
            "content_length": size,
            # OCI recomputes the MD5 and rejects the write if the bytes changed on the way.
            "content_md5": md5,
            "content_type": "application/octet-stream",
            "storage_tier": storage_tier,
            "opc_meta": metadata,
            **self._sse(),
        }
        client = self._client()
        ns, bucket = self.config.namespace, self.config.bucket
        if isinstance(data, Path):
            with open(data, "rb") as body:
                response = client.put_object(ns, bucket, name, body, **kwargs)
        else:
            response = client.put_object(ns, bucket, name, data, **kwargs)
        return cast(Mapping[str, str], response.headers)  # case-insensitive: keep it

    async def _put_multipart(
        self,
        name: str,
        data: bytes | Path,
        size: int,
        storage_tier: str,
        content_md5: str | None,
        metadata: dict[str, str],
    ) -> ObjectInfo:
        part_size = max(self.config.part_size, math.ceil(size / MAX_PARTS))
        md5, parts = await self._call(name, _digest_parts, data, size, part_size)
        if content_md5 is not None and content_md5 != md5:
            raise ObjectChecksumMismatch(name, content_md5, md5)
        upload_id = await self._call(
            name, self._create_multipart, name, storage_tier, {**metadata, _MULTIPART_MD5_KEY: md5}
        )
        try:
            etags: dict[int, asyncio.Task[str]] = {}
            # The pool bounds how many parts are in flight; a failed part cancels the rest.
            async with asyncio.TaskGroup() as group:
                for part in parts:
                    etags[part.number] = group.create_task(
                        self._call(name, self._upload_part, name, upload_id, data, part)
                    )
            committed = [(number, task.result()) for number, task in sorted(etags.items())]
            headers = await self._call(name, self._commit_multipart, name, upload_id, committed)
        except BaseException as exc:
            await asyncio.shield(self._abort_multipart(name, upload_id))
            if isinstance(exc, BaseExceptionGroup):
                first = exc.exceptions[0]
                raise first from exc
            raise
        return _written_info(name, size, md5, storage_tier, metadata, headers)

    def _create_multipart(self, name: str, storage_tier: str, metadata: dict[str, str]) -> str:
        details = oci.object_storage.models.CreateMultipartUploadDetails(
            object=name,
            storage_tier=storage_tier,
            content_type="application/octet-stream",
            metadata={f"opc-meta-{key}": value for key, value in metadata.items()},
        )
        response = self._client().create_multipart_upload(
            self.config.namespace, self.config.bucket, details, **self._sse()
        )
        return str(response.data.upload_id)

    def _upload_part(self, name: str, upload_id: str, data: bytes | Path, part: _Part) -> str:
        client = self._client()
        body: bytes | _FilePart
        if isinstance(data, Path):
            body = _FilePart(data, part.offset, part.length)
        else:
            body = data[part.offset : part.offset + part.length]
        try:
            response = client.upload_part(
                self.config.namespace,
                self.config.bucket,
                name,
                upload_id,
                part.number,
                body,
                content_length=part.length,
                content_md5=part.md5,
                **self._sse(),
            )
        finally:
            if isinstance(body, _FilePart):
                body.close()
        return str(response.headers["etag"])

    def _commit_multipart(
        self, name: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> Mapping[str, str]:
        models = oci.object_storage.models
        details = models.CommitMultipartUploadDetails(
            parts_to_commit=[
                models.CommitMultipartUploadPartDetails(part_num=number, etag=etag)
                for number, etag in parts
            ]
        )
        response = self._client().commit_multipart_upload(
            self.config.namespace, self.config.bucket, name, upload_id, details
        )
        return cast(Mapping[str, str], response.headers)  # case-insensitive: keep it

    async def _abort_multipart(self, name: str, upload_id: str) -> None:
        """Best effort: an upload left behind costs storage until OCI's lifecycle removes it."""
        try:
            await self._call(
                name,
                lambda: self._client().abort_multipart_upload(
                    self.config.namespace, self.config.bucket, name, upload_id
                ),
            )
        except ObjectStoreError as exc:
            log.warning("multipart_abort_failed", object=name, upload_id=upload_id, error=str(exc))

    async def delete(self, name: str, *, missing_ok: bool = False) -> None:
        validate_name(name)
        try:
            await self._call(
                name,
                lambda: self._client().delete_object(
                    self.config.namespace, self.config.bucket, name
                ),
            )
        except ObjectNotFound:
            if not missing_ok:
                raise

    async def set_storage_tier(self, name: str, storage_tier: StorageTier) -> None:
        validate_name(name)
        tier = validate_tier(storage_tier)
        details = oci.object_storage.models.UpdateObjectStorageTierDetails(
            object_name=name, storage_tier=tier
        )
        try:
            await self._call(
                name,
                lambda: self._client().update_object_storage_tier(
                    self.config.namespace, self.config.bucket, details
                ),
            )
        except ObjectStoreError as exc:
            raise await self._explain_refusal(name, exc) from exc

    async def restore(self, name: str, hours: int = DEFAULT_RESTORE_HOURS) -> None:
        validate_name(name)
        validate_restore_hours(hours)
        details = oci.object_storage.models.RestoreObjectsDetails(object_name=name, hours=hours)
        await self._call(
            name,
            lambda: self._client().restore_objects(
                self.config.namespace, self.config.bucket, details
            ),
        )

    # -- reads -------------------------------------------------------------------------------

    async def head(self, name: str) -> ObjectInfo:
        validate_name(name)
        response = await self._call(
            name,
            lambda: self._client().head_object(self.config.namespace, self.config.bucket, name),
        )
        return _info_from_headers(name, response.headers)

    async def _explain_refusal(self, name: str, exc: ObjectStoreError) -> ObjectStoreError:
        """`ObjectArchived` (with the current state) when OCI refused a read or a tier change
        because the object is archived and not restored; otherwise `exc` itself. OCI's answer
        differs by call (409 NotRestored on reads, 400 InvalidStorageTier on tier changes), so
        the object's own state decides."""
        if isinstance(exc, ObjectNotFound | ObjectChecksumMismatch):
            return exc
        if exc.status not in _REFUSAL_STATUSES:
            return exc
        try:
            info = await self.head(name)
        except ObjectStoreError:
            return exc
        if info.storage_tier == "Archive" and info.archival_state != "Restored":
            return ObjectArchived(name, info.archival_state or "Archived")
        return exc

    async def get(self, name: str, *, byte_range: ByteRange | None = None) -> bytes:
        validate_name(name)
        header = None
        if byte_range is not None:
            check_byte_range(byte_range)
            start, stop = byte_range
            if stop is not None and stop <= start:
                info = await self.head(name)  # an empty range of an object that must exist
                if not info.readable:
                    raise ObjectArchived(name, info.archival_state or "Archived")
                return b""
            if start < 0:
                header = f"bytes=-{-start}"
            elif stop is None:
                header = f"bytes={start}-"
            else:
                header = f"bytes={start}-{stop - 1}"
        try:
            return await self._call(name, self._get, name, header)
        except ObjectStoreError as exc:
            if exc.status == 416:
                return b""  # the range starts past the end: Python slice semantics
            raise await self._explain_refusal(name, exc) from exc

    def _get(self, name: str, range_header: str | None) -> bytes:
        kwargs = {"range": range_header} if range_header else {}
        response = self._client().get_object(
            self.config.namespace, self.config.bucket, name, **kwargs
        )
        try:
            data = bytes(response.data.content)
        finally:
            response.data.close()
        if range_header is None:
            expected = _whole_md5(response.headers)
            if expected is not None and md5_base64(data) != expected:
                raise ObjectChecksumMismatch(name, expected, md5_base64(data))
        return data

    async def get_to_file(self, name: str, path: Path) -> ObjectInfo:
        validate_name(name)
        try:
            return await self._call(name, self._get_to_file, name, path)
        except ObjectStoreError as exc:
            raise await self._explain_refusal(name, exc) from exc

    def _get_to_file(self, name: str, path: Path) -> ObjectInfo:
        response = self._client().get_object(self.config.namespace, self.config.bucket, name)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        digest = hashlib.md5()
        try:
            with open(partial, "wb") as out:
                for chunk in response.data.raw.stream(_CHUNK, decode_content=False):
                    digest.update(chunk)
                    out.write(chunk)
            info = _info_from_headers(name, response.headers)
            actual = base64.b64encode(digest.digest()).decode("ascii")
            if info.md5 is not None and actual != info.md5:
                raise ObjectChecksumMismatch(name, info.md5, actual)
            os.replace(partial, path)
        finally:
            response.data.close()
            partial.unlink(missing_ok=True)
        return info

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)
        with self._clients_lock:
            for client in self._clients:
                client.base_client.session.close()
            self._clients.clear()

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        start: str | None = None
        while True:
            page = await self._call(prefix, self._list_page, prefix, start)
            for summary in page.objects:
                yield _info_from_summary(summary)
            start = page.next_start_with
            if not start:
                return

    def _list_page(self, prefix: str, start: str | None) -> Any:
        kwargs: dict[str, Any] = {"limit": self.config.list_page_size, "fields": _LIST_FIELDS}
        if prefix:
            kwargs["prefix"] = prefix
        if start:
            kwargs["start"] = start
        response = self._client().list_objects(self.config.namespace, self.config.bucket, **kwargs)
        return response.data


def _sdk_config_and_signer(config: OciStoreConfig, signer: Any) -> tuple[dict[str, Any], Any]:
    """The SDK config dict and request signer for the configured auth mode."""
    if config.auth == "config":
        sdk_config = oci.config.from_file(os.path.expanduser(config.config_file), config.profile)
        return sdk_config, signer or oci.signer.Signer.from_config(sdk_config)
    if signer is None:
        signers = oci.auth.signers
        if config.auth == "instance_principal":
            signer = signers.InstancePrincipalsSecurityTokenSigner()
        elif config.auth == "workload_identity":  # OKE: the pod's service account
            signer = signers.get_oke_workload_identity_resource_principal_signer()
        else:
            signer = signers.get_resource_principals_signer()
    region = getattr(signer, "region", None)
    if not region and not config.endpoint:
        raise ObjectStoreError(f"{config.auth}: no region known; set the endpoint explicitly")
    return ({"region": region} if region else {}), signer


def _service_error(name: str, exc: Any) -> ObjectStoreError:
    status, code = int(exc.status), exc.code
    if status == 404 and code in (None, "ObjectNotFound", "NotFound"):
        return ObjectNotFound(name)
    if status == 409 and code == "NotRestored":
        return ObjectArchived(name, "Archived")
    if status == 400 and (code == "UnmatchedContentMD5" or "MD5" in str(exc.message)):
        return ObjectChecksumMismatch(name, "(sent Content-MD5)", f"(OCI: {exc.message})")
    return ObjectStoreError(
        f"OCI object storage {exc.operation_name or 'call'} on {name}: "
        f"{status} {code}: {exc.message}",
        status=status,
        code=code,
    )


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _md5_of(data: bytes | Path) -> str:
    if isinstance(data, bytes):
        return md5_base64(data)
    digest = hashlib.md5()
    with open(data, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")


def _digest_parts(data: bytes | Path, size: int, part_size: int) -> tuple[str, list[_Part]]:
    """The whole object's MD5 and each part's, in one pass over the bytes."""
    whole = hashlib.md5()
    parts: list[_Part] = []
    with contextlib.ExitStack() as stack:
        if isinstance(data, Path):
            read = stack.enter_context(open(data, "rb")).read
        else:
            read = io.BytesIO(data).read
        for index, offset in enumerate(range(0, size, part_size)):
            length = min(part_size, size - offset)
            part_digest = hashlib.md5()
            remaining = length
            while remaining:
                chunk = read(min(_CHUNK, remaining))
                if not chunk:
                    raise ObjectStoreError("the file shrank while being uploaded")
                whole.update(chunk)
                part_digest.update(chunk)
                remaining -= len(chunk)
            digest = base64.b64encode(part_digest.digest()).decode("ascii")
            parts.append(_Part(number=index + 1, offset=offset, length=length, md5=digest))
    return base64.b64encode(whole.digest()).decode("ascii"), parts


def _whole_md5(headers: Mapping[str, str]) -> str | None:
    """The whole-object MD5: Content-MD5 for a single PUT, our metadata for multipart."""
    return headers.get("content-md5") or headers.get(f"opc-meta-{_MULTIPART_MD5_KEY}")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _written_info(
    name: str,
    size: int,
    md5: str,
    storage_tier: str,
    metadata: dict[str, str],
    headers: Mapping[str, str],
) -> ObjectInfo:
    """What a successful put stored (PUT and commit answer with the etag and last-modified)."""
    return ObjectInfo(
        name=name,
        size=size,
        etag=str(headers.get("etag", "")),
        md5=md5,
        storage_tier=storage_tier,
        archival_state="Archived" if storage_tier == "Archive" else None,
        time_modified=_parse_time(headers.get("last-modified")),
        metadata=metadata,
    )


def _info_from_headers(name: str, headers: Mapping[str, str]) -> ObjectInfo:
    metadata = {
        key[len("opc-meta-") :].lower(): value
        for key, value in headers.items()
        if key.lower().startswith("opc-meta-")
        and not key.lower().startswith(f"opc-meta-{RESERVED_METADATA_PREFIX}")
    }
    storage_tier = str(headers.get("storage-tier") or "Standard")
    archival_state = _archival_state(storage_tier, headers.get("archival-state"))
    return ObjectInfo(
        name=name,
        size=int(headers.get("content-length", 0)),
        etag=str(headers.get("etag", "")),
        md5=_whole_md5(headers),
        storage_tier=storage_tier,
        archival_state=archival_state,
        restored_until=(
            _parse_time(headers.get("time-of-archival")) if archival_state == "Restored" else None
        ),
        time_modified=_parse_time(headers.get("last-modified")),
        metadata=metadata,
    )


def _archival_state(storage_tier: str, reported: str | None) -> str | None:
    """OCI's archival state for an Archive object; None otherwise. Some listings report a
    restored object as "Available"."""
    if storage_tier != "Archive":
        return None
    if reported in (None, "Archived"):
        return "Archived"
    return "Restored" if reported == "Available" else str(reported)


def _info_from_summary(summary: Any) -> ObjectInfo:
    md5 = summary.md5
    modified = summary.time_modified or summary.time_created
    tier = str(summary.storage_tier or "Standard")
    return ObjectInfo(
        name=str(summary.name),
        size=int(summary.size or 0),
        etag=str(summary.etag or ""),
        # A multipart object lists "<md5 of part md5s>-<parts>", not its content MD5.
        md5=str(md5) if md5 and "-" not in md5 else None,
        storage_tier=tier,
        archival_state=_archival_state(tier, summary.archival_state),
        time_modified=modified,
    )
