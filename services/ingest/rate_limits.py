"""Per-write-key rate limit in events per second (token bucket).

A bucket holds up to `burst` tokens and refills at `rate` per second; a request takes one token
per event. The burst scales with a project's own rate (the default burst covers
`rate_limit_burst / rate_limit_per_s` seconds of traffic, and so does a project's), so a low
project limit is not swamped by the default burst.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated_at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated_at = now

    def take(self, count: int, now: float) -> float:
        """Take `count` tokens; returns 0 when allowed, else the seconds until it would be.

        A request larger than the burst is allowed once the bucket is full and leaves it in
        debt, so a big batch is slowed down, never refused forever."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated_at) * self.rate)
        self.updated_at = now
        needed = min(float(count), self.burst)
        if self.tokens >= needed:
            self.tokens -= count
            return 0.0
        return (needed - self.tokens) / self.rate


class WriteKeyRateLimiter:
    """One token bucket per write key."""

    def __init__(
        self,
        default_rate_per_s: float,
        default_burst: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if default_rate_per_s <= 0 or default_burst <= 0:
            raise ValueError("rate limit and burst must be positive")
        self._default_rate = default_rate_per_s
        self._burst_s = default_burst / default_rate_per_s
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def retry_after(self, key_id: str, events: int, rate_override: float | None) -> float:
        """0 when `events` may pass now; else the seconds to wait before retrying."""
        rate = (
            rate_override
            if rate_override is not None and rate_override > 0
            else (self._default_rate)
        )
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(rate, rate * self._burst_s, now)
        elif bucket.rate != rate:  # the project's limit changed (seen after the key cache TTL)
            bucket.rate, bucket.burst = rate, rate * self._burst_s
        return bucket.take(events, now)


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so a client that obeys it succeeds."""
    return str(max(1, math.ceil(seconds)))
