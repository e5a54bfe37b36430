"""A local server that speaks the OCI Object Storage REST API (the routes Strata's adapter
uses), so the real `oci` SDK can be tested without a cloud account.

It runs in a thread of its own (the SDK is synchronous and may be called from any thread),
verifies that every request carries a valid OCI HTTP Signature made with the test's RSA key,
checks Content-MD5 and x-content-sha256, keeps objects in memory with OCI's tiers and Archive
restore states, answers errors as OCI does (JSON `code`/`message`, `opc-request-id`), and can
inject faults: the next N matching requests answer 503 or 429.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

TIERS = ("Standard", "InfrequentAccess", "Archive")
MAX_CLOCK_SKEW = timedelta(minutes=5)  # OCI rejects requests dated further off than this
_SIGNATURE_PARAM = re.compile(r'(\w+)="([^"]*)"')


# -- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OciTestCredentials:
    """A generated API signing key, its OCIDs and fingerprint, and an OCI config file."""

    tenancy: str
    user: str
    fingerprint: str
    region: str
    key_file: Path
    config_file: Path
    private_key: rsa.RSAPrivateKey

    @property
    def key_id(self) -> str:
        return f"{self.tenancy}/{self.user}/{self.fingerprint}"

    @classmethod
    def generate(cls, directory: Path, region: str = "us-ashburn-1") -> OciTestCredentials:
        directory.mkdir(parents=True, exist_ok=True)
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file = directory / "oci_api_key.pem"
        key_file.write_bytes(
            private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        fingerprint = public_key_fingerprint(private_key.public_key())
        tenancy = f"ocid1.tenancy.oc1..aaaaaaaa{uuid.uuid4().hex}"
        user = f"ocid1.user.oc1..aaaaaaaa{uuid.uuid4().hex}"
        config_file = directory / "oci_config"
        config_file.write_text(
            "[DEFAULT]\n"
            f"user={user}\n"
            f"fingerprint={fingerprint}\n"
            f"tenancy={tenancy}\n"
            f"region={region}\n"
            f"key_file={key_file}\n"
        )
        return cls(tenancy, user, fingerprint, region, key_file, config_file, private_key)


def public_key_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """OCI's key fingerprint: the MD5 of the DER public key, as colon-separated hex pairs."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.md5(der).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def private_key_pem(private_key: rsa.RSAPrivateKey) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


# -- state ----------------------------------------------------------------------------------


