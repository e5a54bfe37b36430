"""API keys: generation, hashing and lookup. Roles: write (ingest), read (query), admin."""

from __future__ import annotations

import hashlib
import secrets

import asyncpg
import msgspec

ROLES = ("write", "read", "admin")
_PREFIX = {"write": "sk_w_", "read": "sk_r_", "admin": "sk_a_"}


class ApiKey(msgspec.Struct, frozen=True):
    id: str
    project_id: str | None
    role: str
    prefix: str
    name: str
    revoked: bool


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret(role: str) -> str:
    return _PREFIX[role] + secrets.token_urlsafe(32)


async def create_key(
    conn: asyncpg.Connection, project_id: str | None, role: str, name: str = ""
) -> tuple[ApiKey, str]:
    """Create a key; returns it and its secret (shown once, stored only hashed)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if role != "admin" and project_id is None:
        raise ValueError(f"a {role} key needs a project")
    secret = new_secret(role)
    key_id = "key_" + secrets.token_hex(8)
    await conn.execute(
        "INSERT INTO api_keys (id, project_id, role, key_hash, prefix, name)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        key_id,
        project_id,
        role,
        hash_key(secret),
        secret[:12],
        name,
    )
    return ApiKey(key_id, project_id, role, secret[:12], name, False), secret


async def lookup_key(conn: asyncpg.Connection | asyncpg.Pool, secret: str) -> ApiKey | None:
    """The live (unrevoked) key with this secret, or None."""
    row = await conn.fetchrow(
        "SELECT id, project_id, role, prefix, name FROM api_keys"
        " WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_key(secret),
    )
    if row is None:
        return None
    return ApiKey(row["id"], row["project_id"], row["role"], row["prefix"], row["name"], False)


async def list_keys(conn: asyncpg.Connection, project_id: str | None = None) -> list[ApiKey]:
    rows = await conn.fetch(
        "SELECT id, project_id, role, prefix, name, revoked_at IS NOT NULL AS revoked"
        " FROM api_keys WHERE $1::text IS NULL OR project_id = $1 ORDER BY created_at",
        project_id,
    )
    return [
        ApiKey(r["id"], r["project_id"], r["role"], r["prefix"], r["name"], r["revoked"])
        for r in rows
    ]


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return bool(status.endswith(" 1"))


async def ensure_project(conn: asyncpg.Connection, project_id: str, name: str = "") -> None:
    await conn.execute(
        "INSERT INTO projects (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        project_id,
        name or project_id,
    )
