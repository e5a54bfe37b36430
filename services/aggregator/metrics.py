"""The aggregator's Prometheus metrics (one registry per service instance): every metric name
the service exports is defined here."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AggregatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_inserted = Counter(
            "strata_aggregator_events_inserted_total", "Events newly stored", registry=registry
        )
        self.events_duplicate = Counter(
            "strata_aggregator_events_duplicate_total",
            "Events received again and skipped (already stored)",
            registry=registry,
        )
        self.messages = Counter(
            "strata_aggregator_messages_total",
            "Enriched messages by outcome",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "strata_aggregator_dead_letters_total", "Messages sent to the DLQ", registry=registry
        )
        self.batch_seconds = Histogram(
            "strata_aggregator_batch_seconds",
            "Time to write and ack one fetched batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.pending = Gauge(
            "strata_aggregator_consumer_pending",
            "Messages in the stream not yet delivered to the aggregator consumer",
            registry=registry,
        )
        self.halted = Gauge(
            "strata_aggregator_halted", "1 when halted by the DLQ cap", registry=registry
        )
