"""The dead-letter policy both consumers use: the cap by count and by ratio over a window, the
same limits read from the same settings, and what a dead letter carries (the DLQ headers, the
original's trace context, a message id that makes a second dead-lettering a duplicate)."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.msg import Msg

from libs.common.dead_letters import (
    DeadLetterBudget,
    DeadLetterCapExceeded,
    DlqHeader,
    DlqLimit,
    dead_letter_headers,
)
from libs.common.settings import AggregatorSettings, SessionizerSettings, from_env

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_count_cap() -> None:
    budget = DeadLetterBudget(DlqLimit(window_s=60, max_count=2, max_ratio=1.0, min_messages=1))
    budget.spend()
    budget.spend()
    with pytest.raises(DeadLetterCapExceeded, match="dlq_max_count=2"):
        budget.spend()


def test_ratio_cap_waits_for_enough_messages() -> None:
    budget = DeadLetterBudget(DlqLimit(window_s=60, max_count=100, max_ratio=0.5, min_messages=10))
    budget.spend()  # 1 of 1, but too few messages to judge a ratio
    budget.record_handled(7)
    budget.spend()  # 2 of 9
    budget.spend()  # 3 of 10: 0.3
    budget.spend()  # 4 of 11
    budget.spend()  # 5 of 12
    budget.spend()  # 6 of 13
    budget.spend()  # 7 of 14: 0.5, not past it
    with pytest.raises(DeadLetterCapExceeded, match=r"8 of the last 15 .* dlq_max_ratio=0.5"):
        budget.spend()


def test_both_consumers_read_the_same_cap_from_the_same_variables() -> None:
    environ = {
        "STRATA_DLQ_MAX_COUNT": "7",
        "STRATA_DLQ_MAX_RATIO": "0.25",
        "STRATA_DLQ_WINDOW_S": "60",
        "STRATA_DLQ_RATIO_MIN_MESSAGES": "40",
    }
    aggregator = DlqLimit.from_settings(from_env(AggregatorSettings, environ))
    sessionizer = DlqLimit.from_settings(from_env(SessionizerSettings, environ))
    assert aggregator == sessionizer == DlqLimit(60, 7, 0.25, 40)
    assert DlqLimit.from_settings(AggregatorSettings()) == DlqLimit.from_settings(
        SessionizerSettings()
    )


def _delivered(headers: dict[str, str] | None) -> Msg:
    """A message as JetStream delivers it: stream RAW, stream sequence 42, 3rd delivery."""
    reply = "$JS.ACK.RAW.consumer.3.42.17.1700000000000000000.0"
    return Msg(_client=None, subject="p.raw.v1.3", reply=reply, data=b"x", headers=headers)  # type: ignore[arg-type]


def test_a_dead_letter_keeps_the_trace_context_but_not_jetstream_headers() -> None:
    original: dict[str, Any] = {
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=1",
        "Nats-Msg-Id": "ingest-abc",
        DlqHeader.REASON: "an earlier failure",
    }
    headers = dead_letter_headers("sessionizer", _delivered(original), "bad\nbatch")
    assert headers["traceparent"] == TRACEPARENT and headers["tracestate"] == "vendor=1"
    assert headers["Nats-Msg-Id"] == "sessionizer:RAW:42"  # not the original's id
    assert headers[DlqHeader.REASON] == "bad batch"  # one line
    assert headers[DlqHeader.ORIGINAL_SUBJECT] == "p.raw.v1.3"
    assert headers[DlqHeader.ORIGINAL_STREAM] == "RAW"
    assert (headers[DlqHeader.ORIGINAL_SEQ], headers[DlqHeader.DELIVERIES]) == ("42", "3")
    assert DlqHeader.EVENT_ID not in headers


def test_each_event_cut_out_of_a_message_has_its_own_message_id() -> None:
    msg = _delivered(None)
    first = dead_letter_headers("aggregator", msg, "r", event_id="e1")
    by_index = dead_letter_headers("sessionizer", msg, "r", event_id="#2", part="2")
    assert (first["Nats-Msg-Id"], first[DlqHeader.EVENT_ID]) == ("aggregator:RAW:42:e1", "e1")
    assert by_index["Nats-Msg-Id"] == "sessionizer:RAW:42:2"
