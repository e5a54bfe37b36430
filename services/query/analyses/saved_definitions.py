"""Versioned, per-project storage of saved definitions (cohorts and custom metrics, migration
0008; the dashboard's insights and dashboards, 0019) in PostgreSQL: an update inserts the next
version, reads return the latest, the history keeps every version, a delete hides them all."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from ulid import ULID

from services.query.dependencies import ApiError
from services.query.params import ParamError

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class SavedVersion:
    """One stored version of a definition (`definition` is its JSON text)."""

    id: str
    version: int
    name: str
    description: str
    definition: str
    created_at: datetime
    created_by: str | None = None  # users.id of who saved this version (None: an API key)


@dataclass(frozen=True)
class DefinitionTable:
    """Where one kind of definition lives: `analysis_cohorts`, `metric_definitions`,
    `insights` or `dashboards`."""

    table: str
    id_column: str
    noun: str  # "cohort", "metric definition": for error messages
    id_prefix: str  # generated ids: `<prefix>_<ulid>`


COHORTS = DefinitionTable("analysis_cohorts", "cohort_id", "cohort", "c")
METRICS = DefinitionTable("metric_definitions", "metric_id", "metric definition", "m")
INSIGHTS = DefinitionTable("insights", "insight_id", "insight", "i")
DASHBOARDS = DefinitionTable("dashboards", "dashboard_id", "dashboard", "d")


def new_id(kind: DefinitionTable, given: str | None) -> str:
    """The caller's id (a slug) or a generated one."""
    if given is None:
        return f"{kind.id_prefix}_{str(ULID()).lower()}"
    if not ID_PATTERN.match(given):
        raise ParamError("id", "must be 1-63 of a-z, 0-9, _ and -, starting with a letter or digit")
    return given


def _version(row: asyncpg.Record, kind: DefinitionTable) -> SavedVersion:
    return SavedVersion(
        id=row[kind.id_column],
        version=row["version"],
        name=row["name"],
        description=row["description"],
        definition=row["definition"],
        created_at=row["created_at"],
        created_by=row["created_by"],
    )


def _columns(kind: DefinitionTable) -> str:
    return (
        f"{kind.id_column}, version, name, description, definition::text AS definition, "
        "created_at, created_by"
    )


async def create(
    conn: asyncpg.Connection,
    kind: DefinitionTable,
    project_id: str,
    item_id: str,
    name: str,
    description: str,
    definition: str,
    created_by: str | None = None,
) -> SavedVersion:
    """Version 1 of a new definition; 409 when the id is taken (even by a deleted one)."""
    row = await conn.fetchrow(
        f"""INSERT INTO {kind.table} (project_id, {kind.id_column}, version, name, description,
                                      definition, created_by)
            VALUES ($1, $2, 1, $3, $4, $5::jsonb, $6)
            ON CONFLICT DO NOTHING
            RETURNING {_columns(kind)}""",
        project_id,
        item_id,
        name,
        description,
        definition,
        created_by,
    )
    if row is None:
        raise ApiError(409, f"a {kind.noun} with id {item_id!r} exists already")
    return _version(row, kind)


async def update(
    conn: asyncpg.Connection,
    kind: DefinitionTable,
    project_id: str,
    item_id: str,
    name: str,
    description: str,
    definition: str,
    created_by: str | None = None,
) -> SavedVersion:
    """The next version; 404 for an unknown or deleted id. Concurrent updates serialize on the
    latest version's row lock, so each gets its own version number."""
    async with conn.transaction():
        latest = await conn.fetchrow(
            f"""SELECT version, deleted_at FROM {kind.table}
                WHERE project_id = $1 AND {kind.id_column} = $2
                ORDER BY version DESC LIMIT 1 FOR UPDATE""",
            project_id,
            item_id,
        )
        if latest is None or latest["deleted_at"] is not None:
            raise ApiError(404, f"unknown {kind.noun} {item_id!r}")
        row = await conn.fetchrow(
            f"""INSERT INTO {kind.table} (project_id, {kind.id_column}, version, name,
                                          description, definition, created_by)
                VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
                RETURNING {_columns(kind)}""",
            project_id,
            item_id,
            latest["version"] + 1,
            name,
            description,
            definition,
            created_by,
        )
    assert row is not None
    return _version(row, kind)


async def save(
    conn: asyncpg.Connection,
    kind: DefinitionTable,
    project_id: str,
    item_id: str | None,
    given_id: str | None,
    name: str,
    description: str,
    definition: str,
    created_by: str | None = None,
) -> SavedVersion:
    """What a POST (`item_id` None: version 1 under `given_id` or a new id) or a PUT (the next
    version of `item_id`) of a definition stores."""
    if item_id is None:
        return await create(
            conn,
            kind,
            project_id,
            new_id(kind, given_id),
            name,
            description,
            definition,
            created_by,
        )
    return await update(conn, kind, project_id, item_id, name, description, definition, created_by)


async def history(
    conn: asyncpg.Connection | asyncpg.Pool, kind: DefinitionTable, project_id: str, item_id: str
) -> list[SavedVersion]:
    """Every version, newest first; 404 for an unknown or deleted id."""
    rows = await conn.fetch(
        f"""SELECT {_columns(kind)}, deleted_at FROM {kind.table}
            WHERE project_id = $1 AND {kind.id_column} = $2 ORDER BY version DESC""",
        project_id,
        item_id,
    )
    if not rows or rows[0]["deleted_at"] is not None:
        raise ApiError(404, f"unknown {kind.noun} {item_id!r}")
    return [_version(r, kind) for r in rows]


async def latest(
    conn: asyncpg.Connection | asyncpg.Pool, kind: DefinitionTable, project_id: str, item_id: str
) -> SavedVersion:
    """The latest version; 404 for an unknown or deleted id."""
    return (await history(conn, kind, project_id, item_id))[0]


async def list_latest(
    conn: asyncpg.Connection | asyncpg.Pool, kind: DefinitionTable, project_id: str
) -> list[SavedVersion]:
    """The latest version of every live definition of the project, by id."""
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON ({kind.id_column}) {_columns(kind)}, deleted_at
            FROM {kind.table} WHERE project_id = $1
            ORDER BY {kind.id_column}, version DESC""",
        project_id,
    )
    return [_version(r, kind) for r in rows if r["deleted_at"] is None]


async def delete(
    conn: asyncpg.Connection | asyncpg.Pool, kind: DefinitionTable, project_id: str, item_id: str
) -> None:
    """Hide every version; 404 for an unknown or already deleted id."""
    status = await conn.execute(
        f"""UPDATE {kind.table} SET deleted_at = now()
            WHERE project_id = $1 AND {kind.id_column} = $2 AND deleted_at IS NULL""",
        project_id,
        item_id,
    )
    if status.endswith(" 0"):
        raise ApiError(404, f"unknown {kind.noun} {item_id!r}")
