"""Ids event scans must hide: the persons of open erasure requests, whose rows PostgreSQL no
longer holds but day files still do until the tiering service rewrites them.

The table is small (open requests only) and changes rarely, so each project's ids are kept in
memory and reloaded only when the project's (row count, newest request) pair changes: one
index-only probe per scan. Rows are only ever inserted with a new request or deleted when a
request completes, so the pair changes whenever the set does.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class _ProjectErasures:
    version: tuple[int, int]
    ids: frozenset[str]


class ErasedIds:
    """Each project's erased ids still to be filtered out of day-file reads."""

    def __init__(self) -> None:
        self._projects: dict[str, _ProjectErasures] = {}
        self.reloads = 0  # since start (tests, metrics)

    async def ids(self, conn: asyncpg.Pool | asyncpg.Connection, project_id: str) -> frozenset[str]:
        """The ids (as distinct_id or user_id) whose rows no read may return."""
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(max(request_id), 0) AS newest FROM erased_ids"
            " WHERE project_id = $1",
            project_id,
        )
        version = (int(row["n"]), int(row["newest"]))
        cached = self._projects.get(project_id)
        if cached is not None and cached.version == version:
            return cached.ids
        if version[0] == 0:
            ids: frozenset[str] = frozenset()
        else:
            ids = frozenset(
                await conn.fetchval(
                    "SELECT array_agg(DISTINCT distinct_id) FROM erased_ids WHERE project_id = $1",
                    project_id,
                )
                or ()
            )
        self.reloads += 1
        self._projects[project_id] = _ProjectErasures(version, ids)
        return ids
