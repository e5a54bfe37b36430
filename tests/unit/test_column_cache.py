"""The decoded-column cache (services/query/column_cache.py): funnels, paths and retention
answer the same whether the scan reads its day files from Parquet, from the cache or some of
each beside PostgreSQL's rows; the cache stays within its byte budget, counting the Arrow
buffers it holds, never drops what a scan uses, never serves a file that changed under its
path, and a budget of 0 turns it off."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.common.day_files.layout import EVENT_FILE_SCHEMA, TIE_ORDER, TIE_ORDER_KEY
from services.query.analyses.conditions import EventScope
from services.query.analyses.funnels import funnel_spec, run_funnel
from services.query.analyses.paths import paths_spec, run_paths
from services.query.analyses.requests import (
    Condition,
    EventMatch,
    FunnelRequest,
    FunnelStep,
    PathsRequest,
    RetentionRequest,
    WindowSpec,
)
from services.query.analyses.retention import retention_plan, retention_spec, run_retention
from services.query.column_cache import CACHED_VIEW_COLUMNS, ColumnCache
from services.query.event_scan import _build_view, cached_columns, ties_by_position
from services.query.params import TimeWindow
from services.query.person_aliases import ALIAS_SCHEMA
from services.query.scan_engine import STORED_COLUMNS, ScanEngine
from tests.support.scan_views import engine_views

DAY = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 4
END = DAY + timedelta(days=DAYS)
PERSONS = 12
NAMES = ["$pageview", "$pageview", "signup", "purchase", "click"]
PAGES = ["/", "/pricing", "/docs", "/blog"]
# Device d0 identified as user u0: its rows' person key is the device's (1000), the alias
# maps it to the user's (0), as the aggregator's keys are.
ALIASES = pa.table(
    {"distinct_id": ["d0"], "person_id": ["u0"], "device_key": [1000], "person_key": [0]},
    schema=ALIAS_SCHEMA,
)


def day_rows(day: int, count: int = 300) -> pa.Table:
    """A day of events, sorted and claiming the tie order as the export writes them: times on
    whole minutes of a few hours, so persons have several events at one instant."""
    rng = np.random.default_rng(day)
    person = rng.integers(0, PERSONS, count)
    minute = rng.integers(0, 240, count)
    ids = [f"e{day}-{i:04d}" for i in range(count)]
    names = [NAMES[i] for i in rng.integers(0, len(NAMES), count)]
    columns: dict[str, list[object]] = {}
    for field in EVENT_FILE_SCHEMA:
        name = field.name
        values: list[object]
        if name == "ts" or name == "received_at":
            values = [DAY + timedelta(days=day, minutes=int(m)) for m in minute]
        elif name == "event_id":
            values = list(ids)
        elif name == "name":
            values = names
        elif name == "distinct_id":
            values = [f"d{p}" for p in person]
        elif name == "user_id":
            values = [f"u{p}" if p % 2 and p else None for p in person]
        elif name == "session_id":
            values = [f"s{day}-{p}-{int(m) // 60}" for p, m in zip(person, minute, strict=True)]
        elif name == "path":
            values = [
                PAGES[int(i)] if n == "$pageview" else None
                for i, n in zip(rng.integers(0, len(PAGES), count), names, strict=True)
            ]
        elif name == "person_key":
            values = [1000 if p == 0 else int(p) for p in person]
        elif name == "device_key":
            values = [1000 if p == 0 else None for p in person]
        elif name == "is_bot":
            values = [bool(b) for b in rng.random(count) < 0.05]
        elif name == "non_interactive":
            values = [bool(b) for b in rng.random(count) < 0.1]
        elif name == "project_id":
            values = ["acme"] * count
        elif name == "type":
            values = ["track"] * count
        else:
            values = [None] * count
        columns[name] = values
    table = pa.table(columns, schema=EVENT_FILE_SCHEMA)
    return table.sort_by(
        [("person_key", "ascending"), ("ts", "ascending"), ("event_id", "ascending")]
    )


def day_files(tmp_path: Path) -> list[str]:
    paths = []
    for day in range(DAYS - 1):  # the last day comes from PostgreSQL
        path = tmp_path / f"day-{day}.parquet"
        pq.write_table(day_rows(day).replace_schema_metadata({TIE_ORDER_KEY: TIE_ORDER}), path)
        paths.append(str(path))
    return paths


def hot_rows() -> pa.Table:
    return day_rows(DAYS - 1).select(list(STORED_COLUMNS))


def answers(engine: ScanEngine, files: list[str]) -> tuple[object, ...]:
    """Funnel, paths (per session and per person) and retention over the files and a hot day,
    with the scope the query service gives; and whether they read the cached views."""
    con = engine.connection()
    hot = [hot_rows()]
    found, _ = cached_columns(engine, files)
    try:
        keyed = engine_views(
            con, engine, files, hot=hot, aliases=ALIASES, start=DAY, end=END, cached=found.tables
        )
        assert keyed
        scope = EventScope(
            DAY,
            END,
            person_keys=True,
            ties_by_position=ties_by_position(hot, files, engine.file_columns),
            cached_columns=CACHED_VIEW_COLUMNS if found.tables else frozenset(),
        )
        steps = [
            FunnelStep("$pageview", [Condition("path", "eq", "/")]),
            FunnelStep("signup"),
            FunnelStep("purchase"),
        ]
        funnel = funnel_spec(FunnelRequest(steps=steps, window=WindowSpec(2, "day")))
        funnel_result = run_funnel(con, funnel, scope, 0, int(END.timestamp() * 1e6) - 1)
        by_browser = funnel_spec(
            FunnelRequest(
                steps=[FunnelStep("$pageview", [Condition("browser", "is_not_set")]), *steps[1:]],
                window=WindowSpec(2, "day"),
            )
        )
        browser_result = run_funnel(con, by_browser, scope, 0, int(END.timestamp() * 1e6) - 1)
        paths = [
            run_paths(
                con,
                paths_spec(PathsRequest(steps=4, per=per)),
                scope,
                DAY + timedelta(hours=1),
                END - timedelta(hours=1),
                timedelta(hours=1),
            )
            for per in ("session", "person")
        ]
        retention = retention_spec(
            RetentionRequest(
                start_event=EventMatch("$pageview"), return_event=EventMatch("click"), intervals=2
            )
        )
        plan = retention_plan(retention, TimeWindow(DAY, END - timedelta(days=2), ZoneInfo("UTC")))
        rows = run_retention(con, retention, plan, scope, END + timedelta(days=30)).rows
        return funnel_result, browser_result, paths, rows
    finally:
        con.close()
        engine.columns.release(found)


def test_analyses_answer_the_same_from_the_cache_the_files_or_both(tmp_path: Path) -> None:
    files = day_files(tmp_path)
    without = ScanEngine()
    with_cache = ScanEngine(column_cache_bytes=64 * 1024**2)
    try:
        expected = answers(without, files)
        funnel = expected[0]
        assert funnel.total.steps[-1].count > 0  # type: ignore[attr-defined]
        assert expected[2][0].paths > 0  # type: ignore[index]
        # Cold: nothing cached yet, every file read from Parquet.
        assert answers(with_cache, files) == expected
        # Some files cached, one read from Parquet beside them (and the hot day).
        with_cache.columns.fill(files[:1] + files[2:])
        assert len(with_cache.columns) == 2
        assert answers(with_cache, files) == expected
        with_cache.columns.fill(files)
        assert answers(with_cache, files) == expected
    finally:
        without.close()
        with_cache.close()


def test_queries_read_the_cached_views_only_when_they_cover_their_columns() -> None:
    scope = EventScope(DAY, END, person_keys=True, cached_columns=CACHED_VIEW_COLUMNS)
    assert scope.view("events_scan_stored", "e.person_key e.alias_key e.ts e.name e.path") == (
        "events_scan_stored_cached"
    )
    assert scope.view("events_scan", "e.person_id e.ts e.browser") == "events_scan"
    assert scope.view("events_scan", "e.* e.ts") == "events_scan"
    assert scope.view("events_scan", "e.event_id") == "events_scan"  # ties read again by id
    off = EventScope(DAY, END, person_keys=True)
    assert off.view("events_scan", "e.ts") == "events_scan"


def cached_sizes(files: list[str]) -> list[int]:
    """The bytes each file's entry holds in the cache."""
    sizes = []
    for path in files:
        probe = ColumnCache(64 * 1024**2)
        probe.fill([path])
        sizes.append(probe.nbytes)
        probe.close()
    return sizes


