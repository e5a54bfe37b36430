"""The dashboard's single-page app as served: `ui/dist/` (built by `just dashboard`) read once
at start-up, gzipped once, each asset versioned by its hash.

`index.html` is answered for every page path of the app (`/`, `/login`, `/p/...`, `/share/...`,
`/invite/...`, `/account`) and never cached; assets under `/ui/` carry `?v=<hash>` and are
cached for a year. Pages send a Content-Security-Policy that allows only this origin's scripts.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from services.ingest.tracker.script import accepts_gzip

ASSET_PREFIX = "/ui/"
_IMMUTABLE = "public, max-age=31536000, immutable"
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'"
)
# A shared dashboard may be embedded (a wall screen, a wiki page); nothing else may be framed.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    version: str


def _asset(name: str, body: bytes) -> Asset:
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Asset(
        body=body,
        gzipped=gzip.compress(body, 9, mtime=0),
        content_type=content_type,
        version=hashlib.sha256(body).hexdigest()[:12],
    )


class DashboardAssets:
    """The built app: `index.html` with each `/ui/<name>` reference versioned, and the assets."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.assets = {
            name: _asset(name, body) for name, body in files.items() if name != "index.html"
        }
        html = files.get("index.html", b"<!doctype html><title>Strata</title>").decode()
        for name, asset in self.assets.items():
            html = html.replace(
                f'"{ASSET_PREFIX}{name}"', f'"{ASSET_PREFIX}{name}?v={asset.version}"'
            )
        self.index = _asset("index.html", html.encode())

    @classmethod
    def packaged(cls) -> DashboardAssets:
        dist = resources.files(__package__).joinpath("ui", "dist")
        files = {}
        if dist.is_dir():
            for entry in dist.iterdir():
                if entry.is_file():
                    files[entry.name] = entry.read_bytes()
        return cls(files)


def _respond(request: web.Request, asset: Asset, headers: dict[str, str]) -> web.Response:
    compressed = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    out = {**headers, "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
    if compressed:
        out["Content-Encoding"] = "gzip"
    return web.Response(
        body=asset.gzipped if compressed else asset.body,
        headers=out,
        content_type=asset.content_type,
    )


def add_dashboard_routes(app: web.Application, assets: DashboardAssets | None = None) -> None:
    """Serve the app's pages and assets."""
    built = assets or DashboardAssets.packaged()

    async def page(request: web.Request) -> web.Response:
        framing = "*" if request.path.startswith("/share/") else "'none'"
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": f"{_CSP}; frame-ancestors {framing}"}
        if framing == "'none'":
            headers["X-Frame-Options"] = "DENY"
        return _respond(request, built.index, headers)

    async def asset(request: web.Request) -> web.Response:
        found = built.assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        cache = _IMMUTABLE if request.query.get("v") == found.version else "no-cache"
        return _respond(request, found, {"Cache-Control": cache, "ETag": f'"{found.version}"'})

    r = app.router
    for path in ("/", "/login", "/account", "/p/{tail:.*}", "/share/{token}", "/invite/{token}"):
        r.add_get(path, page)
    r.add_get(ASSET_PREFIX + "{name}", asset)
