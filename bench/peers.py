"""The peers of the analyses benchmark, on the same day files as bench/analyses.py: the
straightforward PostgreSQL SQL a Postgres-backed tool runs (Umami's shape: a self-join per funnel
step within the window, GROUP BY for retention, numbered events per visit for journeys) over the
same events loaded into PostgreSQL, and ClickHouse in-process (chdb: `windowFunnel`,
`retention`, ordered arrays for paths) reading the same Parquet files.

Both peers get the person already resolved (`coalesce(user_id, distinct_id)`, which equals the
alias resolution on this dataset: every linked device belongs to a person who also sends
`user_id`), so they do less work than Strata's alias join. Figures only.
"""

from __future__ import annotations

import asyncio
import csv
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from strata_dev.embedded import EmbeddedPostgres

# One table shaped like Umami's website_event, with the indexes its queries use.
PEER_TABLE = """
CREATE UNLOGGED TABLE website_event (
    person_id text NOT NULL,
    session_id text NOT NULL,
    created_at timestamptz NOT NULL,
    event_name text NOT NULL,
    url_path text
)"""
PEER_INDEXES = (
    "CREATE INDEX ON website_event (created_at)",
    "CREATE INDEX ON website_event (person_id, created_at)",
    "CREATE INDEX ON website_event (session_id, created_at)",
)
# A peer's query that would run for longer is cut and reported as such.
STATEMENT_TIMEOUT_S = 300