class MovableClock:
    """A clock tests move forward (restores complete, restored copies expire)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 1, 15, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now = self.now + delta


@dataclass
class StoredObject:
    data: bytes
    etag: str
    md5: str | None  # Content-MD5 of a single PUT; None for multipart objects
    multipart_md5: str | None
    storage_tier: str
    metadata: dict[str, str]
    time_created: datetime
    kms_key_id: str | None
    restore_ready_at: datetime | None = None
    restored_until: datetime | None = None

    def archival_state(self, now: datetime) -> str | None:
        if self.storage_tier != "Archive":
            return None
        if self.restore_ready_at is None or self.restored_until is None:
            return "Archived"
        if now >= self.restored_until:
            return "Archived"
        return "Restoring" if now < self.restore_ready_at else "Restored"


@dataclass
class MultipartUpload:
    object_name: str
    storage_tier: str
    metadata: dict[str, str]
    kms_key_id: str | None
    parts: dict[int, tuple[bytes, str, bytes]] = field(default_factory=dict)  # data, etag, md5


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int


@dataclass
class _Fault:
    remaining: int
    status: int
    code: str
    method: str | None
    path_contains: str | None


class OciError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# -- server ---------------------------------------------------------------------------------


class OciObjectStorageServer:
    """`service_endpoint` for the SDK is `server.endpoint` once started."""

    def __init__(
        self,
        credentials: OciTestCredentials,
        *,
        namespace: str = "strata-test",
        bucket: str = "cold",
        restore_delay_s: float = 0.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.namespace = namespace
        self.bucket = bucket
        self.key_id = credentials.key_id
        self.public_key = credentials.private_key.public_key()
        self.restore_delay = timedelta(seconds=restore_delay_s)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.objects: dict[str, StoredObject] = {}
        self.uploads: dict[str, MultipartUpload] = {}
        self.requests: list[RecordedRequest] = []
        self.rejected_signatures = 0
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OciObjectStorageServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced to start()'s caller
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="oci-test-server", daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def fail_next(
        self,
        count: int,
        status: int = 503,
        code: str = "ServiceUnavailable",
        *,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """The next `count` signed requests (matching method / path, if given) get this error."""
        with self._lock:
            self._faults.append(_Fault(count, status, code, method, path_contains))

    def requests_to(self, method: str, path_contains: str = "") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and path_contains in r.path]

    # -- request handling ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_path = request.raw_path.split("?", 1)[0]
        request_id = uuid.uuid4().hex
        try:
            self._verify_signature(request, body)
            self._injected_fault(request.method, raw_path)
            response = self._route(request, raw_path, body)
        except OciError as exc:
            response = web.Response(
                status=exc.status,
                body=b""
                if request.method == "HEAD"
                else json.dumps({"code": exc.code, "message": exc.message}).encode(),
                content_type="application/json",
            )
        response.headers["opc-request-id"] = request_id
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    request.method, unquote(raw_path), dict(request.query), response.status
                )
            )
        return response

    def _injected_fault(self, method: str, path: str) -> None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining <= 0:
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if fault.path_contains is not None and fault.path_contains not in unquote(path):
                    continue
                fault.remaining -= 1
                raise OciError(fault.status, fault.code, "injected fault")

    def _verify_signature(self, request: web.Request, body: bytes) -> None:
        """OCI request signing (draft-cavage HTTP Signatures, version 1, rsa-sha256)."""

        def reject(why: str) -> OciError:
            with self._lock:
                self.rejected_signatures += 1
            return OciError(
                401,
                "NotAuthenticated",
                "The required information to complete authentication was not provided or "
                f"was incorrect ({why}).",
            )

        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Signature "):
            raise reject("no Signature authorization header")
        params = dict(_SIGNATURE_PARAM.findall(authorization))
        if params.get("version") != "1" or params.get("algorithm") != "rsa-sha256":
            raise reject("unsupported signature version or algorithm")
        if params.get("keyId") != self.key_id:
            raise reject("unknown keyId")
        signed = params.get("headers", "").split()
        required = {"date", "(request-target)", "host"}
        # PutObject and UploadPart bodies are exempt from body signing; other writes are not.
        body_exempt = request.method == "PUT" and re.search(r"/(o|u)/", request.raw_path)
        if request.method in ("PUT", "POST") and not body_exempt:
            required |= {"content-length", "content-type", "x-content-sha256"}
        if not required <= set(signed):
            raise reject(f"signature must cover {sorted(required - set(signed))}")
        date = request.headers.get("date")
        if date is None:
            raise reject("no date header")
        skew = abs(datetime.now(UTC) - email.utils.parsedate_to_datetime(date))
        if skew > MAX_CLOCK_SKEW:
            raise reject("date too far from the server's clock")
        if "x-content-sha256" in signed:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
            if request.headers.get("x-content-sha256") != digest:
                raise reject("x-content-sha256 does not match the body")
        if "content-length" in signed and request.headers.get("content-length") != str(len(body)):
            raise reject("content-length does not match the body")
        lines = []
        for name in signed:
            if name == "(request-target)":
                lines.append(f"(request-target): {request.method.lower()} {request.raw_path}")
            elif name in request.headers:
                lines.append(f"{name}: {request.headers[name]}")
            else:
                raise reject(f"signed header {name} missing")
        try:
            self.public_key.verify(
                base64.b64decode(params.get("signature", "")),
                "\n".join(lines).encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            raise reject("signature does not verify") from None

    def _route(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        match = re.fullmatch(r"/n/([^/]+)/b/([^/]+)/(o|u|actions)(?:/(.*))?", path)
        if match is None:
            raise OciError(404, "NotFound", f"no such route: {path}")
        namespace, bucket, kind, rest = (unquote(g) if g else g for g in match.groups())
        if namespace != self.namespace:
            raise OciError(404, "NamespaceNotFound", f"Namespace {namespace} not found")
        if bucket != self.bucket:
            raise OciError(
                404,
                "BucketNotFound",
                f"Either the bucket named '{bucket}' does not exist in the namespace "
                f"'{namespace}' or you are not authorized to access it",
            )
        method = request.method
        with self._lock:
            if kind == "o" and rest is None and method == "GET":
                return self._list(request)
            if kind == "o" and rest:
                handler = {
                    "PUT": self._put,
                    "GET": self._get,
                    "HEAD": self._get,
                    "DELETE": self._delete,
                }.get(method)
                if handler is not None:
                    return handler(request, rest, body)
            if kind == "actions" and method == "POST":
                if rest == "updateObjectStorageTier":
                    return self._update_tier(json.loads(body))
                if rest == "restoreObjects":
                    return self._restore(json.loads(body))
            if kind == "u" and rest is None and method == "POST":
                return self._create_upload(request, json.loads(body))
            if kind == "u" and rest:
                upload_id = request.query.get("uploadId", "")
                if method == "PUT":
                    return self._upload_part(request, rest, upload_id, body)
                if method == "POST":
                    return self._commit_upload(rest, upload_id, json.loads(body))
                if method == "DELETE":
                    return self._abort_upload(rest, upload_id)
        raise OciError(405, "MethodNotAllowed", f"{method} {path} is not supported")

    # -- objects ------------------------------------------------------------------------------

    def _object(self, name: str) -> StoredObject:
        stored = self.objects.get(name)
        if stored is None:
            raise OciError(
                404,
                "ObjectNotFound",
                f"The object '{name}' was not found in the bucket '{self.bucket}'",
            )
        return stored

    def _put(self, request: web.Request, name: str, body: bytes) -> web.Response:
        computed = base64.b64encode(hashlib.md5(body).digest()).decode("ascii")
        claimed = request.headers.get("content-md5")
        if claimed is not None and claimed != computed:
            raise OciError(
                400,
                "UnmatchedContentMD5",
                f"The computed MD5 of the request body ({computed}) does not match the "
                f"Content-MD5 header ({claimed})",
            )
        tier = request.headers.get("storage-tier", "Standard")
        if tier not in TIERS:
            raise OciError(400, "InvalidParameter", f"invalid storage tier {tier}")
        if request.headers.get("if-none-match") == "*" and name in self.objects:
            raise OciError(409, "IfNoneMatchFailed", f"object {name} already exists")
        stored = StoredObject(
            data=body,
            etag=str(uuid.uuid4()),
            md5=computed,
            multipart_md5=None,
            storage_tier=tier,
            metadata=_opc_meta(request.headers.items()),
            time_created=self.clock(),
            kms_key_id=request.headers.get("opc-sse-kms-key-id"),
        )
        self.objects[name] = stored
        return web.Response(
            status=200,
            headers={
                "etag": stored.etag,
                "opc-content-md5": computed,
                "last-modified": _http_date(stored.time_created),
            },
        )

    def _object_headers(self, stored: StoredObject) -> dict[str, str]:
        headers = {
            "etag": stored.etag,
            "last-modified": _http_date(stored.time_created),
            "storage-tier": stored.storage_tier,
            "accept-ranges": "bytes",
        }
        if stored.md5 is not None:
            headers["content-md5"] = stored.md5
        if stored.multipart_md5 is not None:
            headers["opc-multipart-md5"] = stored.multipart_md5
        state = stored.archival_state(self.clock())
        if state is not None:
            headers["archival-state"] = state
        if state == "Restored" and stored.restored_until is not None:
            headers["time-of-archival"] = _iso(stored.restored_until)
        headers.update({f"opc-meta-{k}": v for k, v in stored.metadata.items()})
        return headers

    def _get(self, request: web.Request, name: str, _body: bytes) -> web.StreamResponse:
        stored = self._object(name)
        headers = self._object_headers(stored)
        size = len(stored.data)
        if request.method == "HEAD":
            response = web.StreamResponse(status=200, headers=headers)
            response.content_length = size
            return response
        state = stored.archival_state(self.clock())
        if state in ("Archived", "Restoring"):
            raise OciError(
                409,
                "NotRestored",
                f"The object '{name}' is archived ({state}); restore it before reading it",
            )
        requested = request.headers.get("range")
        if requested is None:
            return web.Response(status=200, body=stored.data, headers=headers)
        start, stop = _parse_range(requested, size)
        headers["content-range"] = f"bytes {start}-{stop - 1}/{size}"
        headers.pop("content-md5", None)  # it describes the whole object, not this range
        return web.Response(status=206, body=stored.data[start:stop], headers=headers)

    def _delete(self, _request: web.Request, name: str, _body: bytes) -> web.Response:
        self._object(name)
        del self.objects[name]
        return web.Response(status=204)

    def _list(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        start = request.query.get("start", "")
        limit = min(int(request.query.get("limit", "1000")), 1000)
        fields = set(request.query.get("fields", "name").split(",")) | {"name"}
        names = sorted(n for n in self.objects if n.startswith(prefix) and n >= start)
        now = self.clock()
        objects = []
        for name in names[:limit]:
            stored = self.objects[name]
            summary: dict[str, object] = {
                "name": name,
                "size": len(stored.data),
                "etag": stored.etag,
                "md5": stored.md5 or stored.multipart_md5,
                "timeCreated": _iso(stored.time_created),
                "timeModified": _iso(stored.time_created),
                "storageTier": stored.storage_tier,
                "archivalState": stored.archival_state(now),
            }
            objects.append({k: v for k, v in summary.items() if k in fields and v is not None})
        payload: dict[str, object] = {"objects": objects, "prefixes": []}
        if len(names) > limit:
            payload["nextStartWith"] = names[limit]
        return web.json_response(payload)

    def _update_tier(self, details: dict[str, str]) -> web.Response:
        name = details.get("objectName", "")
        tier = details.get("storageTier", "")
        stored = self._object(name)
        if tier not in TIERS:
            raise OciError(400, "InvalidParameter", f"invalid storage tier {tier}")
        if stored.storage_tier != tier:
            state = stored.archival_state(self.clock())
            if stored.storage_tier == "Archive" and state != "Restored":
                # What OCI answers for an archived object that was not restored first.
                raise OciError(
                    400,
                    "InvalidStorageTier",
                    f"The object '{name}' is archived ({state}); restore it before changing "
                    "its storage tier",
                )
            stored.storage_tier = tier
            stored.restore_ready_at = stored.restored_until = None
        return web.Response(status=200)

    def _restore(self, details: dict[str, object]) -> web.Response:
        name = str(details.get("objectName", ""))
        hours = details.get("hours", 24)
        if not isinstance(hours, int) or not 1 <= hours <= 240:
            raise OciError(400, "InvalidParameter", "hours must be between 1 and 240")
        stored = self._object(name)
        now = self.clock()
        state = stored.archival_state(now)
        if state is None:
            raise OciError(
                400, "InvalidParameter", f"The object '{name}' is not in the Archive tier"
            )
        if state == "Restored":
            assert stored.restored_until is not None
            stored.restored_until = max(stored.restored_until, now + timedelta(hours=hours))
        elif state == "Restoring":
            assert stored.restore_ready_at is not None
            stored.restored_until = stored.restore_ready_at + timedelta(hours=hours)
        else:
            stored.restore_ready_at = now + self.restore_delay
            stored.restored_until = stored.restore_ready_at + timedelta(hours=hours)
        return web.Response(status=202)

    # -- multipart ----------------------------------------------------------------------------

    def _create_upload(self, request: web.Request, details: dict[str, object]) -> web.Response:
        name = str(details.get("object", ""))
        tier = str(details.get("storageTier") or "Standard")
        if not name or tier not in TIERS:
            raise OciError(400, "InvalidParameter", "object name and a valid tier are required")
        raw_metadata = details.get("metadata") or {}
        assert isinstance(raw_metadata, dict)
        if any(not str(key).startswith("opc-meta-") for key in raw_metadata):
            raise OciError(400, "InvalidParameter", "metadata keys must be opc-meta-*")
        upload_id = str(uuid.uuid4())
        self.uploads[upload_id] = MultipartUpload(
            object_name=name,
            storage_tier=tier,
            metadata=_opc_meta(raw_metadata.items()),
            kms_key_id=request.headers.get("opc-sse-kms-key-id"),
        )
        return web.json_response(
            {
                "namespace": self.namespace,
                "bucket": self.bucket,
                "object": name,
                "uploadId": upload_id,
                "timeCreated": _iso(self.clock()),
                "storageTier": tier,
            }
        )

    def _upload(self, name: str, upload_id: str) -> MultipartUpload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.object_name != name:
            raise OciError(404, "NoSuchUpload", f"no multipart upload {upload_id} for {name}")
        return upload

    def _upload_part(
        self, request: web.Request, name: str, upload_id: str, body: bytes
    ) -> web.Response:
        upload = self._upload(name, upload_id)
        number = int(request.query.get("uploadPartNum", "0"))
        if not 1 <= number <= 10_000:
            raise OciError(400, "InvalidParameter", "uploadPartNum must be 1..10000")
        digest = hashlib.md5(body).digest()
        computed = base64.b64encode(digest).decode("ascii")
        claimed = request.headers.get("content-md5")
        if claimed is not None and claimed != computed:
            raise OciError(
                400,
                "UnmatchedContentMD5",
                f"The computed MD5 of the request body ({computed}) does not match the "
                f"Content-MD5 header ({claimed})",
            )
        etag = str(uuid.uuid4())
        upload.parts[number] = (body, etag, digest)
        return web.Response(status=200, headers={"etag": etag, "opc-content-md5": computed})

    def _commit_upload(
        self, name: str, upload_id: str, details: dict[str, list[dict[str, object]]]
    ) -> web.Response:
        upload = self._upload(name, upload_id)
        chosen = sorted(
            (int(str(p["partNum"])), str(p["etag"])) for p in details.get("partsToCommit", [])
        )
        if not chosen:
            raise OciError(400, "InvalidParameter", "partsToCommit is empty")
        data = bytearray()
        part_digests = b""
        for number, etag in chosen:
            part = upload.parts.get(number)
            if part is None or part[1] != etag:
                raise OciError(400, "InvalidParameter", f"part {number} with etag {etag} unknown")
            data += part[0]
            part_digests += part[2]
        multipart_md5 = (
            f"{base64.b64encode(hashlib.md5(part_digests).digest()).decode('ascii')}-{len(chosen)}"
        )
        stored = StoredObject(
            data=bytes(data),
            etag=str(uuid.uuid4()),
            md5=None,
            multipart_md5=multipart_md5,
            storage_tier=upload.storage_tier,
            metadata=upload.metadata,
            time_created=self.clock(),
            kms_key_id=upload.kms_key_id,
        )
        self.objects[name] = stored
        del self.uploads[upload_id]
        return web.Response(
            status=200,
            headers={
                "etag": stored.etag,
                "opc-multipart-md5": multipart_md5,
                "last-modified": _http_date(stored.time_created),
            },
        )

    def _abort_upload(self, name: str, upload_id: str) -> web.Response:
        self._upload(name, upload_id)
        del self.uploads[upload_id]
        return web.Response(status=204)


def _opc_meta(items: object) -> dict[str, str]:
    return {
        str(key).lower()[len("opc-meta-") :]: str(value)
        for key, value in items  # type: ignore[attr-defined]
        if str(key).lower().startswith("opc-meta-")
    }


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """[start, stop) for an HTTP `bytes=` range; 416 when it starts past the end."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or match.groups() == ("", ""):
        raise OciError(400, "InvalidParameter", f"malformed range {header}")
    first, last = match.groups()
    if first == "":
        start, stop = max(size - int(last), 0), size
    else:
        start = int(first)
        stop = size if last == "" else min(int(last) + 1, size)
    if start >= size or stop <= start:
        raise OciError(416, "InvalidRange", f"range {header} not satisfiable for {size} bytes")
    return start, stop


def _http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
