"""Persons resolved from stored keys in NumPy (`resolved_person_keys`) give what the scan's
alias join gives (`events_scan_keyed`): the alias's person where the row's device has one, else
the stored person key; the same over dense keys and over keys spread too wide for a table."""

from __future__ import annotations

import numpy as np

from services.query.person_keys import resolved_person_keys


def _joined(alias_key: list[int], person_key: list[int], aliases: dict[int, int]) -> list[int]:
    return [aliases.get(a, p) for a, p in zip(alias_key, person_key, strict=True)]


def test_aliases_resolved_as_the_join_resolves_them() -> None:
    rng = np.random.default_rng(3)
    for spread in (1, 1 << 40):  # dense keys, and keys spread past the dense table
        devices = rng.choice(5_000, size=700, replace=False) * spread
        persons = rng.integers(0, 5_000, size=700) * spread
        aliases = dict(zip(devices.tolist(), persons.tolist(), strict=True))
        # Rows of aliased devices, of devices without an alias, below and above every alias.
        alias_key = np.concatenate(
            [devices[:300], rng.integers(0, 5_000, size=300) * spread, [-1, 6_000 * spread]]
        )
        person_key = rng.integers(0, 5_000, size=alias_key.size) * spread
        got = resolved_person_keys(alias_key, person_key, devices, persons)
        assert got.tolist() == _joined(alias_key.tolist(), person_key.tolist(), aliases)
    # No aliases, or no rows.
    none = np.zeros(0, dtype=np.int64)
    assert resolved_person_keys(np.array([4]), np.array([5]), none, none).tolist() == [5]
    assert resolved_person_keys(none, none, np.array([1]), np.array([2])).tolist() == []
