"""Repeated strings of events stored once per project, each set keyed by a 64-bit identity: a
page (url, title, path; `event_pages`), a client (browser, browser version, OS, OS version,
device type, locale; `event_clients`) and a source (referrer, referrer domain, channel, UTM
parameters, and the `$search_engine` and `$social_network` properties enrichment names from
them; `event_sources`). An event row holds the keys (`page_key`, `client_key`, `source_key`),
and the `events` view puts the strings back (migrations 0029-0031, 0034). Pages' and
sources' rows are deleted once no event row holds them (libs/common/dictionary_deletion.py).

Keys are looked up, and assigned to values never seen, before the write's transaction and
committed on their own, as person keys are: one statement per project and dictionary for a
batch's distinct values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import md5
from typing import Any

import asyncpg

from libs.common.errors import StrataError
from libs.common.model.event_encoding import SOURCE_PROPERTIES

# (project_id, value, value, ...): an entry as events carry it.
Entry = tuple[Any, ...]


class KeysNotSettled(asyncpg.exceptions.SerializationError, StrataError):  # type: ignore[misc]
    """Some values' keys were still missing after three look-ups (each racing a writer that
    inserted them after the statement's snapshot): the write is retried as transient."""

    code = "dictionary_keys_not_settled"


@dataclass(frozen=True)
class Dictionary:
    """One dictionary table: its name, its key column, the event columns it stores and the
    event properties it stores (column, property key), whose row leaves them out of
    `properties` (libs/common/model/event_encoding.py)."""

    table: str
    key: str
    columns: tuple[str, ...]
    properties: tuple[tuple[str, str], ...] = ()
    sql: str = field(init=False, repr=False)

    @property
    def stored(self) -> tuple[str, ...]:
        """Every value column of the table: the event columns, then the properties'."""
        return (*self.columns, *(column for column, _ in self.properties))

    def __post_init__(self) -> None:
        n = len(self.stored)
        arrays = ", ".join(f"${i + 3}::text[]" for i in range(n))
        names = ", ".join(self.stored)
        asked = ", ".join(f"a.{c}" for c in self.stored)
        # The asked values' keys: those already stored, then those inserted now. A value
        # another writer inserts after this statement's snapshot is missing from the result:
        # the caller asks again.
        object.__setattr__(
            self,
            "sql",
            f"""
WITH asked AS (
    SELECT * FROM unnest($2::uuid[], {arrays}) AS u(digest, {names})
), known AS (
    SELECT d.digest, d.{self.key} AS key FROM {self.table} AS d
    WHERE d.project_id = $1 AND d.digest = ANY($2::uuid[])
), added AS (
    INSERT INTO {self.table} (project_id, digest, {names})
    SELECT $1, a.digest, {asked} FROM asked AS a
    WHERE a.digest NOT IN (SELECT digest FROM known)
    ORDER BY a.digest
    ON CONFLICT (project_id, digest) DO NOTHING
    RETURNING digest, {self.key} AS key
)
SELECT digest, key FROM known UNION ALL SELECT digest, key FROM added
""",
        )

    def digest(self, values: Iterable[str | None]) -> str:
        """The values' key within their project, as a UUID's hex: an md5 of the values, each
        with its length (or `-` for NULL), so no two entries share one by accident of
        concatenation. Properties' values that are NULL at the end are left out, so an entry
        without them keeps the digest it had before the dictionary stored properties."""
        parts = [f"{len(v)}:{v}" if v is not None else "-" for v in values]
        while len(parts) > len(self.columns) and parts[-1] == "-":
            parts.pop()
        return md5("|".join(parts).encode()).hexdigest()


PAGES = Dictionary("event_pages", "page_key", ("url", "title", "path"))
CLIENTS = Dictionary(
    "event_clients",
    "client_key",
    ("browser", "browser_version", "os", "os_version", "device_type", "locale"),
)
SOURCES = Dictionary(
    "event_sources",
    "source_key",
    (
        "referrer",
        "referrer_domain",
        "channel",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "utm_term",
        "utm_content",
    ),
    # What ingest's enrichment names from the referrer or the UTM source (migration 0034), in
    # the order of the bits the row's derived_fields leaves them out with.
    properties=tuple(
        zip(("search_engine", "social_network"), (k for _, k in SOURCE_PROPERTIES), strict=True)
    ),
)


async def assign_keys(
    conn: asyncpg.Connection, dictionary: Dictionary, entries: Iterable[Entry]
) -> dict[Entry, int]:
    """Each entry's key in `dictionary`, inserted now for values never stored (in the caller's
    transaction if it has one, else committed at once); an entry whose values are all NULL has
    none (the row's key is NULL). An entry may stop after the event columns: its properties'
    values are NULL."""
    width = len(dictionary.stored)
    by_project: dict[str, dict[str, tuple[Entry, Entry]]] = {}
    for entry in set(entries):
        values = entry[1:] + (None,) * (width - len(entry) + 1)
        if all(v is None for v in values):
            continue
        by_project.setdefault(entry[0], {})[dictionary.digest(values)] = (entry, values)
    keys: dict[Entry, int] = {}
    for project_id in sorted(by_project):
        missing = by_project[project_id]
        for _ in range(3):
            digests = sorted(missing)
            columns = [[missing[d][1][i] for d in digests] for i in range(width)]
            for row in await conn.fetch(dictionary.sql, project_id, digests, *columns):
                keys[missing.pop(row["digest"].hex)[0]] = row["key"]
            if not missing:
                break
        else:
            raise KeysNotSettled(f"{dictionary.table}: keys of {len(missing)} values not settled")
    return keys
