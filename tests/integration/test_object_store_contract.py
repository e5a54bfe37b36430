"""One contract for every object-store adapter: the file store and the OCI adapter (the real
`oci` SDK against tests/support/oci_server.py, which checks every request's signature) must
behave the same for everything Strata's tiering relies on. OCI-only behaviour (retries on
throttling, request signing, Vault keys, multipart clean-up) follows the contract."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import msgspec
import oci.config
import oci.exceptions
import oci.object_storage
import oci.signer
import pytest

from libs.common.object_store import (
    ObjectArchived,
    ObjectChecksumMismatch,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreOptions,
    md5_base64,
    open_object_store,
)
from tests.support.oci_server import (
    MovableClock,
    OciObjectStorageServer,
    OciTestCredentials,
    private_key_pem,
)

pytestmark = pytest.mark.infra

RESTORE_DELAY_S = 60.0  # how long a restore takes, on the tests' movable clock
PAGE_SIZE = 4  # list page size, so a handful of objects spans several pages
MULTIPART_THRESHOLD = 1024 * 1024
PART_SIZE = 256 * 1024
KMS_KEY_ID = "ocid1.key.oc1.iad.aaaaaaaastratatestkey"


@dataclass
class Adapter:
    kind: str
    store: ObjectStore
    clock: MovableClock
    server: OciObjectStorageServer | None = None
    credentials: OciTestCredentials | None = None


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def credentials(tmp_path: Path) -> OciTestCredentials:
    return OciTestCredentials.generate(tmp_path / "oci")


@pytest.fixture
def oci_server(
    credentials: OciTestCredentials, clock: MovableClock
) -> Iterator[OciObjectStorageServer]:
    server = OciObjectStorageServer(
        credentials, restore_delay_s=RESTORE_DELAY_S, clock=clock
    ).start()
    try:
        yield server
    finally:
        server.stop()


def oci_options(
    credentials: OciTestCredentials, server: OciObjectStorageServer, **changes: object
) -> ObjectStoreOptions:
    options = ObjectStoreOptions(
        threads=4,
        oci_config_file=str(credentials.config_file),
        oci_endpoint=server.endpoint,
        oci_multipart_threshold=MULTIPART_THRESHOLD,
        oci_part_size=PART_SIZE,
        list_page_size=PAGE_SIZE,
        oci_retry_base_sleep_s=0.02,
    )
    return msgspec.structs.replace(options, **changes)


def oci_url(server: OciObjectStorageServer) -> str:
    return f"oci://{server.namespace}/{server.bucket}"


@pytest.fixture(params=["file", "oci"])
async def adapter(
    request: pytest.FixtureRequest, tmp_path: Path, clock: MovableClock
) -> AsyncIterator[Adapter]:
    if request.param == "file":
        options = ObjectStoreOptions(
            threads=4, file_restore_delay_s=RESTORE_DELAY_S, list_page_size=PAGE_SIZE
        )
        store = open_object_store(f"file://{tmp_path / 'store'}", options, clock=clock)
        async with store:
            yield Adapter("file", store, clock)
        return
    credentials = request.getfixturevalue("credentials")
    server = request.getfixturevalue("oci_server")
    store = open_object_store(oci_url(server), oci_options(credentials, server))
    async with store:
        yield Adapter("oci", store, clock, server, credentials)


def md5_of(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


# -- the contract ---------------------------------------------------------------------------


async def test_put_get_round_trip_and_head_fields(adapter: Adapter) -> None:
    store = adapter.store
    name = "events/v1/project=acme/dt=2025-01-01/part-01.parquet"
    data = b"PAR1" + os.urandom(5000) + b"PAR1"
    written = await store.put(name, data, metadata={"rows": "120", "min-ts": "2025-01-01T00"})
    assert (written.name, written.size, written.md5) == (name, len(data), md5_of(data))
    assert written.storage_tier == "Standard" and written.archival_state is None
    assert written.etag

    head = await store.head(name)
    assert (head.size, head.md5, head.etag) == (len(data), md5_of(data), written.etag)
    assert head.metadata == {"rows": "120", "min-ts": "2025-01-01T00"}
    assert head.storage_tier == "Standard" and head.archival_state is None
    assert head.readable
    assert await store.get(name) == data

    replacement = b"a different, shorter file"
    rewritten = await store.put(name, replacement)
    assert rewritten.etag != written.etag
    assert await store.get(name) == replacement
    assert (await store.head(name)).metadata == {}  # metadata belongs to the version written


async def test_put_from_a_file_and_stream_to_a_file(adapter: Adapter, tmp_path: Path) -> None:
    source = tmp_path / "part.parquet"
    data = os.urandom(300_000)
    source.write_bytes(data)
    info = await adapter.store.put("cold/part.parquet", source, storage_tier="InfrequentAccess")
    assert info.md5 == md5_of(data)

    target = tmp_path / "cache" / "part.parquet"
    target.parent.mkdir()
    downloaded = await adapter.store.get_to_file("cold/part.parquet", target)
    assert target.read_bytes() == data
    assert downloaded.md5 == md5_of(data)
    assert downloaded.storage_tier == "InfrequentAccess"
    assert sorted(p.name for p in target.parent.iterdir()) == ["part.parquet"]  # no partials


async def test_ranged_get_has_slice_semantics(adapter: Adapter) -> None:
    data = bytes(range(256)) * 4
    await adapter.store.put("r.bin", data)
    get = adapter.store.get
    assert await get("r.bin", byte_range=(0, 10)) == data[0:10]
    assert await get("r.bin", byte_range=(1000, None)) == data[1000:]
    assert await get("r.bin", byte_range=(-8, None)) == data[-8:]  # a Parquet footer read
    assert await get("r.bin", byte_range=(100, 5000)) == data[100:]
    assert await get("r.bin", byte_range=(7, 7)) == b""
    assert await get("r.bin", byte_range=(5000, None)) == b""
    with pytest.raises(ValueError):
        await get("r.bin", byte_range=(10, 5))
    with pytest.raises(ObjectNotFound):
        await get("missing.bin", byte_range=(0, 10))


async def test_a_wrong_md5_stores_nothing(adapter: Adapter, tmp_path: Path) -> None:
    data = b"the bytes that were meant"
    with pytest.raises(ObjectChecksumMismatch):
        await adapter.store.put("checked.bin", data, content_md5=md5_of(b"other bytes"))
    assert not await adapter.store.exists("checked.bin")

    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(MULTIPART_THRESHOLD + 1000))
    with pytest.raises(ObjectChecksumMismatch):
        await adapter.store.put("checked-large.bin", large, content_md5=md5_of(b"x"))
    assert not await adapter.store.exists("checked-large.bin")

    info = await adapter.store.put("checked.bin", data, content_md5=md5_of(data))
    assert info.md5 == md5_of(data)


async def test_list_by_prefix_across_pages(adapter: Adapter) -> None:
    store = adapter.store
    acme = [
        f"events/v1/project=acme/dt=2025-01-{day:02d}/part-{n}.parquet"
        for day in (1, 2, 10)
        for n in range(3)
    ]
    others = [
        "events/v1/project=acme2/dt=2025-01-01/part-0.parquet",
        "events/v1/project=beta/dt=2025-01-01/part-0.parquet",
        "events/v1/project=acme",  # an object named like a folder of the others
        "rollups/x",
    ]
    for name in acme + others:
        await store.put(name, name.encode())
    assert len(acme) > 2 * PAGE_SIZE

    assert await store.names("events/v1/project=acme/") == sorted(acme)
    assert await store.names("events/v1/project=acme/dt=2025-01-0") == sorted(acme[:6])
    assert await store.names("events/v1/project=acme") == sorted([*acme, *others[:1], others[2]])
    assert await store.names("") == sorted(acme + others)
    assert await store.names("nothing/here/") == []

    listed = [info async for info in store.list("events/v1/project=acme/dt=2025-01-10/")]
    assert [i.size for i in listed] == [len(i.name.encode()) for i in listed]
    assert all(i.md5 == md5_of(i.name.encode()) and i.storage_tier == "Standard" for i in listed)
    if adapter.server is not None:  # the SDK really paged through the listing
        assert len(adapter.server.requests_to("GET", "/o")) > 3


async def test_delete_and_not_found(adapter: Adapter, tmp_path: Path) -> None:
    store = adapter.store
    await store.put("gone/soon.bin", b"x")
    await store.delete("gone/soon.bin")
    with pytest.raises(ObjectNotFound):
        await store.head("gone/soon.bin")
    with pytest.raises(ObjectNotFound):
        await store.get("gone/soon.bin")
    with pytest.raises(ObjectNotFound):
        await store.get_to_file("gone/soon.bin", tmp_path / "never")
    with pytest.raises(ObjectNotFound):
        await store.delete("gone/soon.bin")
    await store.delete("gone/soon.bin", missing_ok=True)
    with pytest.raises(ObjectNotFound):
        await store.set_storage_tier("gone/soon.bin", "Archive")
    with pytest.raises(ObjectNotFound):
        await store.restore("gone/soon.bin")
    assert await store.names("gone/") == []
    assert not (tmp_path / "never").exists()


async def test_archive_is_unreadable_until_restored_and_restores_expire(
    adapter: Adapter, tmp_path: Path
) -> None:
    store, clock = adapter.store, adapter.clock
    data = os.urandom(2048)
    await store.put("old/day.parquet", data)
    await store.set_storage_tier("old/day.parquet", "Archive")

    head = await store.head("old/day.parquet")
    assert (head.storage_tier, head.archival_state, head.readable) == ("Archive", "Archived", False)
    assert head.md5 == md5_of(data) and head.size == len(data)
    for read in (
        store.get("old/day.parquet"),
        store.get("old/day.parquet", byte_range=(0, 4)),
        store.get_to_file("old/day.parquet", tmp_path / "day.parquet"),
    ):
        with pytest.raises(ObjectArchived) as archived:
            await read
        assert archived.value.archival_state == "Archived"
    assert [i.archival_state for i in [x async for x in store.list("old/")]] == ["Archived"]

    restored_at = clock.now
    await store.restore("old/day.parquet", hours=2)
    assert (await store.head("old/day.parquet")).archival_state == "Restoring"
    with pytest.raises(ObjectArchived) as restoring:
        await store.get("old/day.parquet")
    assert restoring.value.archival_state == "Restoring"

    clock.advance(timedelta(seconds=RESTORE_DELAY_S))
    head = await store.head("old/day.parquet")
    assert (head.archival_state, head.readable) == ("Restored", True)
    assert head.restored_until == restored_at + timedelta(seconds=RESTORE_DELAY_S, hours=2)
    assert head.time_of_archival == head.restored_until
    assert await store.get("old/day.parquet") == data
    assert await store.get("old/day.parquet", byte_range=(10, 20)) == data[10:20]

    clock.advance(timedelta(hours=2))  # the restored copy expires
    assert (await store.head("old/day.parquet")).archival_state == "Archived"
    with pytest.raises(ObjectArchived):
        await store.get("old/day.parquet")


async def test_restoring_again_extends_and_tier_changes_need_a_restore(adapter: Adapter) -> None:
    store, clock = adapter.store, adapter.clock
    await store.put("frozen.bin", b"archived at birth", storage_tier="Archive")
    assert (await store.head("frozen.bin")).archival_state == "Archived"
    with pytest.raises(ObjectArchived):
        await store.get("frozen.bin")
    with pytest.raises(ObjectArchived):
        await store.set_storage_tier("frozen.bin", "Standard")
    with pytest.raises(ValueError):
        await store.restore("frozen.bin", hours=0)

    await store.restore("frozen.bin", hours=1)
    clock.advance(timedelta(seconds=RESTORE_DELAY_S))
    first = (await store.head("frozen.bin")).restored_until
    assert first is not None
    await store.restore("frozen.bin", hours=5)  # a restored object: extends it
    second = (await store.head("frozen.bin")).restored_until
    assert second == clock.now + timedelta(hours=5) and second > first

    await store.set_storage_tier("frozen.bin", "Standard")
    head = await store.head("frozen.bin")
    assert (head.storage_tier, head.archival_state, head.restored_until) == ("Standard", None, None)
    clock.advance(timedelta(hours=6))
    assert await store.get("frozen.bin") == b"archived at birth"  # Standard never re-archives

    with pytest.raises(ObjectStoreError):
        await store.restore("frozen.bin")  # not in Archive
    await store.set_storage_tier("frozen.bin", "InfrequentAccess")
    assert (await store.head("frozen.bin")).storage_tier == "InfrequentAccess"
    with pytest.raises(ValueError):
        await store.set_storage_tier("frozen.bin", "Glacier")  # type: ignore[arg-type]


async def test_large_object_round_trips_byte_identical(adapter: Adapter, tmp_path: Path) -> None:
    data = os.urandom(MULTIPART_THRESHOLD * 2 + 12345)
    source = tmp_path / "big.parquet"
    source.write_bytes(data)
    info = await adapter.store.put(
        "big/part.parquet", source, metadata={"rows": "99"}, content_md5=md5_of(data)
    )
    assert (info.size, info.md5) == (len(data), md5_of(data))

    target = tmp_path / "big.copy"
    await adapter.store.get_to_file("big/part.parquet", target)
    assert target.read_bytes() == data
    assert await adapter.store.get("big/part.parquet") == data
    head = await adapter.store.head("big/part.parquet")
    assert (head.size, head.md5, head.metadata) == (len(data), md5_of(data), {"rows": "99"})
    assert await adapter.store.get("big/part.parquet", byte_range=(-100, None)) == data[-100:]

    if adapter.server is not None:  # it went up in parts, and the upload is closed
        stored = adapter.server.objects["big/part.parquet"]
        assert stored.multipart_md5 is not None and stored.multipart_md5.endswith("-9")
        assert len(adapter.server.requests_to("PUT", "/u/big/part.parquet")) == 9
        assert adapter.server.uploads == {}


async def test_names_keep_unusual_characters(adapter: Adapter) -> None:
    names = ["a", "a/b", "a/b/c", "sp ace/ü/%41", "x//y", "dots/../..", "@object/k"]
    for name in names:
        await adapter.store.put(name, name.encode())
    assert await adapter.store.names() == sorted(names)
    for name in names:
        assert await adapter.store.get(name) == name.encode()
    await adapter.store.delete("a/b")
    assert await adapter.store.names("a") == ["a", "a/b/c"]


# -- OCI only ------------------------------------------------------------------------------


@pytest.fixture
async def oci_store(
    credentials: OciTestCredentials, oci_server: OciObjectStorageServer
) -> AsyncIterator[ObjectStore]:
    async with open_object_store(
        oci_url(oci_server), oci_options(credentials, oci_server)
    ) as store:
        yield store


async def test_oci_retries_throttling_and_server_errors(
    oci_store: ObjectStore, oci_server: OciObjectStorageServer, tmp_path: Path
) -> None:
    oci_server.fail_next(1, 503, "ServiceUnavailable", method="PUT")
    oci_server.fail_next(1, 429, "TooManyRequests", method="PUT")
    await oci_store.put("retried.bin", b"after a 503 and a 429")
    statuses = [r.status for r in oci_server.requests_to("PUT", "/o/retried.bin")]
    assert statuses == [503, 429, 200]

    oci_server.fail_next(2, 500, "InternalServerError", method="GET")
    assert await oci_store.get("retried.bin") == b"after a 503 and a 429"

    source = tmp_path / "big"
    data = os.urandom(MULTIPART_THRESHOLD + PART_SIZE)
    source.write_bytes(data)
    oci_server.fail_next(1, 503, "ServiceUnavailable", method="PUT", path_contains="/u/")
    await oci_store.put("big-retried", source)  # a part retried from its file window
    assert await oci_store.get("big-retried") == data
    assert [r.status for r in oci_server.requests_to("PUT", "/u/big-retried")].count(503) == 1

    oci_server.fail_next(100, 400, "InvalidParameter", method="HEAD")  # not retryable
    with pytest.raises(ObjectStoreError) as failed:
        await oci_store.head("retried.bin")
    assert failed.value.status == 400
    assert len(oci_server.requests_to("HEAD", "/o/retried.bin")) == 1


async def test_oci_failed_multipart_upload_is_aborted(
    oci_store: ObjectStore, oci_server: OciObjectStorageServer, tmp_path: Path
) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(MULTIPART_THRESHOLD + 1))
    oci_server.fail_next(1, 400, "InvalidParameter", method="PUT", path_contains="/u/")
    with pytest.raises(ObjectStoreError):
        await oci_store.put("never-committed", source)
    assert oci_server.uploads == {}
    assert len(oci_server.requests_to("DELETE", "/u/never-committed")) == 1
    assert not await oci_store.exists("never-committed")


async def test_oci_server_rejects_unsigned_and_badly_signed_requests(
    credentials: OciTestCredentials, oci_server: OciObjectStorageServer, oci_store: ObjectStore
) -> None:
    await oci_store.put("secret.bin", b"signed write")
    url = f"{oci_server.endpoint}/n/{oci_server.namespace}/b/{oci_server.bucket}/o/secret.bin"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 401
        assert (await response.json())["code"] == "NotAuthenticated"
        assert response.headers["opc-request-id"]

    # Same keyId, wrong private key: the signature does not verify.
    other_key = OciTestCredentials.generate(Path(credentials.key_file).parent / "other")
    impostor = oci.signer.Signer(
        credentials.tenancy,
        credentials.user,
        credentials.fingerprint,
        private_key_file_location=None,
        private_key_content=private_key_pem(other_key.private_key),
    )
    options = oci_options(credentials, oci_server)
    async with open_object_store(oci_url(oci_server), options, signer=impostor) as forged:
        with pytest.raises(ObjectStoreError) as rejected:
            await forged.put("secret.bin", b"overwritten by an impostor")
        assert rejected.value.status == 401
        with pytest.raises(ObjectStoreError):
            await forged.get("secret.bin")
    assert await oci_store.get("secret.bin") == b"signed write"
    assert oci_server.rejected_signatures >= 3


async def test_oci_server_checks_content_md5(
    credentials: OciTestCredentials, oci_server: OciObjectStorageServer
) -> None:
    """Through the raw SDK: OCI itself refuses a body whose MD5 differs from Content-MD5."""
    config = oci.config.from_file(str(credentials.config_file))
    client = oci.object_storage.ObjectStorageClient(config, service_endpoint=oci_server.endpoint)
    with pytest.raises(oci.exceptions.ServiceError) as refused:
        client.put_object(
            oci_server.namespace,
            oci_server.bucket,
            "corrupt.bin",
            b"bytes as received",
            content_md5=md5_base64(b"bytes as sent"),
        )
    assert (refused.value.status, refused.value.code) == (400, "UnmatchedContentMD5")
    assert "corrupt.bin" not in oci_server.objects


async def test_oci_vault_key_is_sent_when_configured(
    credentials: OciTestCredentials, oci_server: OciObjectStorageServer, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(MULTIPART_THRESHOLD + 10))
    options = oci_options(credentials, oci_server, oci_kms_key_id=KMS_KEY_ID)
    async with open_object_store(oci_url(oci_server), options) as encrypted:
        await encrypted.put("sse/small", b"encrypted with a customer key")
        await encrypted.put("sse/big", big)
        assert await encrypted.get("sse/small") == b"encrypted with a customer key"
    async with open_object_store(
        oci_url(oci_server), oci_options(credentials, oci_server)
    ) as plain:
        await plain.put("sse/none", b"oracle-managed key")
    assert oci_server.objects["sse/small"].kms_key_id == KMS_KEY_ID
    assert oci_server.objects["sse/big"].kms_key_id == KMS_KEY_ID
    assert oci_server.objects["sse/none"].kms_key_id is None


# -- opening stores ---------------------------------------------------------------------------


def test_store_urls_are_checked(tmp_path: Path) -> None:
    for url in ("s3://bucket", "file://host/path", "oci://ns", "oci://ns/bucket/extra", "file:"):
        with pytest.raises(ValueError):
            open_object_store(url)
    with pytest.raises(ValueError):
        open_object_store("oci://ns/bucket", ObjectStoreOptions(oci_auth="password"))
    missing = tmp_path / "no-such-oci-config"
    with pytest.raises(ObjectStoreError, match="no-such-oci-config"):
        open_object_store("oci://ns/bucket", ObjectStoreOptions(oci_config_file=str(missing)))


async def test_concurrent_overwrites_are_atomic(adapter: Adapter) -> None:
    """Readers racing writers of one name see one whole version, never a mix."""
    versions = [bytes([n]) * 40_000 for n in range(8)]
    md5s = {md5_of(v) for v in versions}

    reads: list[bytes] = []

    async def read_while_written() -> None:
        seen = 0
        while seen < 10:  # the writes finish, so this ends
            try:
                reads.append(await adapter.store.get("contended.bin"))
                seen += 1
            except ObjectNotFound:
                await asyncio.sleep(0)

    await asyncio.gather(
        *(adapter.store.put("contended.bin", v) for v in versions),
        read_while_written(),
        read_while_written(),
    )
    assert reads
    assert all(data in versions for data in reads)
    final = await adapter.store.head("contended.bin")
    assert final.md5 in md5s
    assert await adapter.store.get("contended.bin") in versions
    assert await adapter.store.names() == ["contended.bin"]


async def test_file_store_ignores_what_a_crash_left_behind(tmp_path: Path) -> None:
    """A write killed before its commit leaves no object: a data file without meta.json is
    invisible and the next write of that name removes it."""
    root = tmp_path / "store"
    async with open_object_store(f"file://{root}") as store:
        await store.put("day/part-1", b"committed")
        crashed = root / "objects" / "day" / "part-2" / "@object"
        crashed.mkdir(parents=True)
        (crashed / "data-0123456789abcdef").write_bytes(b"never committed")
        leftover = root / "objects" / "day" / "part-1" / "@object" / "data-fedcba9876543210"
        leftover.write_bytes(b"a crashed overwrite")

        assert await store.names("day/") == ["day/part-1"]
        with pytest.raises(ObjectNotFound):
            await store.head("day/part-2")
        assert await store.get("day/part-1") == b"committed"

        await store.put("day/part-1", b"rewritten")
        await store.put("day/part-2", b"written properly")
        assert not leftover.exists()
        assert not (crashed / "data-0123456789abcdef").exists()
        assert [await store.get(n) for n in await store.names("day/")] == [
            b"rewritten",
            b"written properly",
        ]
