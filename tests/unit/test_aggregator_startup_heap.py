"""The aggregator freezes its startup heap so collections stop rescanning it."""

from __future__ import annotations

import gc

from services.aggregator.__main__ import settle_startup_heap


def test_settle_startup_heap_moves_live_objects_to_the_permanent_generation() -> None:
    survivor = [object() for _ in range(100)]
    try:
        settle_startup_heap()
        assert gc.get_freeze_count() >= len(survivor)
        assert not any(survivor is o for o in gc.get_objects())  # no longer tracked
    finally:
        gc.unfreeze()
