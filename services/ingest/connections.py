"""Connection hygiene for a public endpoint: idle and header timeouts, a bound on open
connections that sheds the longest-idle ones first, and the process's open-file limit.

Without these, connections that never send a request (or send it a byte at a time) are kept
for an hour by aiohttp's defaults, and a thousand of them use up the common 1024 file
descriptors, shutting every other client out.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from libs.common.settings import IngestSettings

log = structlog.get_logger("strata.ingest")

# Descriptors kept free beyond the connections: NATS, the PostgreSQL pool, files, the listener.
RESERVED_FILES = 64
# How long an unread body may be drained after its answer, to keep the connection reusable.
LINGER_S = 2.0


def http_handler_args(settings: IngestSettings) -> dict[str, Any]:
    """aiohttp's per-connection options for ingest: `keepalive_timeout` closes a connection
    that has not completed a request's headers within it, whether it is new or between
    requests (aiohttp arms it from the moment a connection opens); bodies are decoded by
    ingest itself (request_body.py), so that unknown encodings and bad gzip are 4xx."""
    return {
        "keepalive_timeout": settings.http_idle_timeout_s,
        "lingering_time": LINGER_S,
        "auto_decompress": False,
    }


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a process may always do that); returns
    (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("open_file_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return soft, hard


def effective_max_connections(configured: int, open_files: int) -> int:
    """The connection bound: the setting, lowered to what the open-file limit can hold."""
    return max(1, min(configured, open_files - RESERVED_FILES))


class _ClosedAtOnce(asyncio.Protocol):
    """A connection past the bound while every open one is busy: closed as it opens."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class OpenConnections:
    """Bounds the open connections of one listener. When a new connection would pass the
    bound, the longest-idle connections (no request being handled) are closed to make room;
    when every connection is busy, the new one is closed at once. Busy connections are learnt
    from `middleware`, which must be installed in the app."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._server: web.Server | None = None
        self._busy: dict[RequestHandler, int] = {}
        self.shed = 0  # idle connections closed to admit new ones
        self.refused = 0  # new connections closed because all were busy

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """What `loop.create_server` takes in place of `server` itself."""
        self._server = server

        def accept() -> asyncio.Protocol:
            connections = server.connections  # oldest first
            excess = len(connections) + 1 - self.max_connections
            if excess > 0:
                idle = [c for c in connections if c not in self._busy][:excess]
                for connection in idle:
                    connection.force_close()  # idle: no request of it is cut short
                    self.shed += 1
                if len(idle) < excess:
                    self.refused += 1
                    return _ClosedAtOnce()
            return server()

        return accept

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        protocol = request.protocol
        if not isinstance(protocol, RequestHandler):
            return await handler(request)
        self._busy[protocol] = self._busy.get(protocol, 0) + 1
        try:
            return await handler(request)
        finally:
            left = self._busy[protocol] - 1
            if left:
                self._busy[protocol] = left
            else:
                del self._busy[protocol]
