"""NATS JetStream: connection and the streams every service relies on.

On a NATS cluster the streams are replicated (`stream_replicas`, R3 usually): each keeps a
leader and followers on different servers, so losing one server loses no acknowledged
message and the stream elects a new leader within seconds."""

from __future__ import annotations

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from libs.common.subjects import Subjects

DAY_S = 86400.0


def server_urls(url: str) -> list[str]:
    """`NATS_URL` may list several servers of a cluster, comma-separated."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect(url: str, name: str) -> NATS:
    """Connect with reconnects forever: a service outlives a NATS restart (or, on a cluster,
    moves to another server; the client also learns the cluster's other servers)."""
    return await nats.connect(
        server_urls(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
    )


def stream_configs(subjects: Subjects, replicas: int = 1) -> list[StreamConfig]:
    """The stream definitions; retention is by age so a slow consumer never loses data early."""

    def limits_stream(
        name: str,
        subject: str,
        max_age: float,
        duplicate_window: float = 120.0,
        compression: StoreCompression = StoreCompression.S2,
    ) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=max_age,
            duplicate_window=duplicate_window,
            num_replicas=replicas,
            # Batches of JSON events compress several-fold with S2 (docs/storage.md, "NATS
            # streams"), at a CPU cost far below the JSON encoding that produced them.
            compression=compression,
        )

    return [
        # Ingest retries within 5 minutes are dropped here. Uncompressed: the sessionizer purges
        # it once checkpointed, so S2 saved little disk for a third of NATS's CPU per message
        # (bench/raw_stream.py; docs/subjects.md).
        limits_stream(
            subjects.raw_stream, subjects.raw_all, 7 * DAY_S, 300.0, StoreCompression.NONE
        ),
        # 15 minutes covers a sessionizer replay from its last checkpoint.
        limits_stream(subjects.enriched_stream, subjects.enriched_all, 7 * DAY_S, 900.0),
        limits_stream(subjects.sessions_stream, subjects.sessions_all, 7 * DAY_S, 900.0),
        limits_stream(subjects.dlq_stream, subjects.dlq_all, 30 * DAY_S),
    ]


# The fields ensure_streams sets; an operator's other changes (limits, placement) are kept.
_MANAGED = (
    "subjects",
    "retention",
    "storage",
    "discard",
    "max_age",
    "duplicate_window",
    "compression",
)


async def ensure_streams(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> None:
    """Create the streams with `replicas` replicas, or update those that differ from their
    definition (idempotent; safe from every service at start-up). Replicas are only ever
    raised here: a service started with a lower setting keeps an R3 stream R3 (scaling down
    is an operator's deliberate `nats stream edit`)."""
    for config in stream_configs(subjects, replicas):
        name = config.name
        assert name is not None
        try:
            existing = (await js.stream_info(name)).config
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:  # another service created it meanwhile
                existing = (await js.stream_info(name)).config
        config.num_replicas = max(existing.num_replicas or 1, replicas)
        differs = any(getattr(existing, f) != getattr(config, f) for f in _MANAGED)
        if differs or existing.num_replicas != config.num_replicas:
            # Keep what this definition does not manage (the update replaces the config).
            for field in ("max_msgs", "max_bytes", "max_msg_size", "placement", "description"):
                if getattr(existing, field, None) is not None:
                    setattr(config, field, getattr(existing, field))
            await js.update_stream(config)
