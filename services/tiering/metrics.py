"""The tiering service's Prometheus metrics (one registry per service instance): every metric
name the service exports is defined here, one class per job."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class TieringMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "strata_tiering_maintenance_runs",
            "Maintenance passes by result",
            ["result"],
            registry=registry,
        )
        self.pruned = Counter(
            "strata_tiering_event_ids_pruned",
            "event_ids rows deleted past the dedup horizon",
            registry=registry,
        )
        self.indexes_compacted = Counter(
            "strata_tiering_indexes_compacted",
            "Loose B-tree indexes rebuilt (closed days' partitions, rollups)",
            registry=registry,
        )
        self.index_bytes_freed = Counter(
            "strata_tiering_index_bytes_freed",
            "Bytes the index rebuilds gave back",
            registry=registry,
        )
        self.last_success = Gauge(
            "strata_tiering_last_success_timestamp_seconds",
            "Unix time of the last successful maintenance pass",
            registry=registry,
        )


class TierJobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows_moved = Counter(
            "strata_tiering_rows_moved_cold",
            "Event rows removed from PostgreSQL because day files hold them",
            registry=registry,
        )
        self.partitions_dropped = Counter(
            "strata_tiering_partitions_dropped",
            "Empty day partitions of `event_rows` dropped",
            registry=registry,
        )
        self.dictionary_rows_deleted = Counter(
            "strata_tiering_dictionary_rows_deleted",
            "Pages and sources (`event_pages`, `event_sources`) deleted: no hot row shows them",
            registry=registry,
        )
        self.parts_archived = Counter(
            "strata_tiering_parts_archived",
            "Day files moved to the Archive tier",
            registry=registry,
        )
        self.parts_deleted = Counter(
            "strata_tiering_parts_deleted_retention",
            "Day files deleted past retention_days",
            registry=registry,
        )
        self.restores_completed = Counter(
            "strata_tiering_restores_completed", "Restore jobs completed", registry=registry
        )
        self.failures = Counter(
            "strata_tiering_tier_job_failures",
            "Days or files a tier job failed on (retried next pass)",
            ["job"],
            registry=registry,
        )
        self.last_success = Gauge(
            "strata_tiering_tier_jobs_last_success_timestamp_seconds",
            "Unix time of the last tier-jobs pass without failures",
            registry=registry,
        )


class DayExportMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.parts = Counter(
            "strata_tiering_day_parts_exported",
            "Day-file parts activated, by kind (export, late, merge)",
            ["kind"],
            registry=registry,
        )
        self.rows = Counter(
            "strata_tiering_day_rows_exported", "Event rows written to day files", registry=registry
        )
        self.bytes = Counter(
            "strata_tiering_day_bytes_exported",
            "Bytes of day-file parts written to the object store",
            registry=registry,
        )
        self.failures = Counter(
            "strata_tiering_day_export_failures",
            "Days whose export failed (verification, object store, database)",
            registry=registry,
        )
        self.objects_deleted = Counter(
            "strata_tiering_day_objects_deleted",
            "Orphan and superseded day-file objects deleted",
            registry=registry,
        )
        self.seconds = Histogram(
            "strata_tiering_day_export_seconds",
            "Time to export one day (snapshot, write, upload, verify, activate)",
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.last_success = Gauge(
            "strata_tiering_day_export_last_success_timestamp_seconds",
            "Unix time of the last day-export pass without failures",
            registry=registry,
        )


class ErasureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.completed = Counter(
            "strata_tiering_erasures_completed", "Erasure requests completed", registry=registry
        )
        self.parts_rewritten = Counter(
            "strata_tiering_erasure_parts_rewritten",
            "Day files rewritten without an erased person's rows",
            registry=registry,
        )
        self.bytes_rewritten = Counter(
            "strata_tiering_erasure_bytes_rewritten",
            "Bytes of day files written by erasure rewrites",
            registry=registry,
        )
        self.failures = Counter(
            "strata_tiering_erasure_failures",
            "Erasure passes that failed on a request (retried next pass)",
            registry=registry,
        )
        self.open = Gauge(
            "strata_tiering_erasures_open",
            "Erasure requests not completed after the last pass",
            registry=registry,
        )
