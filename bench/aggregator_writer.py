"""Benchmark: events/s stored by the aggregator's writer (`write_events`) alone, on generated
live traffic, against a real PostgreSQL.

The traffic looks like what the aggregator is handed in production: one transaction per fetched
batch (`--batch-size` events, about what `fetch_batch` enriched messages hold), events of the
last hours from a pool of visitors whose sessions continue across batches (so the session and
rollup merge paths run, not only fresh inserts), pageviews and custom, non-interactive and
identify events, every dimension with realistic cardinality. `--writers` concurrent
connections model one aggregator's in-flight batches (or several replicas) contending for the
same hot rollup rows.

    python -m bench.aggregator_writer [--events 200000] [--batch-size 500] [--writers 2]
                                      [--profile] [--output figures.json]

Uses DATABASE_URL when set, else starts an embedded PostgreSQL in a temporary directory.
`--profile` runs the writers under cProfile (one event loop, so waiting on PostgreSQL shows as
the selector's time) and prints the top functions. `--statements` times each statement the
writer sends (backend CPU from /proc/<pid>/schedstat, the client's CPU inside the call, i.e.
asyncpg's encoding and protocol, and the writer's own Python since the previous call) and
reports them per stored event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg

from bench import report
from libs.common.schemas.events_v1 import IDENTIFY, PAGEVIEW, EventV1

PATHS = ["/", "/pricing", "/docs", "/docs/install", "/blog/launch", "/signup", "/features"]
PATHS += [f"/blog/post-{i}" for i in range(40)]
SOURCES: list[dict[str, Any]] = [
    {"referrer": "https://www.google.com/", "referrer_domain": "google.com", "channel": "organic"},
    {"referrer": "https://www.bing.com/", "referrer_domain": "bing.com", "channel": "organic"},
    {"referrer": None, "referrer_domain": None, "channel": "direct"},
    {"referrer": "https://t.co/x", "referrer_domain": "t.co", "channel": "social"},
    {"referrer": "https://news.ycombinator.com/", "referrer_domain": "news.ycombinator.com"},
    {
        "referrer": "https://ads.test/c",
        "referrer_domain": "ads.test",
        "channel": "paid",
        "utm_source": "ads",
        "utm_medium": "cpc",
        "utm_campaign": "spring",
    },
    {
        "referrer": None,
        "referrer_domain": None,
        "channel": "email",
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "launch",
    },
]
BROWSERS = ["Chrome", "Safari", "Firefox", "Edge", "Samsung Internet", None]
OSES = ["Windows", "macOS", "iOS", "Android", "Linux"]
DEVICES = ["desktop", "mobile", "tablet"]
COUNTRIES = ["US", "DE", "FR", "GB", "IN", "BR", "JP", "CA", "NL", "ES", "IT", "PL", None]
CUSTOM = ["Clicked CTA", "Signed Up", "Added To Cart", "Searched"]


class _Visitor:
    __slots__ = ("anon", "device", "identified", "last", "session", "sessions", "source", "user")

    def __init__(self, rng: random.Random, n: int, seed: int) -> None:
        self.anon = f"anon-{seed}-{n}"
        self.user = f"user-{seed}-{n}" if rng.random() < 0.3 else None
        self.identified = False
        self.device = {
            "browser": rng.choice(BROWSERS),
            "browser_version": str(rng.randrange(100, 130)),
            "os": rng.choice(OSES),
            "device_type": rng.choice(DEVICES),
            "country": rng.choice(COUNTRIES),
            "locale": "en-US",
            "is_bot": rng.random() < 0.03,
        }
        self.source: dict[str, Any] = {}
        self.session = ""
        self.sessions = 0
        self.last: datetime | None = None


def live_traffic(
    events: int,
    batch_size: int,
    visitors: int = 20_000,
    hours: float = 3.0,
    seed: int = 1,
    project_id: str = "bench",
) -> list[list[EventV1]]:
    """`events` events of the last `hours` hours in batches of `batch_size`: visitors return
    (sessions continue across batches, a new session after 30 idle minutes), some identify."""
    rng = random.Random(seed)
    pool = [_Visitor(rng, n, seed) for n in range(visitors)]
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(hours=hours)
    step = (end - start) / max(1, events)
    clock = start
    run = uuid.uuid4().hex[:8]
    out: list[EventV1] = []
    for i in range(events):
        clock += step
        # A skewed pick: a few hundred visitors are far busier than the rest, as on a site.
        busy = rng.random() < 0.2
        visitor = pool[rng.randrange(min(500, visitors) if busy else visitors)]
        if visitor.last is None or clock - visitor.last > timedelta(minutes=30):
            visitor.sessions += 1
            visitor.session = f"s-{run}-{visitor.anon}-{visitor.sessions}"
            visitor.source = rng.choice(SOURCES)
        visitor.last = clock
        path = rng.choice(PATHS)
        kind = rng.random()
        fields: dict[str, Any] = {
            "event_id": f"ev-{run}-{i}",
            "project_id": project_id,
            "ts": clock,
            "received_at": clock + timedelta(milliseconds=300),
            "distinct_id": visitor.anon,
            "anonymous_id": visitor.anon,
            "user_id": visitor.user if visitor.identified else None,
            "session_id": visitor.session,
            "path": path,
            "url": f"https://www.example.com{path}",
            "title": "Example",
            **visitor.device,
            **visitor.source,
        }
        if kind < 0.6:
            event = EventV1(
                type="page",
                name=PAGEVIEW,
                properties={"path": path, "url": fields["url"]},
                **fields,
            )
        elif kind < 0.8:
            event = EventV1(
                type="track",
                name="Scrolled",
                non_interactive=True,
                properties={"depth": rng.randrange(0, 100, 10)},
                **fields,
            )
        elif kind < 0.97 or visitor.user is None or visitor.identified:
            event = EventV1(
                type="track",
                name=rng.choice(CUSTOM),
                properties={"button": "primary", "position": rng.randrange(10)},
                **fields,
            )
        else:
            visitor.identified = True
            fields["user_id"] = visitor.user
            event = EventV1(
                type="identify",
                name=IDENTIFY,
                traits={"plan": rng.choice(["free", "pro"]), "email": f"{visitor.user}@x.test"},
                **fields,
            )
        out.append(event)
    # Delivery order is not event order: enriched messages are grouped per event name and the
    # sessionizer's partitions interleave, so shuffle within a window of a few batches.
    window = batch_size * 4
    for lo in range(0, len(out), window):
        part = out[lo : lo + window]
        rng.shuffle(part)
        out[lo : lo + window] = part
    return [out[i : i + batch_size] for i in range(0, len(out), batch_size)]


async def _prepare(database_url: str) -> None:
    from libs.common import db
    from libs.common.event_partitions import ensure_partitions_ahead

    await db.ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await db.migrate(conn)
        await ensure_partitions_ahead(conn, 1)
    finally:
        await conn.close()


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a local process, or None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend_cpu_ns(pid: int) -> int:
    """Nanoseconds a local process has run on a CPU (finer than /proc/<pid>/stat's ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


class StatementTimes:
    """Per statement label: calls, backend CPU, the client's CPU inside the call, and the
    writer's Python CPU since the previous call ended (what it computed for this statement)."""

    def __init__(self) -> None:
        from services.aggregator import writer

        self.totals: dict[str, list[float]] = {}
        # The writer's statements by the name of the constant holding their SQL.
        self._labels = {
            id(value): name.strip("_").lower()
            for name, value in vars(writer).items()
            if isinstance(value, str) and "\n" in value
        }

    def label(self, method: str, args: tuple[Any, ...]) -> str:
        if method == "copy_records_to_table":
            return f"copy {args[0]}"
        if not args or not isinstance(args[0], str):
            return method
        sql = args[0]
        known = self._labels.get(id(sql))
        if known is not None:
            return known
        return " ".join(sql.split()[:4])[:60]

    def add(self, label: str, values: tuple[float, float, float, float]) -> None:
        row = self.totals.setdefault(label, [0.0, 0.0, 0.0, 0.0, 0.0])
        row[0] += 1
        for i, v in enumerate(values, 1):
            row[i] += v

    def per_event(self, inserted: int) -> dict[str, dict[str, float]]:
        n = max(1, inserted)
        return {
            label: {
                "calls": int(row[0]),
                "backend_cpu_us": round(1e6 * row[1] / n, 2),
                "wall_us": round(1e6 * row[2] / n, 2),
                "client_in_call_us": round(1e6 * row[3] / n, 2),
                "python_before_us": round(1e6 * row[4] / n, 2),
            }
            for label, row in sorted(self.totals.items(), key=lambda kv: -kv[1][1])
        }


class _TimedConnection:
    """A connection whose statements are timed into a StatementTimes (everything else passes
    through): one writer at a time, as the backend CPU read around a call is its whole."""

    _TIMED = frozenset(("fetch", "fetchval", "fetchrow", "execute", "copy_records_to_table"))

    def __init__(self, conn: asyncpg.Connection, times: StatementTimes, pid: int) -> None:
        self._conn = conn
        self._times = times
        self._pid = pid
        self._last = time.process_time()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in self._TIMED:
            return attr

        async def timed(*args: Any, **kwargs: Any) -> Any:
            python_before = time.process_time() - self._last
            label = self._times.label(name, args)
            cpu0, backend0, wall0 = (
                time.process_time(),
                _backend_cpu_ns(self._pid),
                time.perf_counter(),
            )
            try:
                return await attr(*args, **kwargs)
            finally:
                wall = time.perf_counter() - wall0
                backend = (_backend_cpu_ns(self._pid) - backend0) / 1e9
                self._last = time.process_time()
                self._times.add(label, (backend, wall, self._last - cpu0, python_before))

        return timed

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """BEGIN and COMMIT sent as timed statements (COMMIT's WAL work is the batch's too)."""
        await self.execute("BEGIN")
        try:
            yield
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        await self.execute("COMMIT")


class WriteRun(NamedTuple):
    inserted: int
    duplicates: int
    seconds: float
    latencies: list[float]
    python_cpu_s: float
    postgres_cpu_s: float | None  # the writers' backends; None when not on this machine


async def _write_all(
    database_url: str,
    batches: list[list[EventV1]],
    writers: int,
    statements: StatementTimes | None = None,
) -> WriteRun:
    """Write every batch with `writers` concurrent connections (each statement timed into
    `statements` when given)."""
    from libs.common import db
    from libs.common.event_partitions import EventPartitions
    from services.aggregator.writer import write_events

    queue: Iterator[list[EventV1]] = iter(batches)
    partitions = EventPartitions()
    inserted = duplicates = 0
    latencies: list[float] = []
    conns = [await asyncpg.connect(database_url) for _ in range(writers)]
    for conn in conns:  # as the aggregator's pool prepares its connections
        await db.timestamps_as_microseconds(conn)
    backends = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
    # CPU time, unlike wall time, means something on a machine others share.
    backend_cpu = [_cpu_seconds(pid) for pid in backends]
    python_cpu = time.process_time()

    async def writer(conn: asyncpg.Connection) -> None:
        nonlocal inserted, duplicates
        if statements is not None:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            conn = _TimedConnection(conn, statements, pid)
        for batch in queue:
            began = time.perf_counter()
            result = await write_events(conn, batch, partitions)
            latencies.append(time.perf_counter() - began)
            inserted += result.inserted
            duplicates += result.duplicates

    try:
        started = time.perf_counter()
        await asyncio.gather(*(writer(c) for c in conns))
        elapsed = time.perf_counter() - started
        python_cpu = time.process_time() - python_cpu
        after = [_cpu_seconds(pid) for pid in backends]
    finally:
        for conn in conns:
            await conn.close()
    postgres_cpu: float | None = 0.0
    for before, end in zip(backend_cpu, after, strict=True):
        if before is None or end is None or postgres_cpu is None:
            postgres_cpu = None
        else:
            postgres_cpu += end - before
    return WriteRun(inserted, duplicates, elapsed, latencies, python_cpu, postgres_cpu)


_TABLES = ("events", "event_ids", "rollups", "sessions", "session_rollups", "persons")
# Bytes of a table with its indexes and TOAST, a partitioned one's partitions included.
_TABLE_BYTES = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
WHERE c.oid = $1::regclass
   OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass)