def test_the_cache_stays_within_its_budget_least_recently_used_out(tmp_path: Path) -> None:
    files = day_files(tmp_path)
    sizes = cached_sizes(files)
    # Room for the two largest, not for three.
    cache = ColumnCache(sum(sorted(sizes)[1:]))
    try:
        cache.fill(files[:2])
        assert len(cache) == 2
        used = cache.acquire(files[:1])  # the first is now the most recently used
        cache.release(used)
        cache.fill(files[2:])
        assert set(cache.acquire(files).tables) == {files[0], files[2]}
        assert cache.nbytes <= cache.max_bytes
        # What it counts is what the cached tables' Arrow buffers hold.
        held = cache.acquire(files)
        assert cache.nbytes == sum(t.get_total_buffer_size() for t in held.tables.values())
    finally:
        cache.close()


def test_a_file_a_scan_uses_is_never_evicted(tmp_path: Path) -> None:
    files = day_files(tmp_path)
    one = cached_sizes(files[:1])[0]
    cache = ColumnCache(one * 3 // 2)  # room for one file
    try:
        cache.fill(files[:1])
        pinned = cache.acquire(files[:1])
        # Another file does not fit beside the pinned one: it is not kept.
        cache.fill(files[1:2])
        held = cache.acquire(files)
        assert set(held.tables) == {files[0]}
        cache.release(held)
        cache.release(pinned)
        cache.fill(files[1:2])
        assert files[1] in cache.acquire(files[1:2]).tables
    finally:
        cache.close()


def test_a_scan_over_more_files_than_fit_keeps_those_it_found(tmp_path: Path) -> None:
    # Room for two files; a scan over three finds two cached. Filling its third would evict
    # one of those two, which the next such scan would refill in turn, evicting another:
    # every scan would decode files only to drop them. The fill is skipped instead.
    files = day_files(tmp_path)
    sizes = cached_sizes(files)
    cache = ColumnCache(sum(sorted(sizes)[1:]))
    try:
        cache.fill(files[:2])
        scan = cache.acquire(files)
        cache.release(scan)
        future = cache.fill_later(files[2:], since=scan.since)
        assert future is not None
        future.result()
        held = cache.acquire(files)
        assert set(held.tables) == set(files[:2])
        cache.release(held)
        # A later scan of the third file alone makes room for it, dropping the least recent.
        alone = cache.acquire(files[2:])
        cache.release(alone)
        cache.fill_later(files[2:], since=alone.since)
        cache.settle()
        assert set(cache.acquire(files).tables) == {files[1], files[2]}
    finally:
        cache.close()


def test_a_file_replaced_under_its_path_is_not_served_from_the_cache(tmp_path: Path) -> None:
    # Parts never change under their object name (an erasure's rewrite or a re-export is a
    # new part), but a local file re-downloaded or replaced is another file: its columns are
    # decoded again, never taken from the old entry.
    files = day_files(tmp_path)
    cache = ColumnCache(64 * 1024**2)
    try:
        cache.fill(files[:1])
        old = cache.acquire(files[:1]).tables[files[0]]
        replacement = tmp_path / "replacement.parquet"
        changed = day_rows(7).replace_schema_metadata({TIE_ORDER_KEY: TIE_ORDER})
        pq.write_table(changed, replacement)
        os.replace(replacement, files[0])
        assert cache.acquire(files[:1]).tables == {}
        cache.fill(files[:1])
        new = cache.acquire(files[:1]).tables[files[0]]
        assert new["ts"] != old["ts"]
        assert new["ts"].to_pylist() == pq.read_table(files[0])["ts"].to_pylist()
    finally:
        cache.close()


@pytest.mark.parametrize("budget", [0, None])
def test_a_budget_of_zero_turns_the_cache_off(tmp_path: Path, budget: int | None) -> None:
    files = day_files(tmp_path)
    engine = ScanEngine() if budget is None else ScanEngine(column_cache_bytes=budget)
    try:
        assert not engine.columns.enabled
        engine.columns.fill(files)
        found, missing = cached_columns(engine, files)
        assert (found.tables, missing, len(engine.columns)) == ({}, [], 0)
        con = engine.connection()
        _build_view(
            con,
            paths=files,
            hot=[],
            aliases=ALIASES,
            persons=None,
            start=DAY,
            end=END,
            include_bots=False,
            unkeyed_paths=frozenset(),
            file_columns=engine.file_columns,
            cached=found.tables,
        )
        views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views()").fetchall()}
        assert "events_scan" in views and not {v for v in views if v.endswith("_cached")}
        con.close()
    finally:
        engine.close()


def test_the_caches_are_reported_to_prometheus_when_scraped(tmp_path: Path) -> None:
    """An operator sizing the query pod sees what each scan cache holds against its budget and
    what it did: the column cache's bytes, files, fills and files served, the hot rows'."""
    from prometheus_client import CollectorRegistry

    from services.query.service_metrics import ScanCachesCollector

    engine = ScanEngine(column_cache_bytes=64 * 1024**2, hot_rows_cache_bytes=1024**2)
    registry = CollectorRegistry()
    registry.register(ScanCachesCollector(engine))

    def sample(name: str) -> float | None:
        return registry.get_sample_value(f"strata_query_{name}")

    assert sample("column_cache_bytes") == 0
    assert sample("column_cache_limit_bytes") == 64 * 1024**2
    assert sample("hot_rows_cache_limit_bytes") == 1024**2
    # No day-file cache (no object store): its metrics are left out rather than zero.
    assert sample("day_file_cache_bytes") is None

    files = day_files(tmp_path)
    engine.columns.fill(files)
    engine.columns.release(engine.columns.acquire(files[:2]))
    assert sample("column_cache_files") == len(files)
    assert sample("column_cache_bytes") == engine.columns.nbytes > 0
    assert sample("column_cache_fills_total") == len(files)
    assert sample("column_cache_served_files_total") == 2
