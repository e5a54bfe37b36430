"""The query service's in-memory person aliases: a scan reads only aliases added since the last
one, never misses one committed by a transaction that was running meanwhile, and never holds two
aliases for one device."""

from __future__ import annotations

import asyncpg
import pytest

from services.query.person_aliases import AliasCache

pytestmark = pytest.mark.infra


async def link(conn: asyncpg.Connection | asyncpg.Pool, distinct_id: str, person_id: str) -> None:
    await conn.execute(
        "INSERT INTO person_aliases (project_id, distinct_id, person_id) VALUES ('acme', $1, $2)",
        distinct_id,
        person_id,
    )


async def aliases(cache: AliasCache, pool: asyncpg.Pool) -> dict[str, str]:
    table = await cache.aliases(pool, "acme")
    rows = table.to_pylist()
    mapping = {r["distinct_id"]: r["person_id"] for r in rows}
    assert len(mapping) == len(rows), "a device has two aliases"
    return mapping


async def test_only_new_aliases_are_read(pool: asyncpg.Pool) -> None:
    for i in range(50):
        await link(pool, f"anon-{i}", f"user-{i}")
    await pool.execute(
        "INSERT INTO person_aliases (project_id, distinct_id, person_id)"
        " VALUES ('globex', 'anon-1', 'someone-else')"
    )
    cache = AliasCache()
    assert await aliases(cache, pool) == {f"anon-{i}": f"user-{i}" for i in range(50)}
    assert cache.rows_read == 50
    assert len(await aliases(cache, pool)) == 50
    assert cache.rows_read == 50  # nothing new, nothing read
    await link(pool, "anon-new", "user-new")
    assert (await aliases(cache, pool))["anon-new"] == "user-new"
    assert cache.rows_read == 51


async def test_a_link_committed_while_an_older_transaction_runs_is_not_lost(
    pool: asyncpg.Pool,
) -> None:
    cache = AliasCache()
    await link(pool, "anon-0", "user-0")
    assert await aliases(cache, pool) == {"anon-0": "user-0"}
    async with pool.acquire() as older:
        transaction = older.transaction()
        await transaction.start()
        await older.fetchval("SELECT pg_current_xact_id()")  # holds the snapshot xmin back
        await link(pool, "anon-1", "user-1")  # commits, with an xid above that xmin
        async with pool.acquire() as slow:
            slow_transaction = slow.transaction()
            await slow_transaction.start()
            await link(slow, "anon-2", "user-2")  # not committed yet
            assert await aliases(cache, pool) == {"anon-0": "user-0", "anon-1": "user-1"}
            await slow_transaction.commit()
        assert await aliases(cache, pool) == {
            "anon-0": "user-0",
            "anon-1": "user-1",
            "anon-2": "user-2",
        }
        await transaction.commit()
    # Once the old transaction ended, the rows it held back become final, read once more.
    assert len(await aliases(cache, pool)) == 3
    assert len(await aliases(cache, pool)) == 3


async def test_a_relinked_device_has_one_alias_and_deletions_show_after_refresh(
    pool: asyncpg.Pool,
) -> None:
    cache = AliasCache(refresh_s=3600)
    await link(pool, "anon-0", "user-0")
    await link(pool, "anon-1", "user-1")
    assert len(await aliases(cache, pool)) == 2
    await pool.execute("DELETE FROM person_aliases WHERE distinct_id = 'anon-0'")
    await link(pool, "anon-0", "user-9")  # erased, then linked to someone else
    assert await aliases(cache, pool) == {"anon-0": "user-9", "anon-1": "user-1"}

    await pool.execute("DELETE FROM person_aliases WHERE distinct_id = 'anon-1'")
    cache.forget("acme")  # erasure in this process
    assert await aliases(cache, pool) == {"anon-0": "user-9"}
    await pool.execute("DELETE FROM person_aliases")
    refreshing = AliasCache(refresh_s=0)
    await link(pool, "anon-3", "user-3")
    assert await aliases(refreshing, pool) == {"anon-3": "user-3"}
    await pool.execute("DELETE FROM person_aliases")
    assert await aliases(refreshing, pool) == {}
