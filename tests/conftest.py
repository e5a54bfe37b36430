"""Shared fixtures: a real NATS JetStream server and a real PostgreSQL for the session (the
given NATS_URL / DATABASE_URL when set, else embedded servers started here), a fresh database
per test cloned from a migrated template, and a unique subject prefix per test."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from libs.common import db, keys
from libs.common.nats_io import connect, ensure_streams
from libs.common.subjects import Subjects
from strata_dev.embedded import EmbeddedNats, EmbeddedPostgres
from tests.support.project import TestProject

# Fixtures that start (or use) a real server: a test that needs one is an `infra` test, marked
# here from its fixtures so `just test-fast` (-m "not infra") never waits for a server.
_INFRA_FIXTURES = frozenset({"nats_url", "pg_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INFRA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.infra)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Before any test's timeout runs: installing Chromium can take minutes (see browser.py).
    if any(item.get_closest_marker("browser") for item in session.items):
        from tests.support.browser import ensure_chromium  # Playwright only for browser runs

        try:
            ensure_chromium()
        except pytest.fail.Exception:
            pass  # each browser test calls it again and fails with the reason


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="strata-test-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def nats_url(infra_dir: Path) -> Iterator[str]:
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
        return
    server = EmbeddedNats(infra_dir / "nats").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(infra_dir: Path) -> Iterator[str]:
    """A superuser URL of the PostgreSQL server the tests may create databases on."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    server = EmbeddedPostgres(infra_dir / "pg").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def template_db(pg_url: str) -> AsyncIterator[str]:
    name = f"strata_tmpl_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(_with_db(pg_url, name))
    try:
        await db.migrate(conn)
    finally:
        await conn.close()
    try:
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(pg_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"strata_t_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        yield _with_db(pg_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def empty_db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh database with no migrations applied (for upgrade tests, which
    migrate it to an older release's schema first)."""
    name = f"strata_t_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(_with_db(pg_url, name))
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=5)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def subjects() -> Subjects:
    """A subject/stream prefix of this test's own."""
    return Subjects(prefix=f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def js(nats_url: str, subjects: Subjects) -> AsyncIterator[object]:
    nc = await connect(nats_url, "tests")
    jsc = nc.jetstream()
    await ensure_streams(jsc, subjects)
    try:
        yield jsc
    finally:
        for name in (
            subjects.raw_stream,
            subjects.enriched_stream,
            subjects.sessions_stream,
            subjects.dlq_stream,
        ):
            try:
                await jsc.delete_stream(name)
            except Exception:
                pass
        await nc.close()


@pytest.fixture
async def project(pool: asyncpg.Pool) -> TestProject:
    """A project 'acme' with a write, a read and an admin key."""
    async with pool.acquire() as conn:
        await keys.ensure_project(conn, "acme", "Acme")
        _, write = await keys.create_key(conn, "acme", "write")
        _, read = await keys.create_key(conn, "acme", "read")
        _, admin = await keys.create_key(conn, "acme", "admin")
    return TestProject("acme", write, read, admin)
