"""Incremental sessionizer checkpoints in PostgreSQL: what a partition loads is what it last
saved (state and sequence together), whether the checkpoint went in as changes or as a new
base; a connection killed at any step of a save leaves the previous checkpoint whole; and a
checkpoint written by the previous release is still read."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest

from libs.common import db
from services.sessionizer import checkpoints as checkpoints_module
from services.sessionizer.checkpoints import PartitionCheckpoints, encode_state
from services.sessionizer.session_window import PartitionSessions, sessionize_batch
from tests.support.sessionizer_traffic import LIVELY_GAPS_S, RULES, random_traffic

pytestmark = pytest.mark.infra

STREAM = "strata-raw"


async def stored(pool: asyncpg.Pool, partition: int) -> tuple[int, int, int]:
    """(stream_seq, the changes the partition row counts, change rows stored)."""
    row = await pool.fetchrow(
        "SELECT stream_seq, changes, (SELECT count(*) FROM sessionizer_checkpoint_changes c"
        "  WHERE c.stream = k.stream AND c.partition = k.partition) AS rows"
        " FROM sessionizer_checkpoints k WHERE stream = $1 AND partition = $2",
        STREAM,
        partition,
    )
    assert row is not None
    return row["stream_seq"], row["changes"], row["rows"]


@pytest.mark.parametrize("seed", range(3))
async def test_a_partition_loads_what_it_last_saved(pool: asyncpg.Pool, seed: int) -> None:
    rng = random.Random(seed)
    writer = PartitionCheckpoints(pool, STREAM, 3)
    state = (await writer.load()).state
    assert state == PartitionSessions()
    changed: set[tuple[str, str]] = set()
    kinds: set[str] = set()
    for seq, batch in enumerate(
        random_traffic(rng, 400, persons=300, gaps_s=LIVELY_GAPS_S), start=1
    ):
        sessionize_batch(state, batch, seq, lambda _: RULES, changed)
        if rng.random() < 0.25:
            await writer.save(seq, state, changed)
            changed = set()
            _, changes, rows = await stored(pool, 3)
            assert rows == changes
            kinds.add("changes" if changes else "base")
            if rng.random() < 0.3:  # a restart: a new writer goes on from what it loads
                writer = PartitionCheckpoints(pool, STREAM, 3)
                loaded = await writer.load()
                assert (loaded.stream_seq, loaded.state) == (seq, state)
    assert kinds == {"changes", "base"}
    await writer.save(seq + 1, state, changed)
    loaded = await PartitionCheckpoints(pool, STREAM, 3).load()
    assert (loaded.stream_seq, loaded.state) == (seq + 1, state)
    # Another partition's checkpoints are apart.
    assert (await PartitionCheckpoints(pool, STREAM, 4).load()).stream_seq == 0


async def test_a_base_is_rewritten_once_the_changes_reach_its_size(pool: asyncpg.Pool) -> None:
    writer = PartitionCheckpoints(pool, STREAM, 0)
    state = PartitionSessions()
    changed: set[tuple[str, str]] = set()
    traffic = random_traffic(random.Random(7), 200, persons=300, gaps_s=LIVELY_GAPS_S)
    bases = 0
    for seq, batch in enumerate(traffic, start=1):
        sessionize_batch(state, batch, seq, lambda _: RULES, changed)
        await writer.save(seq, state, changed)
        changed = set()
        _, changes, _ = await stored(pool, 0)
        bases += changes == 0
        base = await pool.fetchval(
            "SELECT octet_length(base_state) FROM sessionizer_checkpoints WHERE partition = 0"
        )
        held = await pool.fetchval(
            "SELECT coalesce(sum(octet_length(persons)), 0) FROM sessionizer_checkpoint_changes"
        )
        assert held < base  # what is stored stays under twice the compressed state
        assert changes <= checkpoints_module.MAX_CHANGES
    assert 1 < bases < len(traffic) // 4


class _Killed(Exception):
    pass


class _KillingPool:
    """A pool whose connection's backend is terminated (as by a kill -9 of its server process)
    just before the `kill_at`-th statement of a writing transaction, or just before its COMMIT
    when `kill_at` is past the last statement."""

    def __init__(self, pool: asyncpg.Pool, kill_at: int) -> None:
        self._pool = pool
        self._kill_at = kill_at

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self._pool.acquire() as conn:
            yield _KillingConnection(self._pool, conn, self._kill_at)


class _KillingConnection:
    def __init__(self, pool: asyncpg.Pool, conn: asyncpg.Connection, kill_at: int) -> None:
        self._pool = pool
        self._conn = conn
        self._kill_at = kill_at
        self._statements = 0

    async def _kill(self) -> None:
        await self._pool.execute("SELECT pg_terminate_backend($1)", self._conn.get_server_pid())

    @asynccontextmanager
    async def transaction(self, **kwargs: Any) -> AsyncIterator[None]:
        async with self._conn.transaction(**kwargs):
            yield
            if 0 < self._statements < self._kill_at:  # a write ran whole: die before COMMIT
                await self._kill()

    async def execute(self, *args: Any) -> str:
        self._statements += 1
        if self._statements == self._kill_at:
            await self._kill()
        return cast(str, await self._conn.execute(*args))

    def __getattr__(self, name: str) -> Any:  # reads (a load) pass through
        return getattr(self._conn, name)


@pytest.mark.parametrize("kill_at", [1, 2, 3])
@pytest.mark.parametrize("as_base", [False, True])
async def test_a_save_killed_at_any_step_leaves_the_previous_checkpoint(
    pool: asyncpg.Pool, kill_at: int, as_base: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    traffic = random_traffic(random.Random(kill_at), 42, persons=300, gaps_s=LIVELY_GAPS_S)
    state = PartitionSessions()
    changed: set[tuple[str, str]] = set()
    writer = PartitionCheckpoints(pool, STREAM, 1)
    await writer.load()
    for seq, batch in enumerate(traffic[:40], start=1):
        sessionize_batch(state, batch, seq, lambda _: RULES, changed)
        if seq % 2 == 0:
            await writer.save(seq, state, changed)
            changed = set()
    before = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=PartitionSessions)
    assert (await stored(pool, 1))[1] > 0  # changes stored on top of a base
    for seq, batch in enumerate(traffic[40:], start=41):
        sessionize_batch(state, batch, seq, lambda _: RULES, changed)
    if as_base:
        monkeypatch.setattr(checkpoints_module, "MAX_CHANGES", 0)

    killing = PartitionCheckpoints(cast(asyncpg.Pool, _KillingPool(pool, kill_at)), STREAM, 1)
    await killing.load()
    # What a connection lost mid-transaction raises (the partition restarts on any of them).
    lost = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
    with pytest.raises(lost):
        await killing.save(42, state, changed)

    # What is stored is the checkpoint before, whole; a restart goes on from it.
    writer = PartitionCheckpoints(pool, STREAM, 1)
    loaded = await writer.load()
    assert loaded.stream_seq == 40
    assert loaded.state == before != state
    await writer.save(42, state, changed)
    loaded = await PartitionCheckpoints(pool, STREAM, 1).load()
    assert (loaded.stream_seq, loaded.state) == (42, state)


PREVIOUS_RELEASE = 27  # the last migration before checkpoints became incremental


async def test_a_checkpoint_of_the_previous_release_is_read_and_carried_on(
    empty_db: asyncpg.Connection, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = db.migration_files()
    monkeypatch.setattr(
        db, "migration_files", lambda: [m for m in every if m[0] <= PREVIOUS_RELEASE]
    )
    await db.migrate(empty_db)
    traffic = random_traffic(random.Random(3), 80)
    state = PartitionSessions()
    for seq, batch in enumerate(traffic[:40], start=1):
        sessionize_batch(state, batch, seq, lambda _: RULES)
    # As the previous release stored it: the whole state in one row.
    await empty_db.execute(
        "INSERT INTO sessionizer_checkpoints (stream, partition, stream_seq, state)"
        " VALUES ($1, 2, 40, $2)",
        STREAM,
        encode_state(state),
    )
    monkeypatch.setattr(db, "migration_files", lambda: every)
    assert any(name.startswith("0028_") for name in await db.migrate(empty_db))

    database = await empty_db.fetchval("SELECT current_database()")
    url = urlunsplit(urlsplit(pg_url)._replace(path=f"/{database}"))
    pool = await db.create_pool(url, min_size=1, max_size=2)
    try:
        writer = PartitionCheckpoints(pool, STREAM, 2)
        loaded = await writer.load()
        assert (loaded.stream_seq, loaded.state) == (40, state)
        changed: set[tuple[str, str]] = set()
        for seq, batch in enumerate(traffic[40:], start=41):
            sessionize_batch(state, batch, seq, lambda _: RULES, changed)
            if seq % 5 == 0:
                await writer.save(seq, state, changed)
                changed = set()
        loaded = await PartitionCheckpoints(pool, STREAM, 2).load()
        assert (loaded.stream_seq, loaded.state) == (80, state)
    finally:
        await pool.close()
