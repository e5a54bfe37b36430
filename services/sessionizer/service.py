"""The sessionizer service: owns its share of the raw stream's person partitions, runs one
PartitionWorker per partition, and serves /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import re
import time

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from libs.common.nats_io import ensure_streams
from libs.common.observability import Liveness, start_health_server
from libs.common.settings import SessionizerSettings, SettingsError
from libs.common.subjects import Subjects
from services.sessionizer.metrics import SessionizerMetrics
from services.sessionizer.partition_worker import PartitionWorker
from services.sessionizer.project_rules import ProjectRules

log = structlog.get_logger(__name__)

_POD_ORDINAL = re.compile(r"-(\d+)$")


def instance_ordinal(settings: SessionizerSettings) -> int:
    """This instance's ordinal: STRATA_ORDINAL, else the StatefulSet pod name's `-<n>`, else 0."""
    if settings.ordinal >= 0:
        return settings.ordinal
    match = _POD_ORDINAL.search(settings.pod_name)
    return int(match.group(1)) if match else 0


def owned_partitions(settings: SessionizerSettings) -> list[int]:
    """The raw-stream partitions this instance owns: p % replicas == ordinal."""
    if settings.replicas < 1:
        raise SettingsError("STRATA_REPLICAS must be at least 1")
    ordinal = instance_ordinal(settings)
    if ordinal >= settings.replicas:
        raise SettingsError(
            f"sessionizer ordinal {ordinal} must be below STRATA_REPLICAS={settings.replicas}"
        )
    return [p for p in range(settings.partitions) if p % settings.replicas == ordinal]


class PartitionLiveness(Liveness):
    """Alive while every owned partition's loop has ticked within `stall_s`."""

    def __init__(self, partitions: list[int], stall_s: float = 60.0) -> None:
        super().__init__(stall_s)
        now = time.monotonic()
        self._ticks = dict.fromkeys(partitions, now)

    def tick_partition(self, partition: int) -> None:
        self._ticks[partition] = time.monotonic()

    @property
    def alive(self) -> bool:
        now = time.monotonic()
        return all(now - tick < self.stall_s for tick in self._ticks.values())


class SessionizerService:
    """Run with `await service.run()`; `service.stop()` makes it checkpoint and return."""

    def __init__(
        self,
        settings: SessionizerSettings,
        nc: NATS,
        pool: asyncpg.Pool,
        health_host: str = "0.0.0.0",
    ) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.nats_prefix)
        self.partitions = owned_partitions(settings)
        self._nc = nc
        self._pool = pool
        self._health_host = health_host
        self._stopping = asyncio.Event()
        self.registry = CollectorRegistry()
        self.metrics = SessionizerMetrics(self.registry)
        # A partition loop ticks at least every fetch timeout (<= 1 s) plus one checkpoint.
        self.liveness = PartitionLiveness(self.partitions, stall_s=60.0)

    def stop(self) -> None:
        """Stop fetching; each partition finishes its current message, checkpoints and acks."""
        self._stopping.set()

    async def run(self) -> None:
        js = self._nc.jetstream(publish_async_max_pending=4 * self.settings.max_pending_publishes)
        await ensure_streams(js, self.subjects, self.settings.stream_replicas)
        rules = ProjectRules(self._pool, self.settings.project_refresh_s)
        await rules.refresh()

        async def nats_ready() -> None:
            if not self._nc.is_connected:
                raise ConnectionError("NATS not connected")

        async def postgres_ready() -> None:
            await self._pool.fetchval("SELECT 1")

        health = await start_health_server(
            self._health_host,
            self.settings.health_port,
            self.registry,
            self.liveness,
            {"nats": nats_ready, "postgres": postgres_ready},
        )
        workers = [
            PartitionWorker(
                partition,
                self._nc,
                js,
                self._pool,
                self.subjects,
                self.settings,
                rules,
                self.metrics,
                self.liveness.tick_partition,
                self._stopping,
            )
            for partition in self.partitions
        ]
        log.info(
            "sessionizer_started",
            partitions=self.partitions,
            ordinal=instance_ordinal(self.settings),
            replicas=self.settings.replicas,
        )
        try:
            await asyncio.gather(*(worker.run() for worker in workers))
        finally:
            await health.cleanup()
        log.info("sessionizer_stopped")
