"""The query service's scan views (services/query/event_scan.py, `_build_view`) over local day
files and hot-row tables, as a scan of `engine` builds them: the engine's footers say which
files hold person keys and which columns each has."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import duckdb
import pyarrow as pa

from services.query.event_scan import _build_view
from services.query.scan_engine import ScanEngine


def engine_views(
    con: duckdb.DuckDBPyConnection,
    engine: ScanEngine,
    files: Sequence[str],
    *,
    hot: Sequence[pa.Table],
    aliases: pa.Table,
    start: datetime,
    end: datetime,
    include_bots: bool = False,
    cached: Mapping[str, pa.Table] | None = None,
) -> bool:
    """Create the views on `con`; whether they are keyed (`events_scan_keyed` exists)."""
    return _build_view(
        con,
        paths=list(files),
        hot=hot,
        aliases=aliases,
        persons=None,
        start=start,
        end=end,
        include_bots=include_bots,
        unkeyed_paths=engine.file_columns.unkeyed(list(files)),
        file_columns=engine.file_columns,
        cached=cached,
    )