"""


async def table_sizes(conn: asyncpg.Connection) -> tuple[dict[str, int], dict[str, int]]:
    """Rows and bytes (with indexes and TOAST) of the tables a write fills."""
    rows = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in _TABLES}
    sizes = {t: int(await conn.fetchval(_TABLE_BYTES, t)) for t in _TABLES}
    return rows, sizes


async def _table_sizes(database_url: str) -> tuple[dict[str, int], dict[str, int]]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("VACUUM ANALYZE")  # dead versions of updated rows are not storage
        return await table_sizes(conn)
    finally:
        await conn.close()


def run_benchmark(
    events: int = 200_000,
    batch_size: int = 500,
    writers: int = 2,
    visitors: int = 20_000,
    profile: bool = False,
    profile_lines: int = 30,
    statements: bool = False,
) -> dict[str, Any]:
    """Generate the traffic, write it, return the figures (and print a profile if asked)."""
    from strata_dev.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="strata-bench-aggregator-") as tmp:
        server = None
        database_url = os.environ.get("DATABASE_URL")
        if database_url:
            base = database_url.rsplit("/", 1)[0]
            database_url = f"{base}/strata_bench_{uuid.uuid4().hex[:8]}"
        else:
            server = EmbeddedPostgres(Path(tmp) / "pg").start()
            database_url = server.url.rsplit("/", 1)[0] + "/strata_bench"
        try:
            asyncio.run(_prepare(database_url))
            generated = time.perf_counter()
            batches = live_traffic(events, batch_size, visitors)
            generated = time.perf_counter() - generated
            profiler = cProfile.Profile() if profile else None
            if profiler is not None:
                profiler.enable()
            times = StatementTimes() if statements else None
            run = asyncio.run(_write_all(database_url, batches, writers, times))
            if profiler is not None:
                profiler.disable()
                text = io.StringIO()
                stats = pstats.Stats(profiler, stream=text).strip_dirs()
                stats.sort_stats("tottime").print_stats(profile_lines)
                stats.sort_stats("cumulative").print_stats(profile_lines)
                print(text.getvalue())
            rows, sizes = asyncio.run(_table_sizes(database_url))
        finally:
            if server is not None:
                server.stop()
    latencies = sorted(run.latencies)
    per_1k = 1000 / max(1, run.inserted)
    return {
        "writer_events_per_s": round(run.inserted / run.seconds),
        # CPU per 1,000 stored events: the figure that does not depend on what else runs.
        "python_cpu_ms_per_1k_events": round(1000 * run.python_cpu_s * per_1k, 1),
        "postgres_cpu_ms_per_1k_events": (
            None if run.postgres_cpu_s is None else round(1000 * run.postgres_cpu_s * per_1k, 1)
        ),
        "events": events,
        "inserted": run.inserted,
        "duplicates": run.duplicates,
        "batch_size": batch_size,
        "writers": writers,
        "visitors": visitors,
        "seconds": round(run.seconds, 2),
        "batch_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "batch_p95_ms": round(1000 * latencies[int(len(latencies) * 0.95)], 1),
        "generate_seconds": round(generated, 1),
        "profiled": profile,
        **({} if times is None else {"per_statement_per_event": times.per_event(run.inserted)}),
        "rows": rows,
        "bytes": sizes,
        # Write amplification: derived rows and bytes per stored event.
        "rollup_rows_per_event": round(
            (rows["rollups"] + rows["session_rollups"]) / max(1, rows["events"]), 2
        ),
        "pg_bytes_per_event": round(sum(sizes.values()) / max(1, rows["events"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--visitors", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the run")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="time each statement (backend CPU, client CPU, Python before it); use --writers 1",
    )
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.statements and args.writers != 1:
        # Each call's CPU is read around an await: another writer's work would land in it.
        parser.error("--statements times one writer: use --writers 1")
    figures = run_benchmark(
        args.events,
        args.batch_size,
        args.writers,
        args.visitors,
        args.profile,
        statements=args.statements,
    )
    report(figures, args.output)


if __name__ == "__main__":
    main()
