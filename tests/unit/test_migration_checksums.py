"""Applied migrations never change: each migration's checksum is recorded in
libs/common/migrations/checksums.sha256 when it is added (docs/operations.md, "Adding a
migration"), and a deployed database refuses a migration whose checksum differs from the one it
applied, so an edit must fail here first, before any deploy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from libs.common import db

RECORDED = Path(db.__file__).parent / "migrations" / "checksums.sha256"


def _recorded() -> dict[str, str]:
    checksums = {}
    for line in RECORDED.read_text().splitlines():
        checksum, name = line.split(maxsplit=1)
        checksums[name] = checksum
    return checksums


def test_no_recorded_migration_changed_or_disappeared() -> None:
    current = {name: db.migration_checksum(sql) for _, name, sql in db.migration_files()}
    changed = {name for name, checksum in _recorded().items() if current.get(name) != checksum}
    assert not changed, (
        f"{sorted(changed)} changed or vanished after being recorded as applied: restore them"
        " and put the change in a new migration"
    )


def test_every_migration_is_recorded() -> None:
    unrecorded = {name for _, name, _ in db.migration_files()} - _recorded().keys()
    assert not unrecorded, (
        f"record {sorted(unrecorded)} once final: cd libs/common/migrations &&"
        " sha256sum NNNN_name.sql >> checksums.sha256"
    )


def test_migration_numbers_are_unique() -> None:
    versions = Counter(version for version, _, _ in db.migration_files())
    assert [v for v, n in versions.items() if n > 1] == []
