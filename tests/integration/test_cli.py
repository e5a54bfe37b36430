"""The `strata` CLI as an operator runs it (a subprocess, configured by DATABASE_URL): migrate,
and the key lifecycle create -> list -> revoke, with one-line errors for bad input."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from libs.common import keys
from libs.common.dead_letters import DlqHeader
from libs.common.subjects import Subjects

pytestmark = pytest.mark.infra

STRATA = str(Path(sys.executable).parent / "strata")


class Result(msgspec.Struct):
    code: int
    stdout: str
    stderr: str


async def strata(*args: str, database_url: str | None, data_dir: Path, **extra_env: str) -> Result:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STRATA_") and k not in ("DATABASE_URL", "NATS_URL")
    }
    # An empty data dir: the CLI must not fall back to some local stack's dev.json.
    env["STRATA_DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra_env)
    proc = await asyncio.create_subprocess_exec(
        STRATA,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_one_line_error(result: Result, expected: str) -> None:
    """Exit 1, a single `strata: error: ...` line, no traceback."""
    assert result.code == 1, result
    assert result.stderr.splitlines() == [f"strata: error: {expected}"], result.stderr
    assert "Traceback" not in result.stderr


async def test_migrate_creates_the_database_and_is_idempotent(pg_url: str, tmp_path: Path) -> None:
    name = f"strata_cli_{uuid.uuid4().hex[:8]}"
    url = urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))
    try:
        first = await strata("migrate", database_url=url, data_dir=tmp_path)
        assert first.code == 0, first
        assert "applied 0001_init.sql" in first.stdout.splitlines()
        conn = await asyncpg.connect(url)
        try:
            applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
            assert applied == len(first.stdout.splitlines())
            assert await conn.fetchval("SELECT to_regclass('api_keys') IS NOT NULL")
        finally:
            await conn.close()

        again = await strata("migrate", database_url=url, data_dir=tmp_path)
        assert again.code == 0, again
        assert again.stdout.strip() == "database is up to date"
    finally:
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_key_lifecycle_create_list_revoke(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    created = await strata(
        "keys", "create", "--project", "shop", "--role", "write", "--name", "web",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert created.code == 0, created
    secret = created.stdout.strip()
    assert secret.startswith("sk_w_") and "\n" not in secret
    assert "shown only once" in created.stderr

    # The project did not exist: it was created with the key.
    assert await pool.fetchval("SELECT name FROM projects WHERE id = 'shop'") == "shop"
    found = await keys.lookup_key(pool, secret)
    assert found is not None
    assert (found.project_id, found.role, found.name) == ("shop", "write", "web")
    # Only the hash is stored.
    stored = await pool.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", found.id)
    assert stored == keys.hash_key(secret) and secret.encode() not in stored

    read = await strata(
        "keys", "create", "--project", "shop", "--role", "read",
        database_url=database_url, data_dir=tmp_path,
    )  # fmt: skip
    assert read.code == 0, read

    table = await strata(
        "keys", "list", "--project", "shop", database_url=database_url, data_dir=tmp_path
    )
    assert table.code == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "PROJECT", "ROLE", "PREFIX", "NAME", "STATUS"]
    assert len(lines) == 3
    assert found.id in lines[1] and lines[1].split()[-1] == "active"
    assert secret not in table.stdout  # secrets are never listed
    assert secret[:12] in lines[1]  # the prefix is, to tell keys apart

    revoked = await strata("keys", "revoke", found.id, database_url=database_url, data_dir=tmp_path)
    assert revoked.code == 0, revoked
    assert revoked.stdout.strip() == f"revoked {found.id}"
    assert await keys.lookup_key(pool, secret) is None  # a revoked key no longer authenticates

    listed = await strata(
        "keys", "list", "--project", "shop", "--json", database_url=database_url, data_dir=tmp_path
    )
    status = {k["id"]: k["revoked"] for k in msgspec.json.decode(listed.stdout)}
    assert status[found.id] is True
    assert list(status.values()).count(False) == 1  # the read key is untouched

    twice = await strata("keys", "revoke", found.id, database_url=database_url, data_dir=tmp_path)
    assert_one_line_error(twice, f"no active key with id {found.id!r} (see `strata keys list`)")


async def test_admin_key_without_project_spans_every_project(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    created = await strata(
        "keys", "create", "--role", "admin", database_url=database_url, data_dir=tmp_path
    )
    assert created.code == 0, created
    found = await keys.lookup_key(pool, created.stdout.strip())
    assert found is not None and found.role == "admin" and found.project_id is None


async def test_bad_input_gets_one_clear_line_and_writes_nothing(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async def run(*args: str) -> Result:
        return await strata(*args, database_url=database_url, data_dir=tmp_path)

    assert_one_line_error(
        await run("keys", "create", "--project", "shop", "--role", "owner"),
        "--role must be one of write, read, admin, not 'owner'",
    )
    assert_one_line_error(
        await run("keys", "create", "--role", "read"),
        "a read key belongs to a project: pass --project",
    )
    assert_one_line_error(
        await run("keys", "create", "--project", "Shop Site", "--role", "write"),
        "invalid project id 'Shop Site': use 1-63 lowercase letters, digits, '-' or '_', "
        "starting with a letter or digit",
    )
    assert_one_line_error(
        await run("keys", "revoke", "key_doesnotexist"),
        "no active key with id 'key_doesnotexist' (see `strata keys list`)",
    )
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 0
    assert await pool.fetchval("SELECT count(*) FROM projects") == 0


async def test_missing_or_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    missing = await strata("keys", "list", database_url=None, data_dir=tmp_path)
    assert_one_line_error(
        missing,
        f"DATABASE_URL is not set and there is no local stack ({tmp_path / 'dev.json'}): "
        "set DATABASE_URL or run `strata up`",
    )

    unreachable = await strata(
        "keys", "list", database_url="postgresql://postgres@127.0.0.1:1/strata", data_dir=tmp_path
    )
    assert unreachable.code == 1
    assert len(unreachable.stderr.splitlines()) == 1
    assert unreachable.stderr.startswith(
        "strata: error: cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/strata"
    )


async def test_dlq_list_and_replay_put_a_dead_letter_back_on_its_subject(
    nats_url: str, js: JetStreamContext, subjects: Subjects, tmp_path: Path
) -> None:
    original = subjects.enriched("acme", "signup")
    await js.publish(
        subjects.dlq("aggregator"),
        b'{"poison": true}',
        headers={
            DlqHeader.REASON: "events[0].ts: expected a datetime",
            DlqHeader.SERVICE: "aggregator",
            DlqHeader.ORIGINAL_SUBJECT: original,
            DlqHeader.ORIGINAL_SEQ: "42",
            DlqHeader.DELIVERIES: "5",
        },
    )
    env = {"NATS_URL": nats_url, "STRATA_NATS_PREFIX": subjects.prefix}

    async def run(*args: str) -> Result:
        return await strata("dlq", *args, database_url=None, data_dir=tmp_path, **env)

    listed = await run("list")
    assert listed.code == 0, listed
    assert f"seq 1  aggregator  -  {original} #42  16 bytes  deliveries=5" in listed.stdout
    assert "events[0].ts: expected a datetime" in listed.stdout

    assert_one_line_error(
        await run("replay"), "say which dead letters to replay: --seq N (repeatable) or --all"
    )
    assert_one_line_error(
        await run("replay", "--seq", "7"), "1 of the given seqs are not in the DLQ"
    )

    replayed = await run("replay", "--seq", "1")
    assert replayed.code == 0, replayed
    assert replayed.stdout.strip() == "replayed 1 dead letter(s)"
    back = await js.get_last_msg(subjects.enriched_stream, original)
    assert back.data == b'{"poison": true}'

    empty = await run("list")
    assert empty.stdout.strip() == "the dead-letter queue is empty"
