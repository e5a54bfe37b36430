"""How both HTTP APIs (ingest and query) answer an error: one mapping from an exception to a
status and a client-facing message. Each API keeps its own body shape (documented in
docs/api-ingest.md and docs/api-query.md); the status and message come from here."""

from __future__ import annotations

from aiohttp import web

from libs.common.errors import StrataError


def client_answer(exc: BaseException) -> tuple[int, str] | None:
    """The status and message to answer `exc` with, or None for an internal failure (answer
    500 without details, and log it)."""
    if isinstance(exc, StrataError):
        return None if exc.http_status is None else (exc.http_status, str(exc))
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return exc.status, exc.reason
    return None
