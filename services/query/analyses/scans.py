"""The event scans one analysis request reads: opened through the app's scan opener
(`services.query.event_scan.open_scan` unless a test swaps it), closed together at the end of
the request, and summed into the response's `tiers`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from types import TracebackType
from typing import Any, Protocol, TypeVar

import duckdb
import msgspec
from aiohttp import web

from services.query.column_cache import CachedRows
from services.query.dependencies import QueryDeps
from services.query.event_scan import open_scan
from services.query.responses import MissingRange, missing_ranges

T = TypeVar("T")


class TierReadLike(Protocol):
    tier: str
    rows: int
    ms: float


class ScanLike(Protocol):
    """What the analyses need of an event scan (services/query/event_scan.EventScan)."""

    con: duckdb.DuckDBPyConnection
    person_keys: bool  # whether `events_scan_keyed` exists (services/query/person_keys.py)
    ties_by_position: bool  # whether every row has a `tie_row` (event_scan.ties_by_position)
    cached_columns: frozenset[str]  # the columns of its `*_cached` views (event_scan.py)
    # Every row as the column cache's tables when they hold them all (event_scan.py), else None
    cached_rows: CachedRows | None

    @property
    def tiers(self) -> list[Any]: ...

    @property
    def missing_days(self) -> list[date]: ...

    def close(self) -> None: ...


# (deps, project_id, start, end, *, include_bots, with_persons, allow_partial) -> an open scan
ScanOpener = Callable[..., Awaitable[ScanLike]]
SCAN_OPENER = web.AppKey("analysis_scan_opener", object)


class TierUsage(msgspec.Struct, kw_only=True):
    """Rows an analysis read from one storage tier and the time spent reading them."""

    tier: str  # "hot" (PostgreSQL) or "cold" (day files)
    rows: int
    ms: float


def scan_opener(app: web.Application) -> ScanOpener:
    opener = app.get(SCAN_OPENER)
    return open_scan if opener is None else opener  # type: ignore[return-value]


class RequestScans:
    """Every scan one request opens; `async with` closes them all, even on errors.
    `allow_partial`: days only in unrestored Archive files are left out of the scans (and
    listed by `missing`) instead of raising ArchivedDaysError."""

    def __init__(
        self,
        opener: ScanOpener,
        deps: QueryDeps,
        project_id: str,
        include_bots: bool,
        *,
        allow_partial: bool = False,
    ) -> None:
        self._opener = opener
        self._deps = deps
        self.project_id = project_id
        self.include_bots = include_bots
        self.allow_partial = allow_partial
        self._open: list[ScanLike] = []
        self._missing: set[date] = set()

    async def open(self, start: datetime, end: datetime, *, with_persons: bool = True) -> ScanLike:
        """The project's events with start <= ts < end as `events_scan` (plus `persons`)."""
        # ArchivedDaysError propagates (without allow_partial): the app answers 202 with a
        # restore job for the days.
        scan = await self._opener(
            self._deps,
            self.project_id,
            start,
            end,
            include_bots=self.include_bots,
            with_persons=with_persons,
            allow_partial=self.allow_partial,
        )
        self._open.append(scan)
        self._missing.update(scan.missing_days)
        return scan

    def missing_days(self) -> list[date]:
        """The days the request's scans left out (allow_partial only)."""
        return sorted(self._missing)

    def missing(self) -> list[MissingRange]:
        """`missing_days` as ranges of consecutive days."""
        return missing_ranges(self._missing)

    def tiers(self) -> list[TierUsage]:
        """Rows and time per tier over every scan of the request."""
        merged: dict[str, TierUsage] = {}
        for scan in self._open:
            for read in scan.tiers:
                usage = merged.setdefault(read.tier, TierUsage(tier=read.tier, rows=0, ms=0.0))
                usage.rows += read.rows
                usage.ms = round(usage.ms + read.ms, 3)
        return sorted(merged.values(), key=lambda u: u.tier)

    async def __aenter__(self) -> RequestScans:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for scan in self._open:
            scan.close()
        self._open.clear()


async def in_thread(fn: Callable[[], T]) -> T:
    """Run blocking DuckDB work off the event loop (DuckDB releases the GIL while it runs)."""
    return await asyncio.to_thread(fn)
