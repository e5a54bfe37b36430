"""Token-bucket rate limits per write key, and where a request's key is read from."""

from __future__ import annotations

import base64

import pytest

from services.ingest.auth import key_from_authorization
from services.ingest.rate_limits import WriteKeyRateLimiter, retry_after_header


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = FakeClock()
    limiter = WriteKeyRateLimiter(10.0, 50.0, clock)
    assert limiter.retry_after("k", 50, None) == 0.0
    assert limiter.retry_after("k", 5, None) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.retry_after("k", 5, None) == 0.0
    assert limiter.retry_after("k", 20, None) == pytest.approx(2.0)
    # Another key has its own bucket.
    assert limiter.retry_after("other", 50, None) == 0.0


def test_a_request_larger_than_the_burst_passes_once_full_and_leaves_debt() -> None:
    clock = FakeClock()
    limiter = WriteKeyRateLimiter(10.0, 20.0, clock)
    assert limiter.retry_after("k", 100, None) == 0.0
    # 80 events of debt: the next event waits for 81 tokens.
    assert limiter.retry_after("k", 1, None) == pytest.approx(8.1)


def test_a_project_override_scales_rate_and_burst() -> None:
    clock = FakeClock()
    limiter = WriteKeyRateLimiter(5000.0, 20000.0, clock)  # burst = 4 s of traffic
    assert limiter.retry_after("k", 8, 2.0) == 0.0
    assert limiter.retry_after("k", 1, 2.0) == pytest.approx(0.5)
    # A raised limit applies to the existing bucket.
    clock.now += 1.0
    assert limiter.retry_after("k", 3, 100.0) == 0.0


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after_header(s) for s in (0.01, 1.0, 1.2, 7.9)] == ["1", "1", "2", "8"]


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Basic " + base64.b64encode(b"sk_w_abc:").decode(), "sk_w_abc"),
        ("basic " + base64.b64encode(b"sk_w_abc:ignored").decode(), "sk_w_abc"),
        ("Basic " + base64.b64encode(b"sk_w_abc").decode(), "sk_w_abc"),
        ("Bearer sk_w_xyz", "sk_w_xyz"),
        ("Basic not-base64!", None),
        ("Basic " + base64.b64encode(b":password-only").decode(), None),
        ("Digest abc", None),
        ("", None),
        (None, None),
    ],
)
def test_key_from_authorization(header: str | None, key: str | None) -> None:
    assert key_from_authorization(header) == key
