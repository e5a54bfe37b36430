"""The query service's Prometheus metrics (one registry per service instance): every metric name
the service exports is defined here. (Not `metrics.py`: that is the KPI endpoint.)"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class QueryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "strata_query_requests",
            "Query API requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "strata_query_request_seconds",
            "Query API request latency by route",
            ["route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
