"""The query service's Prometheus metrics (one registry per service instance): every metric name
the service exports is defined here. (Not `metrics.py`: that is the KPI endpoint.)"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.query.scan_engine import ScanEngine


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


class ScanCachesCollector(Collector):
    """The scans' three caches, read when scraped: what each holds against its budget and what
    it has done since start (docs/operations.md, "The query service's caches"). The caches keep
    plain counters; nothing on a scan's path touches Prometheus."""

    def __init__(self, engine: ScanEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        files = engine.cache
        if files is not None:
            yield _gauge(
                "day_file_cache_bytes", "Bytes of day files in the local cache", files.bytes
            )
            yield _gauge(
                "day_file_cache_limit_bytes", "The local day-file cache's budget", files.max_bytes
            )
            stats = files.stats
            yield _counter("day_file_cache_hits", "Day-file parts found in the cache", stats.hits)
            yield _counter(
                "day_file_cache_misses",
                "Day-file parts downloaded from the object store",
                stats.misses,
            )
            yield _counter(
                "day_file_cache_downloaded_bytes",
                "Bytes downloaded from the object store into the cache",
                stats.bytes_downloaded,
            )
            yield _counter(
                "day_file_cache_evictions", "Day-file parts dropped for the budget", stats.evictions
            )
        hot = engine.hot_rows
        yield _gauge("hot_rows_cache_bytes", "Bytes of PostgreSQL rows held in memory", hot.nbytes)
        yield _gauge("hot_rows_cache_limit_bytes", "The hot-rows cache's budget", hot.max_bytes)
        yield _counter("hot_rows_copied", "Rows copied from PostgreSQL for scans", hot.rows_copied)
        yield _counter("hot_rows_cache_evictions", "Days dropped for the budget", hot.evictions)
        columns = engine.columns
        yield _gauge(
            "column_cache_bytes", "Bytes of decoded day-file columns held in memory", columns.nbytes
        )
        yield _gauge(
            "column_cache_limit_bytes", "The column cache's budget (0: off)", columns.max_bytes
        )
        yield _gauge("column_cache_files", "Day files whose columns are held", len(columns))
        yield _counter("column_cache_fills", "Day files decoded into the cache", columns.fills)
        yield _counter(
            "column_cache_served_files", "Day files scans read from the cache", columns.served
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"strata_query_{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"strata_query_{name}", documentation, value=value)
