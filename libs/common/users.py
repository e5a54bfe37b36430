"""Dashboard users: accounts with an argon2id password and a role per project (viewer, analyst,
admin). Shared by the query service (sign-in, members page), the CLI (`strata users`) and the
local stack (the demo admin). API keys are separate and unchanged (libs/common/keys.py)."""

from __future__ import annotations

import re
import secrets
from datetime import datetime

import asyncpg
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from libs.common.errors import StrataError

VIEWER, ANALYST, ADMIN = "viewer", "analyst", "admin"
ROLES = (VIEWER, ANALYST, ADMIN)
_RANK = {VIEWER: 1, ANALYST: 2, ADMIN: 3}

MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 256
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")

# argon2id with the library's defaults (RFC 9106's low-memory profile: 64 MiB, 3 passes).
DEFAULT_HASHER = PasswordHasher()


class UserError(StrataError, ValueError):
    """A user-facing problem with an account operation (bad e-mail, short password, ...)."""

    code = "invalid_user"


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    email: str
    name: str
    created_at: datetime


class Membership(msgspec.Struct, frozen=True, kw_only=True):
    project_id: str
    role: str


def role_allows(role: str, needed: str) -> bool:
    """Whether `role` includes what `needed` may do (admin > analyst > viewer)."""
    return _RANK.get(role, 0) >= _RANK[needed]


def normalize_email(email: str) -> str:
    """The stored form of an e-mail address (trimmed, lower-cased); UserError when malformed."""
    cleaned = email.strip().lower()
    if not _EMAIL.match(cleaned):
        raise UserError(f"{email!r} is not an e-mail address")
    return cleaned


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserError(f"a password has at most {MAX_PASSWORD_CHARS} characters")


def generate_password() -> str:
    """A random password to hand out once (about 120 bits)."""
    return secrets.token_urlsafe(15)


def verify_password(hasher: PasswordHasher, stored_hash: str, password: str) -> bool:
    """Whether `password` matches `stored_hash` (CPU-heavy: call it off the event loop)."""
    try:
        return bool(hasher.verify(stored_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def new_user_id() -> str:
    return "usr_" + secrets.token_hex(8)


def _user(row: asyncpg.Record) -> User:
    return User(id=row["id"], email=row["email"], name=row["name"], created_at=row["created_at"])


async def create_user(
    conn: asyncpg.Connection,
    email: str,
    password: str,
    *,
    name: str = "",
    hasher: PasswordHasher = DEFAULT_HASHER,
) -> User:
    """A new account; UserError when the e-mail is taken or the password too short."""
    address = normalize_email(email)
    check_password(password)
    row = await conn.fetchrow(
        """INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, $4)
           ON CONFLICT (email) DO NOTHING RETURNING id, email, name, created_at""",
        new_user_id(),
        address,
        name.strip(),
        hasher.hash(password),
    )
    if row is None:
        raise UserError(f"a user with e-mail {address} exists already")
    return _user(row)


async def find_user(conn: asyncpg.Connection | asyncpg.Pool, email: str) -> User | None:
    row = await conn.fetchrow(
        "SELECT id, email, name, created_at FROM users WHERE email = $1", normalize_email(email)
    )
    return None if row is None else _user(row)


async def require_user(conn: asyncpg.Connection | asyncpg.Pool, email: str) -> User:
    user = await find_user(conn, email)
    if user is None:
        raise UserError(f"no user with e-mail {normalize_email(email)}")
    return user


async def list_users(
    conn: asyncpg.Connection | asyncpg.Pool,
) -> list[tuple[User, list[Membership]]]:
    """Every user with their memberships, by e-mail."""
    rows = await conn.fetch(
        """SELECT u.id, u.email, u.name, u.created_at,
                  coalesce(array_agg(m.project_id ORDER BY m.project_id)
                           FILTER (WHERE m.project_id IS NOT NULL), '{}') AS projects,
                  coalesce(array_agg(m.role ORDER BY m.project_id)
                           FILTER (WHERE m.project_id IS NOT NULL), '{}') AS roles
           FROM users u LEFT JOIN project_members m ON m.user_id = u.id
           GROUP BY u.id ORDER BY u.email"""
    )
    return [
        (
            _user(r),
            [
                Membership(project_id=p, role=role)
                for p, role in zip(r["projects"], r["roles"], strict=True)
            ],
        )
        for r in rows
    ]


async def set_role(conn: asyncpg.Connection, user_id: str, project_id: str, role: str) -> None:
    """Make the user a member of the project with `role` (replacing an earlier role)."""
    check_role(role)
    if not await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", project_id):
        raise UserError(f"no project {project_id!r}")
    await conn.execute(
        """INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, $3)
           ON CONFLICT (project_id, user_id) DO UPDATE SET role = EXCLUDED.role""",
        project_id,
        user_id,
        role,
    )


async def remove_membership(conn: asyncpg.Connection, user_id: str, project_id: str) -> bool:
    status = await conn.execute(
        "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2", project_id, user_id
    )
    return bool(status.endswith(" 1"))


async def remove_user(conn: asyncpg.Connection, user_id: str) -> None:
    """Delete the account; its memberships and sessions go with it (foreign keys cascade)."""
    await conn.execute("DELETE FROM users WHERE id = $1", user_id)


async def set_password(
    conn: asyncpg.Connection,
    user_id: str,
    password: str,
    *,
    hasher: PasswordHasher = DEFAULT_HASHER,
) -> None:
    """Replace the password and end every session of the user (they sign in again)."""
    check_password(password)
    async with conn.transaction():
        await conn.execute(
            "UPDATE users SET password_hash = $2, password_changed_at = now() WHERE id = $1",
            user_id,
            hasher.hash(password),
        )
        await conn.execute("DELETE FROM dashboard_sessions WHERE user_id = $1", user_id)


async def memberships(conn: asyncpg.Connection | asyncpg.Pool, user_id: str) -> list[Membership]:
    rows = await conn.fetch(
        "SELECT project_id, role FROM project_members WHERE user_id = $1 ORDER BY project_id",
        user_id,
    )
    return [Membership(project_id=r["project_id"], role=r["role"]) for r in rows]
