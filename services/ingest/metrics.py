"""Ingest's Prometheus metrics, registered on the registry the service passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "strata_ingest_requests",
            "HTTP requests to the ingest API by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.events = Counter(
            "strata_ingest_events",
            "Events received, by outcome (accepted, rejected, skipped)",
            ["outcome"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "strata_ingest_publish_seconds",
            "Time from publishing a request's events to JetStream to the last ack",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.raw_message_events = Histogram(
            "strata_ingest_raw_message_events",
            "Events per acknowledged raw-stream message (requests coalesced per partition)",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=registry,
        )
        self.publish_in_flight = Gauge(
            "strata_ingest_publish_in_flight",
            "Requests waiting on JetStream acks",
            registry=registry,
        )
        self.accepted = self.events.labels("accepted")
        self.rejected = self.events.labels("rejected")
        self.skipped = self.events.labels("skipped")
