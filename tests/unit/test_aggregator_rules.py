"""The aggregator's failure rules without infrastructure: what is poison, what is transient,
and how fetched messages are cut into transactions (the dead-letter cap: test_dead_letters.py)."""

from __future__ import annotations

import inspect

import asyncpg
import msgspec
import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from libs.common.observability import Liveness
from libs.common.schemas.events_v1 import EnrichedBatchV1
from libs.common.settings import AggregatorSettings
from libs.common.subjects import Subjects
from services.aggregator import writer
from services.aggregator.consumer import (
    Aggregator,
    PoisonMessage,
    decode_batch,
    is_transient,
    transactions,
)
from services.aggregator.metrics import AggregatorMetrics
from tests.support.recompute import make_event


def test_a_valid_batch_decodes() -> None:
    payload = msgspec.json.encode(
        EnrichedBatchV1(batch_id="b", project_id="acme", name="$pageview", events=[make_event()])
    )
    assert decode_batch(payload).events[0].path == "/"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{oops", "undecodable EnrichedBatchV1: JSON is malformed"),
        (b'{"batch_id": "b", "project_id": "acme", "name": "x"}', "missing required field"),
        (
            b'{"v": 2, "batch_id": "b", "project_id": "acme", "name": "x", "events": []}',
            "unsupported schema version 2 (expected 1)",
        ),
    ],
)
def test_poison_says_why(payload: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode_batch(payload)


def test_naive_timestamps_are_poison() -> None:
    event = msgspec.json.decode(msgspec.json.encode(make_event()))
    event["ts"] = "2024-03-04T10:00:00"  # no offset
    payload = msgspec.json.encode(
        {"batch_id": "b", "project_id": "acme", "name": "$pageview", "events": [event]}
    )
    with pytest.raises(PoisonMessage, match="time zone"):
        decode_batch(payload)


def test_transient_versus_data_faults() -> None:
    assert is_transient(asyncpg.exceptions.SerializationError("could not serialize"))
    assert is_transient(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))
    assert is_transient(ConnectionResetError())
    assert is_transient(asyncpg.exceptions.ConnectionDoesNotExistError("closed"))
    assert is_transient(
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        )
    )
    assert is_transient(
        asyncpg.exceptions.CheckViolationError('no partition of relation "events" found for row')
    )
    # An older aggregator against a migrated table, or a newer one before its migration.
    assert is_transient(asyncpg.exceptions.UndefinedColumnError('column "event_id" does not exist'))
    assert is_transient(asyncpg.exceptions.UndefinedFunctionError("event_id_digest(text, text)"))
    assert not is_transient(asyncpg.exceptions.UntranslatableCharacterError("\\u0000"))
    assert not is_transient(asyncpg.exceptions.CheckViolationError("some other check"))
    assert not is_transient(ValueError("bug"))


def test_fetched_messages_are_written_in_runs_of_bounded_size() -> None:
    class Fetched:
        def __init__(self, size: int) -> None:
            self.data = b"x" * size

    msgs = [Fetched(n) for n in (3, 4, 2, 9, 1, 1)]
    runs = [[len(m.data) for m in run] for run in transactions(msgs, max_bytes=8)]  # type: ignore[arg-type]
    # In delivery order, every message once, none split; an oversized one alone.
    assert runs == [[3, 4], [2], [9], [1, 1]]
    assert [len(run) for run in transactions(msgs, max_bytes=100)] == [6]  # type: ignore[arg-type]


class _IdleSubscription:
    """A pull subscription on an empty stream, as nats-py reports it: fetches time out (with
    its own TimeoutError, or asyncio's on a long poll)."""

    def __init__(self, aggregator: Aggregator, timeouts: list[BaseException]) -> None:
        self.aggregator = aggregator
        self.timeouts = timeouts

    async def fetch(self, batch: int, timeout: float) -> list[object]:  # noqa: ASYNC109
        if not self.timeouts:
            self.aggregator.stop()
            return []
        raise self.timeouts.pop(0)


class _Connection:
    is_connected = True

    def jetstream(self) -> object:
        return object()


async def test_an_idle_stream_is_not_logged_as_a_failure() -> None:
    aggregator = Aggregator(
        _Connection(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        Subjects("t"),
        AggregatorSettings(),
        AggregatorMetrics(CollectorRegistry()),
        Liveness(),
    )
    idle = _IdleSubscription(aggregator, [NatsTimeoutError(), TimeoutError(), TimeoutError()])
    with capture_logs() as logs:
        await aggregator._consume(idle)  # type: ignore[arg-type]
    assert logs == []


def test_the_writers_statements_stay_in_asyncpgs_statement_cache() -> None:
    # A longer statement is prepared (parsed, described and planned) again at every call:
    # the session merge once was, at ~12 us of planning per event on live traffic.
    limit = inspect.signature(asyncpg.connect).parameters["max_cacheable_statement_size"].default
    statements = {
        name: value
        for name, value in vars(writer).items()
        if name.startswith("_")
        and name.isupper()
        and isinstance(value, str)
        and value.lstrip().startswith(("WITH", "SELECT", "INSERT", "DELETE"))
    }
    assert "_APPLY_SESSIONS" in statements
    assert {name: len(sql) for name, sql in statements.items() if len(sql) > limit} == {}