# The funnel's steps as SQL predicates, in the same order as bench/analyses.py's funnel.
FUNNEL_STEPS = (
    "event_name = '$pageview' AND url_path = '/'",
    "event_name = '$pageview' AND url_path = '/pricing'",
    "event_name = 'signup'",
    "event_name = 'add_to_cart'",
    "event_name = 'purchase'",
)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def timed(fn: Callable[[], Any], runs: int) -> dict[str, Any]:
    """First run, then the median of `runs` warm runs; the last run's answer as `answer`."""
    started = time.perf_counter()
    answer = fn()
    first = time.perf_counter() - started
    warm = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = fn()
        warm.append(time.perf_counter() - started)
    warm.sort()
    return {
        "first_ms": _ms(first),
        "warm_median_ms": _ms(warm[len(warm) // 2]),
        "answer": answer,
    }


def _literal(ts: datetime) -> str:
    return f"'{ts.isoformat()}'"


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_funnel_sql(start: datetime, end: datetime, window: timedelta) -> str:
    """Umami's funnel: each level joins the previous level's (person, time) to the next step's
    events of the same person within the window, then counts distinct persons per level."""
    levels = [
        "level1 AS (SELECT DISTINCT person_id, created_at FROM website_event"
        f" WHERE created_at >= {_literal(start)} AND created_at < {_literal(end)}"
        f" AND {FUNNEL_STEPS[0]})"
    ]
    for number, step in enumerate(FUNNEL_STEPS[1:], start=2):
        step_on_we = step.replace("event_name", "we.event_name").replace("url_path", "we.url_path")
        levels.append(
            f"level{number} AS (SELECT DISTINCT we.person_id, we.created_at"
            f" FROM level{number - 1} l JOIN website_event we ON we.person_id = l.person_id"
            " WHERE we.created_at BETWEEN l.created_at"
            f" AND l.created_at + interval '{int(window.total_seconds())} seconds'"
            f" AND we.created_at < {_literal(end)} AND {step_on_we})"
        )
    counts = " UNION ALL ".join(
        f"SELECT {n} AS level, count(DISTINCT person_id) AS persons FROM level{n}"
        for n in range(1, len(FUNNEL_STEPS) + 1)
    )
    return f"WITH {', '.join(levels)} {counts} ORDER BY level"


def postgres_retention_sql(first_cohort: datetime, cohorts: int, intervals: int) -> str:
    """Daily recurring retention with GROUP BY: (person, day) of start events joined to the
    (person, day) of return events up to `intervals` days later."""
    last_cohort_end = first_cohort + timedelta(days=cohorts)
    scan_end = last_cohort_end + timedelta(days=intervals)
    return f"""
WITH starts AS (
    SELECT DISTINCT person_id, date_trunc('day', created_at) AS cohort FROM website_event
    WHERE event_name = '$pageview' AND created_at >= {_literal(first_cohort)}
      AND created_at < {_literal(last_cohort_end)}),
returns AS (
    SELECT DISTINCT person_id, date_trunc('day', created_at) AS day FROM website_event
    WHERE event_name = '$pageview' AND created_at >= {_literal(first_cohort)}
      AND created_at < {_literal(scan_end)})
SELECT s.cohort, extract(day FROM r.day - s.cohort)::int AS offset_days, count(*) AS persons
FROM starts s JOIN returns r ON r.person_id = s.person_id
 AND r.day >= s.cohort AND r.day <= s.cohort + interval '{intervals} days'
GROUP BY 1, 2 ORDER BY 1, 2"""


def postgres_paths_sql(start: datetime, stop: datetime, steps: int) -> str:
    """Umami's journey: number each visit's events, pivot the first `steps` into columns and
    count each sequence (pageviews by path, custom events by name)."""
    pivot = ", ".join(
        f"max(CASE WHEN event_number = {n} THEN event END) AS e{n}" for n in range(1, steps + 1)
    )
    columns = ", ".join(f"e{n}" for n in range(1, steps + 1))
    return f"""
WITH events AS (
    SELECT session_id,
           CASE WHEN event_name = '$pageview' THEN url_path ELSE event_name END AS event,
           row_number() OVER (PARTITION BY session_id ORDER BY created_at) AS event_number
    FROM website_event
    WHERE created_at >= {_literal(start)} AND created_at < {_literal(stop)}),
sequences AS (
    SELECT {pivot} FROM events WHERE event_number <= {steps} GROUP BY session_id)
SELECT {columns}, count(*) AS occurrences FROM sequences
GROUP BY {columns} ORDER BY occurrences DESC LIMIT 100"""


class PostgresPeer:
    """An embedded PostgreSQL holding the bench's events in one Umami-shaped table."""

    def __init__(self, work: Path) -> None:
        self._work = work
        self._server = EmbeddedPostgres(work / "pg").start()
        self.url = self._server.url
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection = self._loop.run_until_complete(
            asyncpg.connect(self.url, command_timeout=STATEMENT_TIMEOUT_S + 30)
        )
        self.load_s = 0.0
        self.table_bytes = 0

    def load(self, files: Sequence[Path]) -> int:
        """COPY every day file's events in (as CSV), then index and analyze."""
        started = time.perf_counter()
        self._run(self._conn.execute(PEER_TABLE))
        rows = 0
        with tempfile.TemporaryDirectory(dir=self._work) as tmp:
            for path in files:
                table = pq.read_table(
                    path, columns=["user_id", "distinct_id", "session_id", "ts", "name", "path"]
                )
                person = pc.coalesce(table["user_id"], table["distinct_id"])
                peer = pa.table(
                    {
                        "person_id": person,
                        "session_id": table["session_id"],
                        "created_at": table["ts"],
                        "event_name": table["name"],
                        "url_path": table["path"],
                    }
                )
                csv_path = Path(tmp) / "day.csv"
                pa_csv.write_csv(peer, csv_path)
                self._run(
                    self._conn.copy_to_table(
                        "website_event", source=csv_path, format="csv", header=True
                    )
                )
                rows += peer.num_rows
        for statement in PEER_INDEXES:
            self._run(self._conn.execute(statement))
        self._run(self._conn.execute("VACUUM ANALYZE website_event"))
        self._run(self._conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT_S}s'"))
        self._run(self._conn.execute("SET work_mem = '64MB'"))
        self.table_bytes = int(
            self._run(self._conn.fetchval("SELECT pg_total_relation_size('website_event')"))
        )
        self.load_s = time.perf_counter() - started
        return rows

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of `sql`; a statement cut by the timeout raises asyncpg's QueryCanceledError."""
        return [tuple(r) for r in self._run(self._conn.fetch(sql))]

    def close(self) -> None:
        self._run(self._conn.close())
        self._loop.close()
        self._server.stop()


def time_postgres(peer: PostgresPeer, sql: str, runs: int) -> dict[str, Any]:
    """Timed like Strata's analyses; a query past the statement timeout is reported as such."""
    try:
        return timed(lambda: peer.query(sql), runs)
    except asyncpg.QueryCanceledError:
        return {"warm_median_ms": None, "timed_out_after_s": STATEMENT_TIMEOUT_S}


# ---------------------------------------------------------------------------------------------
# ClickHouse (chdb)


def _files_sql(files: Sequence[Path]) -> str:
    """One `file()` source over the day files (a brace list, as ClickHouse globs take it)."""
    folder = files[0].parent
    names = ",".join(p.name.removeprefix("dt=").removesuffix(".parquet") for p in files)
    return f"file('{folder}/dt={{{names}}}.parquet', Parquet)"


def _ch_time(ts: datetime) -> str:
    return f"toDateTime64('{ts.strftime('%Y-%m-%d %H:%M:%S')}', 6, 'UTC')"


def clickhouse_funnel_sql(
    files: Sequence[Path], start: datetime, end: datetime, window: timedelta
) -> str:
    """windowFunnel over each person's events of the range: the furthest step reached."""
    steps = ", ".join(
        s.replace("event_name", "name").replace("url_path", "path") for s in FUNNEL_STEPS
    )
    return f"""
SELECT level, count() AS persons FROM (
    SELECT coalesce(user_id, distinct_id) AS person,
           windowFunnel({int(window.total_seconds())})(toDateTime(ts), {steps}) AS level
    FROM {_files_sql(files)}
    WHERE ts >= {_ch_time(start)} AND ts < {_ch_time(end)} AND NOT is_bot
    GROUP BY person)
WHERE level > 0 GROUP BY level ORDER BY level"""


def clickhouse_retention_sql(
    files: Sequence[Path], first_cohort: datetime, cohorts: int, intervals: int
) -> str:
    """`retention` per (person, cohort day): each day a person was active is offset k of the
    cohort k days earlier; sumForEach adds the persons per offset."""
    scan_end = first_cohort + timedelta(days=cohorts + intervals)
    conditions = ", ".join(f"day = cohort + {k}" for k in range(intervals + 1))
    return f"""
SELECT cohort, sumForEach(r) AS persons FROM (
    SELECT person, cohort, retention({conditions}) AS r FROM (
        SELECT DISTINCT coalesce(user_id, distinct_id) AS person, toDate(ts) AS day
        FROM {_files_sql(files)}
        WHERE name = '$pageview' AND NOT is_bot
          AND ts >= {_ch_time(first_cohort)} AND ts < {_ch_time(scan_end)})
    ARRAY JOIN arrayMap(k -> day - k, range({intervals + 1})) AS cohort
    WHERE cohort >= toDate('{first_cohort.date()}')
      AND cohort < toDate('{(first_cohort + timedelta(days=cohorts)).date()}')
    GROUP BY person, cohort)
GROUP BY cohort ORDER BY cohort"""


def clickhouse_paths_sql(files: Sequence[Path], start: datetime, stop: datetime, steps: int) -> str:
    """Each session's events ordered by time, the first `steps` of them counted as a sequence."""
    return f"""
SELECT sequence, count() AS occurrences FROM (
    SELECT arraySlice(arrayMap(x -> x.2, arraySort(x -> x.1, groupArray((ts, event)))),
                      1, {steps}) AS sequence
    FROM (SELECT session_id, ts,
                 if(name = '$pageview', path, name) AS event
          FROM {_files_sql(files)}
          WHERE ts >= {_ch_time(start)} AND ts < {_ch_time(stop)} AND NOT is_bot)
    GROUP BY session_id)
GROUP BY sequence ORDER BY occurrences DESC LIMIT 100"""


class ClickHousePeer:
    """chdb, in this process, reading the day files directly."""

    def __init__(self) -> None:
        from chdb import session

        # Untyped to mypy, installed or not (pyproject's chdb override).
        self._session: Any = session.Session()

    def query(self, sql: str) -> list[list[str]]:
        """Rows of `sql` as CSV fields."""
        text = str(self._session.query(sql, "CSV"))
        return [row for row in csv.reader(text.splitlines()) if row]

    def close(self) -> None:
        self._session.close()


def ratio(strata_ms: float | None, peer_ms: float | None) -> float | None:
    """Strata's time over the peer's (below 1: Strata is faster)."""
    if strata_ms is None or not peer_ms:
        return None
    return round(strata_ms / peer_ms, 2)
