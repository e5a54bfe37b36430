"""`strata users` as an operator runs it: create (a generated password printed once, or one read
from stdin), list, set-role, reset-password (which ends sessions) and remove, with one-line
errors; the accounts it makes sign in to the dashboard."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import msgspec
import pytest

from libs.common import keys, users
from tests.integration.test_cli import STRATA, Result, assert_one_line_error

pytestmark = pytest.mark.infra


async def strata(*args: str, database_url: str, data_dir: Path, stdin: str = "") -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env.update(STRATA_DATA_DIR=str(data_dir), DATABASE_URL=database_url)
    proc = await asyncio.create_subprocess_exec(
        STRATA,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_users_lifecycle_from_the_command_line(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with pool.acquire() as conn:
        await keys.ensure_project(conn, "acme")
        await keys.ensure_project(conn, "globex")

    async def run(*args: str, stdin: str = "") -> Result:
        return await strata(*args, database_url=database_url, data_dir=tmp_path, stdin=stdin)

    created = await run(
        "users", "create", "Ann@Example.com", "--project", "acme", "--role", "admin"
    )
    assert created.code == 0, created
    generated = created.stdout.strip()
    assert len(generated) >= users.MIN_PASSWORD_CHARS and "\n" not in generated
    assert "shown only once" in created.stderr
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE email = 'ann@example.com'")
    assert stored.startswith("$argon2id$") and generated not in stored
    assert users.verify_password(users.DEFAULT_HASHER, stored, generated)

    piped = await run(
        "users", "create", "bob@example.com", "--password-stdin", stdin="x" * 12 + "\n"
    )
    assert (piped.code, piped.stdout) == (0, "")
    assert_one_line_error(
        await run("users", "create", "bob@example.com", "--password-stdin", stdin="short\n"),
        f"a password needs at least {users.MIN_PASSWORD_CHARS} characters",
    )
    assert_one_line_error(
        await run("users", "create", "ann@example.com"),
        "a user with e-mail ann@example.com exists already",
    )
    assert_one_line_error(
        await run("users", "create", "c@example.com", "--project", "acme", "--role", "owner"),
        "role must be one of viewer, analyst, admin, not 'owner'",
    )

    assert (
        await run(
            "users", "set-role", "bob@example.com", "--project", "globex", "--role", "analyst"
        )
    ).code == 0
    assert (
        await run("users", "set-role", "bob@example.com", "--project", "acme", "--role", "viewer")
    ).code == 0
    listed = msgspec.json.decode((await run("users", "list", "--json")).stdout)
    assert {
        u["email"]: sorted((m["project_id"], m["role"]) for m in u["projects"]) for u in listed
    } == {
        "ann@example.com": [("acme", "admin")],
        "bob@example.com": [("acme", "viewer"), ("globex", "analyst")],
    }
    table = (await run("users", "list")).stdout
    assert "bob@example.com" in table and "acme:viewer, globex:analyst" in table
    removed = await run(
        "users", "set-role", "bob@example.com", "--project", "globex", "--role", "none"
    )
    assert removed.stdout.strip() == "bob@example.com is no longer a member of globex"
    assert_one_line_error(
        await run(
            "users", "set-role", "nobody@example.com", "--project", "acme", "--role", "viewer"
        ),
        "no user with e-mail nobody@example.com",
    )

    # A reset ends the user's sessions.
    ann_id = await pool.fetchval("SELECT id FROM users WHERE email = 'ann@example.com'")
    await pool.execute(
        "INSERT INTO dashboard_sessions (token_hash, user_id, csrf_token, expires_at)"
        " VALUES ('\\x00', $1, 'c', now() + interval '1 day')",
        ann_id,
    )
    reset = await run("users", "reset-password", "ann@example.com")
    assert reset.code == 0 and reset.stdout.strip() != generated
    assert await pool.fetchval("SELECT count(*) FROM dashboard_sessions") == 0
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", ann_id)
    assert users.verify_password(users.DEFAULT_HASHER, stored, reset.stdout.strip())

    assert (await run("users", "remove", "bob@example.com")).code == 0
    assert await pool.fetchval("SELECT count(*) FROM project_members") == 1
    assert_one_line_error(
        await run("users", "remove", "bob@example.com"), "no user with e-mail bob@example.com"
    )
