"""The tiering service's day-file job: every pass exports the closed UTC days not yet in the
object store (and late rows of days that are), finishes or undoes interrupted exports, merges
days with too many late parts and deletes orphan objects (libs/common/day_files)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

import asyncpg
import structlog

from libs.common.day_files import DayExport, DayExportSettings, ExportRun, export_pending_days
from libs.common.object_store import ObjectStore
from libs.common.settings import TieringSettings
from services.tiering.metrics import DayExportMetrics

log = structlog.get_logger("tiering")


def day_export_settings(settings: TieringSettings) -> DayExportSettings:
    """The export settings an operator configured (STRATA_DAY_FILE_*)."""
    return DayExportSettings(
        work_dir=Path(settings.data_dir) / "work" / "day-files",
        row_group_rows=settings.day_file_row_group_rows,
        zstd_level=settings.day_file_zstd_level,
        max_late_parts=settings.day_file_max_late_parts,
        superseded_grace_s=settings.day_file_superseded_grace_s,
    )


class DayExportJob:
    """One day-export pass per call of `run_once` (the tiering schedule calls it every pass)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ObjectStore,
        settings: DayExportSettings,
        metrics: DayExportMetrics,
        *,
        grace: timedelta,
    ) -> None:
        self.pool = pool
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.grace = grace

    async def run_once(
        self,
        *,
        projects: Sequence[str] | None = None,
        days: Sequence[date] | None = None,
        now: datetime | None = None,
        on_progress: Callable[[], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ExportRun:
        """Export what is pending (optionally only some projects or days) and report it.
        `on_progress` is called after every day (a long first pass still shows the loop
        turning); once `should_stop()` is true the pass ends after the day in progress."""
        started = time.monotonic()

        async def on_day(result: DayExport) -> None:
            if result.part is not None:
                self.metrics.parts.labels(result.part.kind).inc()
                self.metrics.rows.inc(result.rows)
                self.metrics.bytes.inc(result.bytes)
                self.metrics.seconds.observe(result.seconds)
            if on_progress is not None:
                on_progress()

        run = await export_pending_days(
            self.pool,
            self.store,
            self.settings,
            grace=self.grace,
            projects=projects,
            days=days,
            now=now,
            on_day=on_day,
            should_stop=should_stop,
        )
        for merge in run.merges:
            if merge.part is not None:
                self.metrics.parts.labels("merge").inc()
        self.metrics.failures.inc(len(run.failures))
        self.metrics.objects_deleted.inc(run.objects_deleted)
        if not run.failures:
            self.metrics.last_success.set(time.time())
        log.info(
            "day_export_done",
            days=len(run.exports),
            parts=run.parts,
            merges=len(run.merges),
            rows=run.rows,
            bytes=run.bytes,
            objects_deleted=run.objects_deleted,
            failures=len(run.failures),
            seconds=round(time.monotonic() - started, 3),
        )
        return run
