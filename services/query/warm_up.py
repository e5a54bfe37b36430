"""Filling the query process's caches at start, so the first analysis after a deploy or a
restart does not pay for them.

A fresh process holds no hot rows (days without day files are copied from PostgreSQL by the
first scan that needs them: ~7.7 s for 90 such days of `bench.tiers` at scale 0.2, right after a
backfill) and has read no day file's footer; day files themselves may be on the local disk
from before, or not at all on a new pod. The warm-up opens one scan per project over the last
`STRATA_QUERY_WARM_DAYS` days, exactly what an analysis over that range would open, and closes
it: the rows, the downloads and the footers stay cached. It runs beside the serving, so the
service is ready at once; a request that comes first simply fills the cache itself.

Projects are warmed in order of their most recent event, and the warm-up stops once the hot
rows' byte budget made it drop a day (a later project would only push out an earlier one). A project
that fails (PostgreSQL away, an object missing) is logged and skipped: warming is an
optimisation and never stops the service. Last, the warm-up imports the experiments'
statistics library (SciPy), which the service leaves out of its start, and compiles (or loads
from its cache) the ordered funnel's kernel (services/query/analyses/funnel_kernel.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from libs.common.day_files import day_bounds
from services.query.analyses.experiments import import_statistics
from services.query.analyses.funnel_kernel import load_funnel_kernel
from services.query.analyses.key_order import load_key_order
from services.query.event_scan import ScanSources, open_scan

log = structlog.get_logger("query")

# Projects by their newest event within the window (the (project_id, ts) index of each day
# partition the window keeps answers it: `event_rows`, as the `events` view's joins would keep
# PostgreSQL from reading max() off the index), those without one last.
_PROJECTS = """
SELECT p.id
FROM projects p
LEFT JOIN LATERAL (
    SELECT max(e.ts) AS newest FROM event_rows e WHERE e.project_id = p.id AND e.ts >= $1
) recent ON true
ORDER BY recent.newest DESC NULLS LAST, p.id
"""


@dataclass
class WarmUp:
    """What a warm-up did, for its log line and for tests."""

    projects: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    hot_rows: int = 0
    file_days: int = 0
    stopped_full: bool = False
    seconds: float = 0.0


async def warm_caches(deps: ScanSources, days: int, *, now: datetime | None = None) -> WarmUp:
    """Open and close one scan per project over the `days` UTC days ending today."""
    done = WarmUp()
    if days <= 0:
        return done
    started = time.monotonic()
    now = now or datetime.now(UTC)
    end = day_bounds(now.astimezone(UTC).date())[1]
    start = end - timedelta(days=days)
    engine = deps.scan_engine
    hot = engine.hot_rows
    copied_before, evictions_before = hot.rows_copied, hot.evictions
    projects = [r["id"] for r in await deps.pool.fetch(_PROJECTS, start)]
    for project_id in projects:
        if hot.evictions > evictions_before:  # full: more would push out what was warmed
            done.stopped_full = True
            break
        try:
            scan = await open_scan(
                deps,
                project_id,
                start,
                end,
                include_bots=True,
                with_persons=False,
                allow_partial=True,  # archived days stay archived: no restore for a warm-up
                now=now,
            )
        except Exception as exc:
            done.failed.append(project_id)
            log.warning("cache_warm_up_failed", project_id=project_id, error=str(exc))
            continue
        done.file_days += len(scan.file_days)
        scan.close()
        done.projects.append(project_id)
    done.hot_rows = hot.rows_copied - copied_before
    # Last, and off the event loop: the experiments' statistics (SciPy takes seconds to import,
    # so the module imports it on first use rather than at the service's start), and the
    # compiled funnel kernel and streams' sort (~2 s to compile where their cache is empty,
    # ~0.4 s to load).
    await asyncio.to_thread(import_statistics)
    await asyncio.to_thread(load_funnel_kernel)
    await asyncio.to_thread(load_key_order)
    done.seconds = time.monotonic() - started
    log.info(
        "caches_warmed",
        days=days,
        projects=len(done.projects),
        failed=len(done.failed),
        hot_rows=done.hot_rows,
        file_days=done.file_days,
        stopped_at_budget=done.stopped_full,
        took_s=round(done.seconds, 2),
    )
    return done
