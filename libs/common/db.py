"""PostgreSQL access: pool creation and the numbered-migration runner."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from importlib import resources

import asyncpg

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# One lock id for migrations, so concurrent `migrate` runs (several pods) serialize.
_MIGRATION_LOCK = 0x5354524154  # "STRAT"


# Transaction-scoped advisory lock per project (two-int form: this class id, hash of the id)
# on its derived tables (rollups, sessions, session rollups, aliases, persons). The aggregator
# holds it from the first derived table to COMMIT; erasure's recomputations take it too, so
# neither can lose nor double the other's update.
DERIVED_LOCK_CLASS = 0x53545244  # "STRD"


async def lock_derived_tables(conn: asyncpg.Connection, project_ids: Iterable[str]) -> None:
    """Take the derived-tables lock of each project, in one order (no waiting cycles)."""
    # One statement per lock: later statements' snapshots then see the previous holder's writes.
    for project_id in sorted(set(project_ids)):
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", DERIVED_LOCK_CLASS, project_id
        )


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections decode jsonb as str (callers decode with msgspec)."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=60)
    assert pool is not None
    return pool


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    found = []
    for entry in resources.files("libs.common.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def migration_checksum(sql: str) -> str:
    """What `schema_migrations` records of an applied migration (and `sha256sum` prints)."""
    return hashlib.sha256(sql.encode()).hexdigest()


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done: list[str] = []
        for version, name, sql in migration_files():
            checksum = migration_checksum(sql)
            if version in applied:
                if applied[version] != checksum:
                    raise RuntimeError(
                        f"migration {name} changed after it was applied; add a new migration"
                    )
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    version,
                    name,
                    checksum,
                )
            done.append(name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` when it does not exist (embedded/dev stacks)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(dsn)
    dbname = parts.path.lstrip("/") or "postgres"
    admin_dsn = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()
