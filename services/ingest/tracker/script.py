"""GET /t.js: the browser tracker, cacheable and versioned.

`/t.js?v=<version>` (the version is a hash of the script) is immutable and cached for a year;
plain `/t.js` is cached for an hour so a new release reaches visitors soon. Both carry an ETag,
so a revalidation costs a 304, and are gzipped when the browser accepts it.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

TRACKER_PATH = "/t.js"
MINIFIED_SCRIPT = "strata.min.js"
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"
RELEASE_CACHE = "public, max-age=3600"


@dataclass(frozen=True)
class TrackerScript:
    """The minified tracker as served: plain and gzipped bytes and their version."""

    body: bytes
    gzipped: bytes
    version: str

    @classmethod
    def from_bytes(cls, body: bytes) -> TrackerScript:
        """The script built from its minified bytes (compressed once, at start-up)."""
        version = hashlib.sha256(body).hexdigest()[:12]
        return cls(body=body, gzipped=gzip.compress(body, 9, mtime=0), version=version)

    @classmethod
    def packaged(cls) -> TrackerScript:
        """The `strata.min.js` shipped beside this module (built by `just tracker`)."""
        body = resources.files(__package__).joinpath(MINIFIED_SCRIPT).read_bytes()
        return cls.from_bytes(body)

    @property
    def versioned_path(self) -> str:
        """The URL path of this release, for tags that want year-long caching."""
        return f"{TRACKER_PATH}?v={self.version}"


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip` or `*` with a non-zero q)."""
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def tracker_handler(
    script: TrackerScript,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The GET/HEAD handler of /t.js for `script`."""

    async def serve_tracker(request: web.Request) -> web.StreamResponse:
        compressed = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        # A strong ETag names exact bytes, so the gzipped variant has its own.
        etag = f'"{script.version}-gz"' if compressed else f'"{script.version}"'
        cache = IMMUTABLE_CACHE if request.query.get("v") == script.version else RELEASE_CACHE
        headers = {
            "Cache-Control": cache,
            "ETag": etag,
            "Vary": "Accept-Encoding",
            "Access-Control-Allow-Origin": "*",
            "X-Content-Type-Options": "nosniff",
        }
        if etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
            return web.Response(status=304, headers=headers)
        if compressed:
            headers["Content-Encoding"] = "gzip"
        return web.Response(
            body=script.gzipped if compressed else script.body,
            headers=headers,
            content_type="application/javascript",
            charset="utf-8",
        )

    return serve_tracker


def add_tracker_routes(app: web.Application, script: TrackerScript | None = None) -> None:
    """Serve the browser tracker at GET /t.js."""
    app.router.add_get(TRACKER_PATH, tracker_handler(script or TrackerScript.packaged()))
