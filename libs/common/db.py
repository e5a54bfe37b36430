"""PostgreSQL access: pool creation and the numbered-migration runner."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
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


async def create_pool(
    dsn: str,
    min_size: int = 1,
    max_size: int = 10,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections decode jsonb as str (callers decode with msgspec); `init`, when
    given, prepares each new connection (e.g. `timestamps_as_microseconds`)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=60, init=init
    )
    assert pool is not None
    return pool


# PostgreSQL's binary timestamps count microseconds from 2000-01-01 UTC.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX_US = 946_684_800_000_000
_ONE_US = timedelta(microseconds=1)


def _timestamptz_to_pg(value: datetime | int) -> tuple[int]:
    if type(value) is int:
        return (value - _PG_EPOCH_UNIX_US,)
    # One subtraction and one division, where asyncpg's own encoder also converts the value to
    # UTC and reads it back field by field: about half the cost per timestamp.
    return ((value - _PG_EPOCH) // _ONE_US,)  # type: ignore[operator]


def _timestamptz_from_pg(value: tuple[int]) -> int:
    return value[0] + _PG_EPOCH_UNIX_US


async def timestamps_as_microseconds(conn: asyncpg.Connection) -> None:
    """Make `conn` send timestamptz parameters from aware datetimes or integer microseconds
    since 1970-01-01 UTC, and return timestamptz values as such integers (no datetime built).
    For connections that write many timestamps and read few: the aggregator's."""
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_timestamptz_to_pg,
        decoder=_timestamptz_from_pg,
        format="tuple",
    )


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
