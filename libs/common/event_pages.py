"""Pages stored once per project (migration 0029): an event row holds its page's key into
`event_pages` (url, title, path) instead of the three strings, and the `events` view puts them
back.

Keys are looked up, and assigned for pages never seen, before the write's transaction and
committed on their own (`assign_page_keys`, libs/common/event_dictionary.py), as person keys
are. A page row is deleted only
when no event row holds its key any more: by an erasure (its person's pages that no other event
shows, since a URL may carry personal data) and by the tiering service's sweep after it drops
day partitions. Both delete under the project's derived-tables lock, and a writer checks under
the same lock, after its rows are written and before it commits, that every page key it wrote
still exists (`check_page_keys`): a page deleted between the writer's look-up and its lock
makes the writer roll back and look its pages up again, and a page written by a writer that
committed first is seen as in use by the deleter. So no event row ever holds a key without a
page.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from libs.common.db import lock_derived_tables
from libs.common.errors import StrataError
from libs.common.event_dictionary import PAGES, assign_keys

# (project_id, url, title, path): a page as events carry it.
Page = tuple[str, str | None, str | None, str | None]


class PagesSwept(asyncpg.exceptions.SerializationError, StrataError):  # type: ignore[misc]
    """A page key the write used was deleted (an erasure or the sweep) before the write took its
    lock: the write is rolled back and its pages looked up again (transient, like a
    serialization failure, for a caller that retries)."""

    code = "pages_swept"


def page_digest(url: str | None, title: str | None, path: str | None) -> str:
    """A page's key within its project in `event_pages`, as a UUID's hex (`Dictionary.digest`)."""
    return PAGES.digest((url, title, path))


async def assign_page_keys(conn: asyncpg.Connection, pages: Iterable[Page]) -> dict[Page, int]:
    """Each page's key in `event_pages`, inserted now for pages never stored (in the caller's
    transaction if it has one, else committed at once); a page of three NULLs has none (the
    row's key is NULL)."""
    return await assign_keys(conn, PAGES, pages)


async def check_page_keys(conn: asyncpg.Connection, keys: Iterable[int]) -> None:
    """Raise `PagesSwept` if a page key is gone: call in the write's transaction, holding the
    derived-tables lock of every project it writes."""
    wanted = sorted(set(keys))
    if not wanted:
        return
    found = await conn.fetchval(
        "SELECT count(*) FROM event_pages WHERE page_key = ANY($1::bigint[])", wanted
    )
    if found != len(wanted):
        raise PagesSwept(f"{len(wanted) - found} of the batch's pages were deleted meanwhile")


async def delete_unused_pages(
    conn: asyncpg.Connection, project_id: str, keys: Iterable[int]
) -> int:
    """Delete the pages among `keys` that no event row of the project holds (call in a
    transaction holding the project's derived-tables lock); how many. One scan of the
    project's rows: an erasure's pages."""
    wanted = sorted(set(keys))
    if not wanted:
        return 0
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM event_pages AS p
               WHERE p.project_id = $1 AND p.page_key = ANY($2::bigint[])
               AND p.page_key NOT IN (
                   SELECT e.page_key FROM event_rows AS e
                   WHERE e.project_id = $1 AND e.page_key = ANY($2::bigint[]))
               RETURNING 1)
           SELECT count(*) FROM gone""",
        project_id,
        wanted,
    )
    return deleted


async def sweep_pages(conn: asyncpg.Connection, project_id: str) -> int:
    """Delete the project's pages no event row holds (after day partitions were dropped); how
    many. The project's rows are scanned without the lock, in one snapshot (`unused_pages`);
    then, under the lock, only rows written since that snapshot are checked again for the pages
    found unused (`delete_unused_since`), so writers wait for a short look-up, not the scan."""
    since, unused = await unused_pages(conn, project_id)
    return await delete_unused_since(conn, project_id, unused, since) if unused else 0


async def unused_pages(conn: asyncpg.Connection, project_id: str) -> tuple[int, list[int]]:
    """(the snapshot's xmin, the project's pages no event row visible to it holds), from one
    snapshot: a row not visible to it was written by a transaction at or above that xmin."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        since: int = await conn.fetchval(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )
        rows = await conn.fetch(
            """SELECT p.page_key FROM event_pages AS p
               WHERE p.project_id = $1 AND NOT EXISTS (
                   SELECT 1 FROM event_rows AS e
                   WHERE e.project_id = $1 AND e.page_key = p.page_key)
               ORDER BY 1""",
            project_id,
        )
    return since, [r["page_key"] for r in rows]


async def delete_unused_since(
    conn: asyncpg.Connection, project_id: str, keys: Iterable[int], since: int
) -> int:
    """Delete the pages among `keys` (unused as of a snapshot whose xmin was `since`) that no
    row written since holds (`inserted_xid` at or above `since`, which its BRIN index finds),
    under the project's derived-tables lock; how many."""
    async with conn.transaction():
        await lock_derived_tables(conn, (project_id,))
        deleted: int = await conn.fetchval(
            """WITH gone AS (
                   DELETE FROM event_pages AS p
                   WHERE p.project_id = $1 AND p.page_key = ANY($2::bigint[])
                   AND p.page_key NOT IN (
                       SELECT e.page_key FROM event_rows AS e
                       WHERE e.project_id = $1 AND e.inserted_xid >= $3
                       AND e.page_key = ANY($2::bigint[]))
                   RETURNING 1)
               SELECT count(*) FROM gone""",
            project_id,
            sorted(set(keys)),
            since,
        )
    return deleted
