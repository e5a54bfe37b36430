"""Service settings: one frozen Struct per service, read from the environment once in
`__main__`, then passed in. Nothing else reads `os.environ`.

A field `foo_bar` is read from `STRATA_FOO_BAR`; `database_url` and `nats_url` are read from
`DATABASE_URL` and `NATS_URL` (the names every operator already uses).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from libs.common.errors import StrataError

_UNPREFIXED = {"database_url": "DATABASE_URL", "nats_url": "NATS_URL"}

T = TypeVar("T", bound=msgspec.Struct)


class SettingsError(StrataError, ValueError):
    """A configuration variable is missing or malformed."""

    code = "invalid_settings"


def env_name(field: str) -> str:
    return _UNPREFIXED.get(field, f"STRATA_{field.upper()}")


def from_env(cls: type[T], env: Mapping[str, str] | None = None) -> T:
    """Build `cls` from environment variables, coercing strings to the field types."""
    source = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        name = env_name(field.name)
        if name in source and source[name] != "":
            raw[field.name] = source[name]
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid configuration: {exc} (see docs/configuration.md)") from exc


_CHOICES = {
    "log_format": ("json", "console"),
    "log_level": ("debug", "info", "warning", "error"),
    "otel_exporter": ("none", "console", "otlp"),
}


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/strata"
    nats_url: str = "nats://127.0.0.1:4222"
    nats_prefix: str = "strata"
    partitions: int = 8  # person partitions of the raw stream; fixed for a deployment
    # Replicas of every JetStream stream: 1 on one server, 3 on a NATS cluster (R3). Only ever
    # raised at start-up, never lowered.
    stream_replicas: int = 1
    log_format: str = "json"  # json | console
    log_level: str = "info"
    otel_exporter: str = "none"  # none | console | otlp
    otel_endpoint: str = ""  # OTLP/HTTP endpoint when otel_exporter=otlp

    def __post_init__(self) -> None:
        # A typo in one of these would otherwise fall back silently (e.g. xml logs as JSON).
        for field, allowed in _CHOICES.items():
            value = getattr(self, field)
            if (value.lower() if field == "log_level" else value) not in allowed:
                raise ValueError(f"{env_name(field)}={value!r} is not one of {', '.join(allowed)}")


class IngestSettings(CommonSettings, frozen=True, kw_only=True):
    host: str = "0.0.0.0"
    ingest_port: int = 8080
    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    max_name_chars: int = 200
    max_property_depth: int = 5
    max_properties: int = 200
    future_tolerance_s: int = 24 * 3600
    rate_limit_per_s: float = 5000.0  # events per second per write key (token bucket)
    rate_limit_burst: float = 20000.0
    publish_timeout_s: float = 5.0
    key_cache_ttl_s: float = 30.0
    # Requests allowed to wait on JetStream acks at once; past it ingest answers 503 rather
    # than buffering without limit.
    max_in_flight_publishes: int = 256
    # Cross-request coalescing: accepted events bound for one person partition wait at most
    # publish_linger_s (or until a message holds the max events / bytes) and go out together
    # as one raw message; the request is answered after that message's ack.
    publish_linger_s: float = 0.002
    publish_max_message_events: int = 500
    publish_max_message_bytes: int = 512 * 1024
    shutdown_timeout_s: float = 15.0  # SIGTERM: how long in-flight requests may take to finish
    # Connection hygiene: a connection must complete a request's headers within
    # http_idle_timeout_s of opening or of its previous answer, and its body within
    # http_body_timeout_s; past max_connections the longest-idle connections are closed.
    http_idle_timeout_s: float = 15.0
    http_body_timeout_s: float = 30.0
    max_connections: int = 10000
    # Enrichment from the client IP (docs/enrichment.md): a MaxMind-format City database, a file
    # of bot CIDRs, and the proxies (CIDRs) whose X-Forwarded-For is believed.
    geoip_db: str = ""
    bot_ip_ranges: str = ""
    trusted_proxies: str = ""
    # A referrer-spam host list (Matomo's referrer-spam-list spammers.txt format): events whose
    # referrer is on it (or a subdomain of one on it) are flagged as bots.
    referrer_spam_list: str = ""


class SessionizerSettings(CommonSettings, frozen=True, kw_only=True):
    # This instance owns partitions p with p % replicas == ordinal. In Kubernetes the ordinal
    # comes from the StatefulSet pod name (strata-sessionizer-<n>) when not set explicitly.
    ordinal: int = -1
    replicas: int = 1
    pod_name: str = ""
    checkpoint_interval_s: float = 2.0
    fetch_batch: int = 200
    project_refresh_s: float = 30.0
    health_port: int = 8082
    # Raw messages processed but not yet checkpointed, per partition: past this a checkpoint is
    # taken early so the consumer's max_ack_pending is never reached.
    checkpoint_max_messages: int = 5000
    # Enriched/session publishes in flight per partition; at the cap the oldest half are awaited.
    max_pending_publishes: int = 2000
    publish_timeout_s: float = 10.0
    # The dead-letter cap, as the aggregator's (libs/common/dead_letters.py), per partition.
    dlq_max_ratio: float = 0.5
    dlq_max_count: int = 1000
    dlq_window_s: float = 300.0
    dlq_ratio_min_messages: int = 100


class AggregatorSettings(CommonSettings, frozen=True, kw_only=True):
    # Messages per pull; each holds a few events (or hundreds). Written in transactions of at
    # most max_batch_bytes of messages: a transaction's fixed cost (rollup keys) spreads over
    # their events, and only one transaction's worth is decoded at a time.
    fetch_batch: int = 500
    max_batch_bytes: int = 4_000_000
    # While behind (a pull left at least fetch_batch messages waiting: a backfill, a burst, a
    # restart), pulls and transactions grow to these: a backfill's keys are spread over many
    # days, so a transaction's rollup keys repeat far less than live traffic's.
    backlog_fetch_batch: int = 2000
    backlog_batch_bytes: int = 16_000_000
    fetch_timeout_s: float = 0.2
    max_redeliveries: int = 5
    dlq_max_ratio: float = 0.5  # stop (do not drain into the DLQ) past this share of a window
    dlq_max_count: int = 1000
    ack_wait_s: float = 30.0
    partitions_ahead_days: int = 7
    health_port: int = 8083
    dlq_window_s: float = 300.0  # the window dlq_max_ratio / dlq_max_count are measured over
    dlq_ratio_min_messages: int = 100  # the ratio applies once the window holds this many
    writers: int = 2  # batches in flight per process (one transaction each)
    max_ack_pending: int = 10000  # unacked messages across all replicas (JetStream bound)
    retry_backoff_max_s: float = 30.0  # nak delay cap for transient failures
    pool_size: int = 4


class QuerySettings(CommonSettings, frozen=True, kw_only=True):
    host: str = "0.0.0.0"
    query_port: int = 8081
    max_page_size: int = 1000
    stream_interval_s: float = 1.0
    key_cache_ttl_s: float = 10.0  # how long a looked-up read key is trusted before re-checking
    max_buckets: int = 5000  # output buckets one metrics request may ask for
    pool_size: int = 10
    # Event scans of the analyses (docs/storage.md, "Columnar day files"): closed days come
    # from Parquet day files through a bounded local cache, the rest from PostgreSQL. The
    # object store options mean what they mean for the tiering service (same variables).
    object_store: str = ""  # file:///path or oci://namespace/bucket; default under data_dir
    data_dir: str = ".strata"
    day_file_cache_dir: str = ""  # default: <data_dir>/cache/day-files
    day_file_cache_bytes: int = 2 * 1024**3  # local copies of day files kept, LRU beyond it
    duckdb_threads: int = 2  # threads of the process's one DuckDB instance, all scans together
    duckdb_memory_limit: str = "1GB"
    # Threads one funnel splits a large event stream's NumPy work over, by person (stream_parts)
    analysis_threads: int = 2
    hot_rows_cache_bytes: int = 512 * 1024**2  # rows of days without day files kept, LRU
    # Decoded columns of local day files the analyses read most, kept, LRU (0: off)
    column_cache_bytes: int = 256 * 1024**2
    # Memory freed by analyses kept for the next instead of returned to the OS (0: glibc's
    # defaults; services/query/freed_memory.py)
    query_keep_freed_bytes: int = 1024**3
    query_warm_days: int = 31  # at start, scan each project's last N days to fill the caches
    oci_config_file: str = "~/.oci/config"
    oci_profile: str = "DEFAULT"
    oci_auth: str = "config"
    oci_endpoint: str = ""
    object_store_threads: int = 8
    # Tiers (docs/tiering.md): a query needing Archive-tier days starts a restore readable for
    # restore_hours; GET /api/v1/tiers projects costs at these per-GB-month USD prices
    # (defaults: OCI list prices for block volume, Object Storage Standard and Archive).
    restore_hours: int = 24
    file_restore_delay_s: float = 2.0  # file:// store: how long a restore takes to complete
    price_hot_gb_month: float = 0.0425
    price_cold_gb_month: float = 0.0255
    price_archive_gb_month: float = 0.0026
    # The dashboard (docs/dashboard.md): cookie sessions end after this long without a request,
    # or this long after sign-in whatever happens; Secure cookies: auto (when the request came
    # over TLS, directly or per X-Forwarded-Proto), always or never.
    dashboard_session_idle_s: float = 12 * 3600.0
    dashboard_session_max_s: float = 7 * 86400.0
    dashboard_cookie_secure: str = "auto"
    # Sign-in throttling: past this many failures within login_window_s, per e-mail or per
    # client address, sign-in answers 429 until the oldest failure leaves the window.
    login_max_failures_per_email: int = 5
    login_max_failures_per_client: int = 20
    login_window_s: float = 900.0
    # The ingest URL the setup page puts in the tracking snippet (empty: a placeholder).
    public_ingest_url: str = ""


class TieringSettings(CommonSettings, frozen=True, kw_only=True):
    object_store: str = ""  # file:///path or oci://namespace/bucket; default under data dir
    schedule_s: float = 3600.0
    health_port: int = 8084
    data_dir: str = ".strata"
    partitions_ahead_days: int = 7  # `events` day partitions kept created ahead of today (UTC)
    dedup_horizon_days: int = 30  # event_ids older than this (by receipt) are pruned
    # Object store (docs/object-store.md). OCI auth: config (file/profile), instance_principal,
    # resource_principal or workload_identity (OKE); an empty endpoint derives it from the region.
    oci_config_file: str = "~/.oci/config"
    oci_profile: str = "DEFAULT"
    oci_auth: str = "config"
    oci_endpoint: str = ""
    oci_kms_key_id: str = ""  # Vault master key OCID for server-side encryption; empty: Oracle's
    object_store_threads: int = 8  # blocking SDK / file calls in flight at once
    file_restore_delay_s: float = 2.0  # file:// store: how long a restore takes to complete
    # Columnar day files (docs/storage.md): each closed UTC day exported as Parquet parts.
    day_export_grace_s: float = 1800.0  # export a day this long after it ended (late stragglers)
    day_file_row_group_rows: int = 131072
    day_file_zstd_level: int = 3
    day_file_max_late_parts: int = 8  # past this, a day's late parts are merged into one
    day_file_superseded_grace_s: float = 3600.0  # replaced parts' objects kept this long
    # Tier moves (docs/tiering.md): the jobs every pass runs, in this order (export, cold,
    # archive, retention, restores); a restored Archive copy stays readable restore_hours.
    tier_jobs: str = "export,cold,archive,retention,restores"
    restore_hours: int = 24


class StackSettings(CommonSettings, frozen=True, kw_only=True):
    """`strata up`: the local stack supervisor. Empty URLs mean "start embedded servers"."""

    database_url: str = ""
    nats_url: str = ""
    data_dir: str = ".strata"
    ingest_port: int = 8080
    query_port: int = 8081
    ready_timeout_s: float = 180.0  # every child service must answer /readyz within this
    stop_timeout_s: float = 20.0  # SIGTERM grace per child before SIGKILL
    restart_backoff_max_s: float = 30.0
    demo_days: int = 130  # `up --demo` backfill: days of history per project
    demo_visitors: int = 100  # `up --demo`: average daily visitors per project
    demo_seed: int = 7
    demo_live: bool = True  # after the backfill, keep a live trickle of visitors going
    demo_live_sessions_per_minute: float = 30.0
