"""The tiering service's schedule: every `schedule_s` until stopped, run hot-store maintenance,
then export closed days as Parquet day files (services/tiering/day_export.py), then the tier
jobs: cold, archive, retention and restores (services/tiering/tier_jobs.py), then erasures,
then rebuild the indexes writes left loose (services/tiering/index_compaction.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

import asyncpg
import structlog

from libs.common.object_store import ObjectStoreError
from libs.common.observability import Liveness
from services.tiering.day_export import DayExportJob
from services.tiering.erasure import ErasureJob
from services.tiering.index_compaction import QuietTables, compact_indexes
from services.tiering.maintenance import run_maintenance
from services.tiering.metrics import TieringMetrics
from services.tiering.tier_jobs import TierJobs

log = structlog.get_logger("tiering")

# The loop wakes at least this often so liveness reflects a loop that is still turning, even
# when the schedule is hours long.
_TICK_S = 10.0
_RETRY_FIRST_S = 5.0


class TieringSchedule:
    """Runs maintenance now, then every `schedule_s`; a failed pass is retried with backoff."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: TieringMetrics,
        *,
        schedule_s: float,
        partitions_ahead_days: int,
        dedup_horizon_days: int,
        day_export: DayExportJob | None = None,
        tier_jobs: TierJobs | None = None,
        erasure: ErasureJob | None = None,
        quiet_check_s: float = 60.0,
    ) -> None:
        self.pool = pool
        self.day_export = day_export
        self.tier_jobs = tier_jobs
        self.erasure = erasure
        self.metrics = metrics
        self.schedule_s = schedule_s
        self.partitions_ahead_days = partitions_ahead_days
        self.dedup_horizon_days = dedup_horizon_days
        # A pass may legitimately take minutes (a large prune); allow that before "stalled".
        self.liveness = Liveness(stall_s=max(300.0, 3 * _TICK_S))
        self._stopping = asyncio.Event()
        self.passes_ok = 0
        # Between passes, every `quiet_check_s`: the tables writes left alone get compacted.
        self.quiet_check_s = quiet_check_s
        self._quiet = QuietTables()

    def stop(self) -> None:
        """Ask the loop to finish the current pass and return."""
        self._stopping.set()

    async def run_once(self) -> bool:
        """One maintenance pass; False when it failed (already logged and counted)."""
        try:
            report = await run_maintenance(
                self.pool,
                partitions_ahead_days=self.partitions_ahead_days,
                dedup_horizon_days=self.dedup_horizon_days,
            )
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            self.metrics.runs.labels("error").inc()
            log.error("maintenance_failed", error=str(exc) or type(exc).__name__)
            return False
        self.metrics.runs.labels("ok").inc()
        self.metrics.pruned.inc(report.event_ids_pruned)
        self.metrics.last_success.set(time.time())
        log.info(
            "maintenance_done",
            partitions_from=report.partitions_from.isoformat(),
            partitions_days=report.partitions_days,
            event_ids_pruned=report.event_ids_pruned,
        )
        if self.day_export is not None:
            # A day that fails is counted and retried next pass; the pass itself only fails
            # when the export could not run at all (database or store unreachable).
            try:
                await self.day_export.run_once(
                    on_progress=self.liveness.tick, should_stop=self._stopping.is_set
                )
            except (asyncpg.PostgresError, OSError, TimeoutError, ObjectStoreError) as exc:
                log.error("day_export_failed", error=str(exc) or type(exc).__name__)
                return False
        if self.tier_jobs is not None and not self._stopping.is_set():
            # After the export: a day's cold move needs its files first.
            try:
                await self.tier_jobs.run_once(should_stop=self._stopping.is_set)
            except (asyncpg.PostgresError, OSError, TimeoutError, ObjectStoreError) as exc:
                log.error("tier_jobs_failed", error=str(exc) or type(exc).__name__)
                return False
        if self.erasure is not None and not self._stopping.is_set():
            # GDPR erasures: rewrite the day files holding erased persons, recompute rollups.
            try:
                await self.erasure.run_once(should_stop=self._stopping.is_set)
            except (asyncpg.PostgresError, OSError, TimeoutError, ObjectStoreError) as exc:
                log.error("erasure_pass_failed", error=str(exc) or type(exc).__name__)
                return False
        if not self._stopping.is_set():
            # Last: rebuilds wait for running transactions, and the pass's own moves and
            # drops change which indexes are worth it.
            if not await self._compact():
                return False
        self.passes_ok += 1
        return True

    async def _compact(self, only_tables: Collection[str] | None = None) -> bool:
        """Rebuild the loose indexes (of `only_tables` only, when given); False when the step
        could not run (logged)."""
        try:
            report = await compact_indexes(
                self.pool,
                on_progress=self.liveness.tick,
                should_stop=self._stopping.is_set,
                only_tables=only_tables,
            )
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.error("index_compaction_failed", error=str(exc) or type(exc).__name__)
            return False
        self.metrics.indexes_compacted.inc(report.indexes)
        self.metrics.index_bytes_freed.inc(max(0, report.bytes_before - report.bytes_after))
        if report.indexes or report.failed:
            log.info(
                "indexes_compacted",
                indexes=report.indexes,
                bytes_before=report.bytes_before,
                bytes_after=report.bytes_after,
                failed=report.failed,
                finished=report.finished,
            )
        return True

    async def _compact_settled(self) -> None:
        """Between passes: compact the tables writes have left alone for a check interval."""
        try:
            quiet = await self._quiet.settled(self.pool)
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.error("index_compaction_failed", error=str(exc) or type(exc).__name__)
            return
        if quiet:
            await self._compact(quiet)

    async def run(self) -> None:
        """Loop until `stop()`; returns after the pass in progress (if any) completes."""
        retry_s = _RETRY_FIRST_S
        while not self._stopping.is_set():
            self.liveness.tick()
            if await self.run_once():
                retry_s = _RETRY_FIRST_S
                wait_s = self.schedule_s
            else:
                wait_s = retry_s
                retry_s = min(retry_s * 2, self.schedule_s)
            await self._sleep(wait_s)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        next_check = time.monotonic() + self.quiet_check_s
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.liveness.tick()
            if time.monotonic() >= next_check:
                await self._compact_settled()
                next_check = time.monotonic() + self.quiet_check_s
                continue
            try:
                await asyncio.wait_for(
                    self._stopping.wait(),
                    timeout=max(0.0, min(remaining, _TICK_S, next_check - time.monotonic())),
                )
            except TimeoutError:
                pass
