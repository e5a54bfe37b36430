"""What ingest answers a request with: the accepted count and each item rejected or skipped
(the 2xx and 4xx JSON bodies, and their OpenAPI schemas)."""

from __future__ import annotations

import msgspec

from libs.common.errors import StrataError

# Ids as the sender gave them (a string or a number), or null when the item had none.
ItemId = str | int | None


class Rejection(msgspec.Struct, frozen=True):
    """An item not accepted: `index` in the request's items, and why."""

    index: int
    messageId: ItemId
    error: str


class Skip(msgspec.Struct, frozen=True):
    """An item accepted but not stored on purpose (e.g. no consent), and why."""

    index: int
    messageId: ItemId
    reason: str


class IngestAnswer(msgspec.Struct, frozen=True):
    """200: the request was stored on JetStream (acknowledged) except its rejected items."""

    success: bool
    accepted: int
    rejected: list[Rejection]
    skipped: list[Skip] = []


class IngestError(msgspec.Struct, frozen=True):
    """4xx/5xx: nothing of the request was accepted; `error` says why. When every item was
    rejected (400), each is listed."""

    success: bool
    error: str
    accepted: int | None = None
    rejected: list[Rejection] = []
    skipped: list[Skip] = []


class RetryLater(StrataError):
    """A store ingest depends on is unavailable, nothing of the request was accepted: 503."""

    code = "ingest_retry_later"
    http_status = 503

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # sent as the Retry-After header
