"""The enriched and session-update publishes of one partition whose JetStream acks are still
outstanding: pipelined up to a cap, never unbounded, and settled before any checkpoint.

Awaiting each publish's ack before the next costs a NATS round trip per message; gathering
every ack only at the checkpoint keeps an unbounded number in flight. Instead up to `cap`
publishes stay in flight, and when the cap is reached the oldest are awaited until at most half
remain. A failed or late ack raises PublishFailed: the partition restarts from its checkpoint
without acking its input, and the replay republishes under the same message ids.
"""

from __future__ import annotations

import asyncio
from collections import deque

from nats.js.api import PubAck

from libs.common.errors import StrataError


class PublishFailed(StrataError, RuntimeError):
    """JetStream did not acknowledge an enriched or session-update publish in time."""

    code = "publish_failed"


class PublishAcks:
    """Outstanding publish acks, oldest first."""

    def __init__(self, cap: int, timeout_s: float) -> None:
        self.cap = max(2, cap)
        self.timeout_s = timeout_s
        self._pending: deque[asyncio.Future[PubAck]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, future: asyncio.Future[PubAck]) -> None:
        """Remember one publish whose ack is still to come (call `make_room` after)."""
        self._pending.append(future)

    async def make_room(self) -> None:
        """At the cap, wait until the oldest half are acked (or raise PublishFailed)."""
        if len(self._pending) >= self.cap:
            await self._settle_down_to(self.cap // 2)

    async def settle(self) -> None:
        """Wait until every publish so far is acked (or raise PublishFailed): before a
        checkpoint, since the input is acked only after all its outputs are."""
        await self._settle_down_to(0)

    def cancel(self) -> None:
        """Drop every outstanding publish (after a failure: the replay republishes them).
        Cancelling releases the client's publish_async slots."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()

    async def _settle_down_to(self, keep: int) -> None:
        # The oldest first, in publish order: a failure among them stops here, and nothing
        # after it counts as acked.
        settling = [self._pending[i] for i in range(len(self._pending) - keep)]
        if not settling:
            return
        _, late = await asyncio.wait(settling, timeout=self.timeout_s)
        if late:
            raise PublishFailed(f"{len(late)} publishes not acknowledged within {self.timeout_s}s")
        for future in settling:
            exc = future.exception()
            if exc is not None:
                raise PublishFailed(f"publish rejected: {exc!r}") from exc
            self._pending.popleft()
