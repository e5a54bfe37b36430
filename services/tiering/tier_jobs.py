"""The tier jobs of the tiering service's schedule after the day export (docs/tiering.md):
cold (days past hot_days leave PostgreSQL), archive (files past cold_days go to the Archive
tier), retention (files past retention_days are deleted) and restores (restore jobs advanced,
expired restored copies recorded). `strata tier run` runs the same jobs on demand."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import structlog

from libs.common.day_files.restores import advance_restores
from libs.common.object_store import ObjectStore
from services.tiering.metrics import TierJobMetrics
from services.tiering.tier_moves import (
    TIER_JOBS,
    TierRun,
    apply_retention,
    archive_cold_parts,
    move_cold_days,
)

log = structlog.get_logger("tiering")

# The jobs TierJobs runs (the export is DayExportJob's).
MOVE_JOBS = ("cold", "archive", "retention", "restores")


def parse_tier_jobs(text: str) -> list[str]:
    """The job names of a comma-separated list (STRATA_TIER_JOBS, `--job`), in run order;
    "all" means every job. ValueError names an unknown job."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if "all" in names:
        return list(TIER_JOBS)
    unknown = [n for n in names if n not in TIER_JOBS]
    if unknown:
        raise ValueError(f"unknown tier job(s) {', '.join(unknown)}; jobs: {', '.join(TIER_JOBS)}")
    return [job for job in TIER_JOBS if job in names]


class TierJobs:
    """The configured move jobs, run in order by `run_once`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ObjectStore,
        metrics: TierJobMetrics | None,
        *,
        jobs: Sequence[str] = MOVE_JOBS,
    ) -> None:
        self.pool = pool
        self.store = store
        self.metrics = metrics
        self.jobs = [j for j in jobs if j in MOVE_JOBS]

    async def run_once(
        self,
        *,
        now: datetime | None = None,
        projects: Sequence[str] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[TierRun]:
        """Run every configured job once; a failed day or file is recorded in its run and
        retried next time."""
        now = now or datetime.now(UTC)
        runs: list[TierRun] = []
        for job in self.jobs:
            if should_stop is not None and should_stop():
                break
            if job == "cold":
                run = await move_cold_days(
                    self.pool, self.store, now=now, projects=projects, should_stop=should_stop
                )
            elif job == "archive":
                run = await archive_cold_parts(self.pool, self.store, now=now, projects=projects)
            elif job == "retention":
                run = await apply_retention(self.pool, self.store, now=now, projects=projects)
            else:
                started = time.perf_counter()
                completed = await advance_restores(self.pool, self.store, now=now)
                run = TierRun(job="restores", seconds=time.perf_counter() - started)
                if self.metrics:
                    self.metrics.restores_completed.inc(completed)
            runs.append(run)
            if self.metrics:
                self.metrics.rows_moved.inc(run.rows_moved)
                self.metrics.partitions_dropped.inc(run.partitions_dropped)
                self.metrics.dictionary_rows_deleted.inc(run.dictionary_rows_deleted)
                self.metrics.parts_archived.inc(run.parts_archived)
                self.metrics.parts_deleted.inc(run.parts_deleted)
                self.metrics.failures.labels(job).inc(len(run.failures))
            log.info(
                "tier_job_done",
                job=job,
                rows_moved=run.rows_moved,
                partitions_dropped=run.partitions_dropped,
                dictionary_rows_deleted=run.dictionary_rows_deleted,
                parts_archived=run.parts_archived,
                parts_deleted=run.parts_deleted,
                failures=len(run.failures),
                seconds=round(run.seconds, 3),
            )
        if self.metrics and not any(r.failures for r in runs):
            self.metrics.last_success.set(time.time())
        return runs
