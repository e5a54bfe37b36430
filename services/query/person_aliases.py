"""Each project's person aliases (device id -> person id), kept in memory between scans: every
scan resolves person_id through them, and reading 200k aliases from PostgreSQL takes ~100 ms,
most of an analysis's budget.

Aliases are only ever inserted (the first link of a device wins; erasure deletes), and each row
records its inserting transaction (`person_aliases.inserted_xid`). A scan reads only the rows at
or past the cached watermark, in one REPEATABLE READ snapshot whose xmin splits them: rows below
it are final and join the cache (the watermark moves to the xmin), rows at or above it may
belong to transactions still running and are used for this scan only. A cached row whose device
reappears among the new rows (deleted and linked again) is replaced, so a device never has two
aliases. Deletions alone are picked up by a full reload every `refresh_s`; `forget(project)`
drops a project's aliases at once (erasure in this process).

Each alias also carries the integer keys (`person_keys`, migration 0024) of its device and of
its person, so scans over keyed rows resolve persons as integers; NULL where an id has no key
(an alias written before the keys), and then a scan resolves persons by their ids only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from libs.common.day_files.postgres_rows import ProjectId, literal

ALIAS_SCHEMA = pa.schema(
    [
        ("distinct_id", pa.string()),
        ("person_id", pa.string()),
        ("device_key", pa.int64()),
        ("person_key", pa.int64()),
    ]
)
_TYPES = {
    "distinct_id": pa.string(),
    "person_id": pa.string(),
    "inserted_xid": pa.int64(),
    "device_key": pa.int64(),
    "person_key": pa.int64(),
}
_EMPTY = pa.schema(list(_TYPES.items())).empty_table()


@dataclass
class _ProjectAliases:
    final: pa.Table  # every alias with inserted_xid < watermark
    watermark: int
    loaded_at: float


class AliasCache:
    """Aliases of the most recently used projects, at most `max_rows` in all."""

    def __init__(self, *, refresh_s: float = 300.0, max_rows: int = 2_000_000) -> None:
        self.refresh_s = refresh_s
        self.max_rows = max_rows
        self._projects: OrderedDict[str, _ProjectAliases] = OrderedDict()
        self.rows_read = 0  # rows fetched from PostgreSQL since start (tests, metrics)

    def forget(self, project_id: str) -> None:
        """Drop a project's aliases; the next scan reads them all again."""
        self._projects.pop(project_id, None)

    async def aliases(self, pool: asyncpg.Pool, project_id: str) -> pa.Table:
        """The project's aliases as of now: (distinct_id, person_id, device_key, person_key), one
        row per device."""
        cached = self._projects.get(project_id)
        if cached is not None and time.monotonic() - cached.loaded_at > self.refresh_s:
            cached = None
        since = cached.watermark if cached is not None else 0
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                # The first statement fixes the snapshot the COPY below reads.
                xmin: int = await conn.fetchval(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                )
                new = await _copy(conn, project_id, since)
        self.rows_read += new.num_rows
        is_final = pc.less(new.column("inserted_xid"), xmin)
        final_new = new.filter(is_final).select(ALIAS_SCHEMA.names)
        pending = new.filter(pc.invert(is_final)).select(ALIAS_SCHEMA.names)
        if cached is None:
            final = final_new
            loaded_at = time.monotonic()
        else:
            final = _replace(cached.final, final_new)
            loaded_at = cached.loaded_at
        self._projects[project_id] = _ProjectAliases(final, max(xmin, since), loaded_at)
        self._projects.move_to_end(project_id)
        self._trim()
        if pending.num_rows == 0:
            return final
        return _replace(final, pending)

    def _trim(self) -> None:
        total = sum(p.final.num_rows for p in self._projects.values())
        while total > self.max_rows and len(self._projects) > 1:
            _, dropped = self._projects.popitem(last=False)
            total -= dropped.final.num_rows


def _replace(base: pa.Table, newer: pa.Table) -> pa.Table:
    """`base` with `newer`'s rows added, each replacing a base row of the same device."""
    if newer.num_rows == 0:
        return base
    if base.num_rows == 0:
        return newer.combine_chunks()
    replaced = pc.is_in(
        base.column("distinct_id"), value_set=newer.column("distinct_id").combine_chunks()
    )
    kept = base.filter(pc.invert(replaced))
    return pa.concat_tables([kept, newer])


async def _copy(conn: asyncpg.Connection, project_id: str, since: int) -> pa.Table:
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    project = literal(ProjectId(project_id))
    query = (
        "SELECT a.distinct_id, a.person_id, a.inserted_xid,"
        " d.key AS device_key, p.key AS person_key FROM person_aliases AS a"
        f" LEFT JOIN person_keys AS d ON d.project_id = {project} AND d.id = a.distinct_id"
        f" LEFT JOIN person_keys AS p ON p.project_id = {project} AND p.id = a.person_id"
        f" WHERE a.project_id = {project} AND a.inserted_xid >= {literal(since)}"
    )
    await conn.copy_from_query(query, output=collect, format="csv", header=True)
    data = b"".join(chunks)
    if data.find(b"\n") in (-1, len(data) - 1):
        # The header alone: no alias since the watermark, the usual answer (the CSV reader
        # costs ~1 ms to start).
        return _EMPTY
    return pacsv.read_csv(
        pa.BufferReader(data),
        convert_options=pacsv.ConvertOptions(
            column_types=_TYPES, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )
