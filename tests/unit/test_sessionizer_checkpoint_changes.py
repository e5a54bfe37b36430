"""Incremental sessionizer checkpoints without a database: the persons a checkpoint stores as
changed, applied to the state as of the checkpoint before, give back the state exactly, over
random traffic (late events, server-side events, several projects, persons forgotten by
pruning), and a replay from the restored state assigns the same sessions."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from libs.common.schemas.events_v1 import EventV1
from services.sessionizer.checkpoints import (
    apply_changes,
    changes_of,
    decode_changes,
    decode_state,
    encode_changes,
    encode_state,
)
from services.sessionizer.session_window import PartitionSessions, sessionize_batch
from tests.support.sessionizer_traffic import RULES, T0, random_traffic


@pytest.mark.parametrize("seed", range(8))
def test_restored_state_equals_the_checkpointed_state(seed: int) -> None:
    rng = random.Random(seed)
    state = PartitionSessions()
    restored = decode_state(encode_state(state))  # the base
    changed: set[tuple[str, str]] = set()
    pruned = checkpoints = 0
    for seq, batch in enumerate(random_traffic(rng, 300), start=1):
        pruned += sessionize_batch(state, batch, seq, lambda _: RULES, changed).persons_pruned
        if rng.random() < 0.2:  # a checkpoint
            apply_changes(restored, decode_changes(encode_changes(changes_of(state, changed))))
            changed = set()
            checkpoints += 1
            assert restored == state
    assert pruned > 0 and checkpoints > 10  # the traffic did forget persons
    apply_changes(restored, decode_changes(encode_changes(changes_of(state, changed))))
    assert restored == state

    # Sessionizing on from the restored state assigns what the live state assigns.
    more = random_traffic(random.Random(seed + 100), 30)
    for seq, batch in enumerate(more, start=1000):
        live = sessionize_batch(state, batch, seq, lambda _: RULES)
        again = sessionize_batch(restored, batch, seq, lambda _: RULES)
        assert [e.session_id for e in again.events] == [e.session_id for e in live.events]
    assert restored == state


def test_a_checkpoint_stores_only_the_persons_changed_since_the_last() -> None:
    state = PartitionSessions()
    changed: set[tuple[str, str]] = set()
    events = [
        EventV1(
            event_id=f"e{i}",
            project_id="acme",
            type="page",
            name="$pageview",
            ts=T0 + timedelta(seconds=i),
            received_at=T0 + timedelta(seconds=i),
            distinct_id=f"p{i}",
            path="/",
        )
        for i in range(50)
    ]
    sessionize_batch(state, events, 1, lambda _: RULES, changed)
    assert len(changes_of(state, changed).persons["acme"]) == 50
    changed = set()
    later = EventV1(
        event_id="late",
        project_id="acme",
        type="page",
        name="$pageview",
        ts=T0 + timedelta(minutes=5),
        received_at=T0 + timedelta(minutes=5),
        distinct_id="p7",
        path="/pricing",
    )
    sessionize_batch(state, [later], 2, lambda _: RULES, changed)
    changes = changes_of(state, changed)
    assert changes.persons == {"acme": {"p7": state.persons["acme"]["p7"]}}
    assert len(encode_changes(changes)) * 10 < len(encode_state(state))
