"""Reading a request body: a deadline for the upload, the Content-Encodings ingest decodes
itself (aiohttp's automatic decoding is off), and the size limit after decompression.

Also the fallback for bodies whose JSON nests deeper than the decoder can follow: the items of
the batch array are cut out by a flat scan, so the items that are fine are still accepted.
"""

from __future__ import annotations

import asyncio
import re
import zlib

from aiohttp import web

from libs.common.errors import StrataError

SUPPORTED_ENCODINGS = "gzip, deflate or identity"
_GZIP = ("gzip", "x-gzip")


class BodyRefused(StrataError):
    """The body cannot be read: answered with `status` and `message`."""

    code = "body_refused"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = self.http_status = status
        self.message = message


class ClientGone(StrataError):
    """The client closed the connection before its body arrived; nobody awaits an answer."""

    code = "client_gone"


def too_large_message(size: int | None, limit: int) -> str:
    told = f"request body is {size} bytes" if size is not None else "request body is too large"
    return f"{told}; the limit is {limit} bytes ({limit // 1024} KB)"


def content_coding(header: str | None) -> str:
    """The one coding a body was sent with ("identity" when none); BodyRefused (415) for a
    coding ingest does not decode, or for a chain of several."""
    codings = [c.strip().lower() for c in (header or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return "identity"
    if len(codings) > 1:
        raise BodyRefused(
            415, f"Content-Encoding {header!r}: several encodings; send one: {SUPPORTED_ENCODINGS}"
        )
    coding = codings[0]
    if coding not in (*_GZIP, "deflate"):
        raise BodyRefused(
            415, f"Content-Encoding {coding!r} is not supported; send {SUPPORTED_ENCODINGS}"
        )
    return coding


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The decoded body, at most `limit` bytes before and after decompression, received within
    `timeout_s`; BodyRefused (408/413/415/400) or ClientGone otherwise."""
    coding = content_coding(request.headers.get("Content-Encoding"))
    try:
        body = await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise BodyRefused(
            408, f"request body not received within {timeout_s:g} s; send it promptly"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise BodyRefused(413, too_large_message(None, limit)) from None
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        raise ClientGone(str(exc) or type(exc).__name__) from None
    if len(body) > limit:
        raise BodyRefused(413, too_large_message(len(body), limit))
    if coding == "identity" or not body:
        return body
    return decompress(body, coding, limit)


def decompress(body: bytes, coding: str, limit: int) -> bytes:
    """`body` decoded from gzip or deflate, never more than `limit` bytes (a small bomb
    stops there, unexpanded)."""
    if coding in _GZIP:
        return _inflate(body, 16 + zlib.MAX_WBITS, coding, limit)
    try:
        return _inflate(body, zlib.MAX_WBITS, coding, limit)
    except BodyRefused as refused:
        if refused.status == 413:
            raise
        # HTTP's "deflate" is zlib-wrapped, but some clients send a bare deflate stream.
        return _inflate(body, -zlib.MAX_WBITS, coding, limit)


def _inflate(body: bytes, wbits: int, coding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise BodyRefused(
                413, f"request body decompresses to more than {limit} bytes; the limit is {limit}"
            )
        out += inflater.flush()
    except zlib.error as exc:
        raise BodyRefused(400, f"request body is not valid {coding} data: {exc}") from None
    if not inflater.eof:
        raise BodyRefused(400, f"request body is truncated {coding} data")
    if inflater.unused_data.strip():
        raise BodyRefused(400, f"request body has bytes after its {coding} data")
    return out


# Strings (with their escapes) as whole tokens, and the structural characters between them.
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)


def split_array_items(body: bytes, key: str | None) -> tuple[bytes, list[bytes]] | None:
    """For a body too deeply nested to decode: (the body with its item array emptied, the raw
    items), where the array is the top-level object's `key`, or the body itself when `key` is
    None. None when no such array is found. Nothing is validated here: each item and the rest
    of the body are decoded on their own afterwards."""
    wanted = None if key is None else b'"' + key.encode() + b'"'
    depth = 0
    member: bytes | None = None  # the key of the top-level member being read
    last_string: bytes | None = None
    array_at: int | None = None  # where the item array opens
    item_from = 0
    items: list[bytes] = []
    for token in _JSON_TOKENS.finditer(body):
        char = token.group()[:1]
        if char == b'"':
            last_string = token.group() if depth == 1 else None
            continue
        if char == b":":
            if depth == 1:
                member = last_string
            continue
        if char == b",":
            if array_at is not None and depth == (1 if wanted is None else 2):
                items.append(body[item_from : token.start()].strip())
                item_from = token.end()
            elif depth == 1:
                member = None
            continue
        if char in b"[{":
            if array_at is None and char == b"[":
                top_array = wanted is None and depth == 0
                if top_array or (depth == 1 and member == wanted):
                    array_at, item_from = token.start(), token.end()
            depth += 1
            continue
        depth -= 1  # "]" or "}"
        if array_at is not None and char == b"]" and depth == (0 if wanted is None else 1):
            last = body[item_from : token.start()].strip()
            if last or items:
                items.append(last)
            return body[:array_at] + b"[]" + body[token.end() :], items
    return None
