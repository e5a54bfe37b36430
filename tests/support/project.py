from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TestProject:
    __test__ = False  # not a pytest test class

    id: str
    write_key: str
    read_key: str
    admin_key: str
