"""The sessionizer's Prometheus metrics (one registry per service instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SessionizerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "strata_sessionizer_events_total", "Events assigned a session", registry=registry
        )
        self.sessions_started = Counter(
            "strata_sessionizer_sessions_started_total", "Sessions started", registry=registry
        )
        self.persons_pruned = Counter(
            "strata_sessionizer_persons_pruned_total",
            "Persons dropped from session state after their window closed",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "strata_sessionizer_dead_lettered_total",
            "Undecodable raw messages sent to the DLQ",
            registry=registry,
        )
        self.restarts = Counter(
            "strata_sessionizer_partition_restarts_total",
            "Partition restarts from the checkpoint after a failure",
            ["partition"],
            registry=registry,
        )
        self.checkpoint_age = Gauge(
            "strata_sessionizer_checkpoint_age_seconds",
            "Seconds since the partition's last checkpoint (0 when nothing is pending)",
            ["partition"],
            registry=registry,
        )
        self.checkpoint_bytes = Gauge(
            "strata_sessionizer_checkpoint_bytes",
            "Bytes of state the partition's last checkpoint wrote (the persons changed since the"
            " one before, or the whole state when it was rewritten)",
            ["partition"],
            registry=registry,
        )
        self.persons = Gauge(
            "strata_sessionizer_persons",
            "Persons held in the partition's session state",
            ["partition"],
            registry=registry,
        )
        self.lag = Gauge(
            "strata_sessionizer_lag_messages",
            "Raw messages of the partition not yet delivered to the sessionizer",
            ["partition"],
            registry=registry,
        )
