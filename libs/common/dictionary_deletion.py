"""Deleting the rows of the dictionaries whose values may be personal data: pages (url, title,
path; `event_pages`) and sources (referrer ... UTM; `event_sources`), libs/common/
event_dictionary.py. An event row holds their keys, so a row of theirs may go only when no
event row holds its key any more: by an erasure (the erased person's values that no other
event shows) and by the tiering service's sweep after it deleted hot rows.

Keys are looked up (and assigned) before the write's transaction, so a value can be deleted
between a writer's look-up and its commit. Both deleters hold the project's derived-tables
lock, and a writer, once it holds the same lock (after its rows are written, before it
commits), checks that every such key it wrote still exists (`check_keys`): a value deleted in
between makes the writer roll back and look its values up again (`KeysSwept`), and a value
used by a writer that committed first is seen as in use by the deleter. So no event row ever
holds a key without its value. Clients (`event_clients`) are no one's personal data and are
never deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import asyncpg

from libs.common.db import lock_derived_tables
from libs.common.errors import StrataError
from libs.common.event_dictionary import PAGES, SOURCES, Dictionary

# The dictionaries whose rows are deleted once no event row holds their key.
PERSONAL: tuple[Dictionary, ...] = (PAGES, SOURCES)


class KeysSwept(asyncpg.exceptions.SerializationError, StrataError):  # type: ignore[misc]
    """A page or source key the write used was deleted (an erasure or the sweep) before the
    write took its lock: the write is rolled back and its values looked up again (transient,
    like a serialization failure, for a caller that retries)."""

    code = "dictionary_keys_swept"


async def check_keys(conn: asyncpg.Connection, keys: Mapping[Dictionary, Iterable[int]]) -> None:
    """Raise `KeysSwept` if a key is gone: call in the write's transaction, holding the
    derived-tables lock of every project it writes."""
    for dictionary, used in keys.items():
        wanted = sorted(set(used))
        if not wanted:
            continue
        found = await conn.fetchval(
            f"SELECT count(*) FROM {dictionary.table} WHERE {dictionary.key} = ANY($1::bigint[])",
            wanted,
        )
        if found != len(wanted):
            raise KeysSwept(f"{len(wanted) - found} of the batch's {dictionary.table} are gone")


async def delete_unused(
    conn: asyncpg.Connection, project_id: str, keys: Mapping[Dictionary, Iterable[int]]
) -> int:
    """Delete the rows among `keys` that no event row of the project holds (call in a
    transaction holding the project's derived-tables lock); how many. A scan of the project's
    rows per dictionary: an erasure's values."""
    deleted = 0
    for dictionary, candidates in keys.items():
        deleted += await _delete_unheld(conn, dictionary, project_id, candidates, None)
    return deleted


async def _delete_unheld(
    conn: asyncpg.Connection,
    dictionary: Dictionary,
    project_id: str,
    keys: Iterable[int],
    since: int | None,
) -> int:
    """Delete the rows among `keys` that no event row of the project holds (of those written by
    transactions at or above `since`, when given); how many."""
    wanted = sorted(set(keys))
    if not wanted:
        return 0
    table, key = dictionary.table, dictionary.key
    recent = "" if since is None else " AND e.inserted_xid >= $3"
    deleted: int = await conn.fetchval(
        f"""WITH gone AS (
               DELETE FROM {table} AS d
               WHERE d.project_id = $1 AND d.{key} = ANY($2::bigint[])
               AND d.{key} NOT IN (
                   SELECT e.{key} FROM event_rows AS e
                   WHERE e.project_id = $1 AND e.{key} = ANY($2::bigint[]){recent})
               RETURNING 1)
           SELECT count(*) FROM gone""",
        project_id,
        wanted,
        *(() if since is None else (since,)),
    )
    return deleted


async def sweep(conn: asyncpg.Connection, project_id: str) -> int:
    """Delete the project's pages and sources no event row holds (after hot rows were deleted);
    how many. The project's rows are scanned without the lock, in one snapshot (`unused_keys`);
    then, under the lock, only rows written since that snapshot are checked again for the
    values found unused (`delete_unused_since`), so writers wait for a short look-up, not the
    scan."""
    deleted = 0
    for dictionary in PERSONAL:
        since, unused = await unused_keys(conn, dictionary, project_id)
        if unused:
            deleted += await delete_unused_since(conn, dictionary, project_id, unused, since)
    return deleted


async def unused_keys(
    conn: asyncpg.Connection, dictionary: Dictionary, project_id: str
) -> tuple[int, list[int]]:
    """(the snapshot's xmin, the project's keys of `dictionary` no event row visible to it
    holds), from one snapshot: a row not visible to it was written by a transaction at or
    above that xmin."""
    table, key = dictionary.table, dictionary.key
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        since: int = await conn.fetchval(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )
        rows = await conn.fetch(
            f"""SELECT d.{key} AS key FROM {table} AS d
                WHERE d.project_id = $1 AND NOT EXISTS (
                    SELECT 1 FROM event_rows AS e
                    WHERE e.project_id = $1 AND e.{key} = d.{key})
                ORDER BY 1""",
            project_id,
        )
    return since, [r["key"] for r in rows]


async def delete_unused_since(
    conn: asyncpg.Connection,
    dictionary: Dictionary,
    project_id: str,
    keys: Iterable[int],
    since: int,
) -> int:
    """Delete the rows among `keys` (unused as of a snapshot whose xmin was `since`) that no
    event row written since holds (`inserted_xid` at or above `since`, which its BRIN index
    finds), under the project's derived-tables lock; how many."""
    async with conn.transaction():
        await lock_derived_tables(conn, (project_id,))
        return await _delete_unheld(conn, dictionary, project_id, keys, since)
