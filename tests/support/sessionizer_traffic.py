"""Random raw traffic for the sessionizer's state tests: late events, server-side events, two
projects, and receipt time moving on in bursts so that persons age out and are pruned."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from libs.common.schemas.events_v1 import EventV1
from services.sessionizer.session_window import SessionRules

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RULES = SessionRules(timeout_s=1800, max_s=4 * 3600)
# Mostly a second between messages: many persons stay held, and a few are still pruned.
LIVELY_GAPS_S = (1,) * 36 + (5, 30, 600, 4 * 3600)


def random_traffic(
    rng: random.Random,
    messages: int,
    persons: int = 40,
    gaps_s: Sequence[int] = (1, 5, 30, 600, 4 * 3600),
) -> list[list[EventV1]]:
    """Raw messages of a few events each, over persons of two projects; receipt time moves on
    by one of `gaps_s` seconds per message, so persons age out and are pruned along the way."""
    received = T0
    out: list[list[EventV1]] = []
    for m in range(messages):
        received += timedelta(seconds=rng.choice(gaps_s))
        batch = []
        for i in range(rng.randint(1, 6)):
            server_side = rng.random() < 0.15
            batch.append(
                EventV1(
                    event_id=f"e{m}-{i}",
                    project_id=rng.choice(["acme", "beta"]),
                    type="track" if server_side else "page",
                    name="invoice_paid" if server_side else "$pageview",
                    # Mostly now, sometimes late by up to two hours.
                    ts=received - timedelta(seconds=rng.choice([0, 0, 0, 90, 3000, 7200])),
                    received_at=received,
                    distinct_id=f"p{rng.randint(0, persons)}",
                    path=None if server_side else f"/{rng.randint(0, 5)}",
                    user_id=f"u{i}" if rng.random() < 0.1 else None,
                    non_interactive=rng.random() < 0.1,
                )
            )
        out.append(batch)
    return out
