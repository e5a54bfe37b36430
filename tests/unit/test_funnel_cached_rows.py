"""Funnels read from the column cache's tables with NumPy (services/query/analyses/
cached_rows.py) give what the stream's query over the same files gives: the same marked rows
(persons resolved through the aliases, masks from the same SQL, NULL paths, bots, the range's
edges) and the same answers, for path conditions, exclusions, unordered funnels, narrower
ranges and several threads; and the reader is used only when every row is in the cache."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.common.day_files.layout import TIE_ORDER, TIE_ORDER_KEY
from services.query.analyses import cached_rows
from services.query.analyses.conditions import EventScope
from services.query.analyses.funnels import FunnelQuery, _marked, _resolved, funnel_spec, run_funnel
from services.query.analyses.requests import (
    Condition,
    FunnelExclusion,
    FunnelRequest,
    FunnelStep,
    WindowSpec,
)
from services.query.column_cache import CACHED_VIEW_COLUMNS, CachedRows
from services.query.compact_rows import compact
from services.query.event_scan import cached_columns
from services.query.metric_query import SqlParams
from services.query.person_keys import PersonKeyResolver
from services.query.scan_engine import STORED_COLUMNS, ScanEngine
from tests.support.scan_views import engine_views
from tests.unit.test_column_cache import ALIASES, DAY, DAYS, END, day_rows

HOME = FunnelStep("$pageview", [Condition("path", "eq", "/")])
FUNNELS = {
    "path condition": FunnelRequest(
        steps=[HOME, FunnelStep("signup"), FunnelStep("purchase")], window=WindowSpec(2, "day")
    ),
    # `neq` is false on a NULL path in SQL: the look-up must say so too.
    "negated path": FunnelRequest(
        steps=[FunnelStep("$pageview", [Condition("path", "neq", "/docs")]), FunnelStep("click")],
        window=WindowSpec(6, "hour"),
    ),
    "names only, one absent": FunnelRequest(
        steps=[FunnelStep("signup"), FunnelStep("never_sent"), FunnelStep("purchase")],
        window=WindowSpec(1, "day"),
    ),
    "exclusion on a path": FunnelRequest(
        steps=[HOME, FunnelStep("purchase")],
        window=WindowSpec(1, "day"),
        exclusions=[
            FunnelExclusion(event="$pageview", conditions=[Condition("path", "eq", "/blog")])
        ],
    ),
    "unordered": FunnelRequest(
        steps=[HOME, FunnelStep("signup")], window=WindowSpec(3, "hour"), order="unordered"
    ),
    "repeated step": FunnelRequest(
        steps=[FunnelStep("click"), FunnelStep("click"), FunnelStep("purchase")],
        window=WindowSpec(1, "day"),
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder: Path = tmp_path_factory.mktemp("days")
    paths = []
    for day in range(DAYS):
        rows = day_rows(day)
        # Some page views without a path: a condition on the path is then NULL in SQL.
        pages = rows["path"].to_pylist()
        at = rows.schema.get_field_index("path")
        pages = [None if i % 7 == 3 else page for i, page in enumerate(pages)]
        rows = rows.set_column(at, rows.schema.field(at), pa.array(pages, pa.string()))
        path = folder / f"day-{day}.parquet"
        pq.write_table(rows.replace_schema_metadata({TIE_ORDER_KEY: TIE_ORDER}), path)
        paths.append(str(path))
    return paths


def hot_rows() -> list[pa.Table]:
    """A day after the files from PostgreSQL, as the hot rows hold it: a table with plain text
    columns and one dictionary-encoded (compact_rows.py) in two chunks."""
    rows = day_rows(DAYS).select(list(STORED_COLUMNS))
    half, quarter = rows.num_rows // 2, rows.num_rows // 4
    encoded = compact(rows.slice(half))
    return [
        rows.slice(0, half),
        pa.concat_tables([encoded.slice(0, quarter), encoded.slice(quarter)]),
    ]


def scan(
    engine: ScanEngine, files: list[str], include_bots: bool, *, with_hot: bool = False
) -> tuple[duckdb.DuckDBPyConnection, CachedRows]:
    con = engine.connection()
    engine.columns.fill(files)
    found, missing = cached_columns(engine, files)
    assert not missing
    hot = hot_rows() if with_hot else []
    assert engine_views(
        con,
        engine,
        files,
        hot=hot,
        aliases=ALIASES,
        start=DAY,
        end=END + timedelta(days=1),
        include_bots=include_bots,
        cached=found.tables,
    )
    tables = (*(found.tables[p] for p in files), *hot)
    return con, CachedRows(tables, DAY, END + timedelta(days=1), include_bots)


def sorted_rows(table: pa.Table) -> list[tuple[object, ...]]:
    return sorted(zip(*(table[c].to_pylist() for c in ("pid", "t", *masks(table))), strict=True))


def masks(table: pa.Table) -> list[str]:
    return [c for c in ("mask", "xmask") if c in table.column_names]


@pytest.mark.parametrize(
    ("scan_bots", "include_bots"),
    [(False, False), (True, True), (True, False)],
    ids=["no bots", "bots", "bots scanned, not asked"],
)
@pytest.mark.parametrize("with_hot", [False, True], ids=["files", "files and hot rows"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(FUNNELS))
def test_cached_rows_give_the_query_s_rows_and_answers(
    files: list[str], name: str, threads: int, scan_bots: bool, include_bots: bool, with_hot: bool
) -> None:
    engine = ScanEngine(column_cache_bytes=64 * 1024**2)
    con, rows = scan(engine, files, scan_bots, with_hot=with_hot)
    try:
        spec = funnel_spec(FUNNELS[name])
        # A range narrower than the scan's: rows outside it are not read.
        start, end = DAY + timedelta(hours=7), END + timedelta(days=with_hot, hours=-5)
        by_sql = EventScope(
            start,
            end,
            person_keys=True,
            include_bots=include_bots,
            cached_columns=CACHED_VIEW_COLUMNS,
            threads=threads,
            part_min_events=1,  # split even these few rows
        )
        direct = replace(by_sql, cached_rows=rows)
        query = FunnelQuery(spec, direct, lists_persons=False)
        read = query._cached_stream(con)
        assert read is not None
        params = SqlParams()
        sql = FunnelQuery(spec, by_sql, lists_persons=False).stream_sql(params, event_ids=False)
        expected = _resolved(con, _marked(con.sql(sql, params=params.values).to_arrow_table()))
        assert expected.num_rows > 0
        assert sorted_rows(read) == sorted_rows(expected)
        stop = int(end.timestamp() * 1e6) - 1
        answer = run_funnel(con, spec, direct, int(start.timestamp() * 1e6), stop)
        assert answer == run_funnel(con, spec, by_sql, int(start.timestamp() * 1e6), stop)
    finally:
        con.close()
        engine.close()


def test_the_reader_is_left_out_when_the_funnel_reads_more_than_names_and_paths(
    files: list[str],
) -> None:
    engine = ScanEngine(column_cache_bytes=64 * 1024**2)
    con, rows = scan(engine, files, False)
    try:
        scope = EventScope(
            DAY, END, person_keys=True, cached_columns=CACHED_VIEW_COLUMNS, cached_rows=rows
        )
        browser = FunnelStep("$pageview", [Condition("browser", "eq", "Firefox")])
        others = {
            "a condition on another column": FunnelRequest(
                steps=[browser, FunnelStep("signup")], window=WindowSpec(1, "day")
            ),
            "a breakdown": FunnelRequest(
                steps=[HOME, FunnelStep("signup")], window=WindowSpec(1, "day"), breakdown="path"
            ),
            "strict": FunnelRequest(
                steps=[HOME, FunnelStep("signup")], window=WindowSpec(1, "day"), order="strict"
            ),
        }
        for request in others.values():
            query = FunnelQuery(funnel_spec(request), scope, lists_persons=False)
            assert query._cached_stream(con) is None
        # A persons page needs the persons' ids: read by the query.
        listing = FunnelQuery(funnel_spec(FUNNELS["path condition"]), scope, lists_persons=True)
        assert listing._cached_stream(con) is None
        # Without the tables (a row from PostgreSQL, a file not cached): the query.
        query = FunnelQuery(
            funnel_spec(FUNNELS["path condition"]),
            EventScope(DAY, END, person_keys=True, cached_columns=CACHED_VIEW_COLUMNS),
            lists_persons=False,
        )
        assert query._cached_stream(con) is None
    finally:
        con.close()
        engine.close()


def test_too_many_paths_for_the_look_up_leave_it_to_the_query(
    files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cached_rows, "MAX_MASK_PAIRS", 2)
    engine = ScanEngine(column_cache_bytes=64 * 1024**2)
    con, rows = scan(engine, files, False)
    try:
        scope = EventScope(
            DAY, END, person_keys=True, cached_columns=CACHED_VIEW_COLUMNS, cached_rows=rows
        )
        query = FunnelQuery(funnel_spec(FUNNELS["path condition"]), scope, lists_persons=False)
        assert query._cached_stream(con) is None
        # Names alone need no path: still read from the tables.
        names = FunnelQuery(
            funnel_spec(FUNNELS["names only, one absent"]), scope, lists_persons=False
        )
        assert names._cached_stream(con) is not None
    finally:
        con.close()
        engine.close()


def test_the_range_s_edges(files: list[str]) -> None:
    """Rows at the range's start are read, rows at its end are not (scan and scope alike)."""
    engine = ScanEngine(column_cache_bytes=64 * 1024**2)
    con, rows = scan(engine, files, True)
    try:
        first = min(t["ts"].to_pylist()[0] for t in rows.tables)
        spec = funnel_spec(FUNNELS["names only, one absent"])
        for start, end in ((first, first + timedelta(hours=2)), (DAY, first)):
            scope = EventScope(
                start,
                end,
                person_keys=True,
                include_bots=True,
                cached_columns=CACHED_VIEW_COLUMNS,
                cached_rows=rows,
            )
            read = FunnelQuery(spec, scope, lists_persons=False)._cached_stream(con)
            assert read is not None
            times = read["t"].to_pylist()
            start_us = int(start.timestamp() * 1e6)
            end_us = int(end.timestamp() * 1e6)
            assert all(start_us <= t < end_us for t in times)
    finally:
        con.close()
        engine.close()


def test_persons_resolved_after_the_pass_when_the_aliases_keys_are_sparse(
    files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keys spread too wide for a dense look-up are resolved after the pass, by binary search.
    monkeypatch.setattr(PersonKeyResolver, "dense", property(lambda self: None))
    engine = ScanEngine(column_cache_bytes=64 * 1024**2)
    con, rows = scan(engine, files, False)
    try:
        spec = funnel_spec(FUNNELS["path condition"])
        by_sql = EventScope(DAY, END, person_keys=True, cached_columns=CACHED_VIEW_COLUMNS)
        read = FunnelQuery(spec, replace(by_sql, cached_rows=rows), lists_persons=False)
        direct = read._cached_stream(con)
        assert direct is not None
        params = SqlParams()
        sql = FunnelQuery(spec, by_sql, lists_persons=False).stream_sql(params, event_ids=False)
        expected = _resolved(con, _marked(con.sql(sql, params=params.values).to_arrow_table()))
        assert 1000 not in direct["pid"].to_pylist()  # the aliased device's rows moved to u0's
        assert sorted_rows(direct) == sorted_rows(expected)
    finally:
        con.close()
        engine.close()
