"""NATS JetStream: connection and the streams every service relies on."""

from __future__ import annotations

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from libs.common.subjects import Subjects

DAY_S = 86400.0


async def connect(url: str, name: str) -> NATS:
    """Connect with reconnects forever: a service outlives a NATS restart."""
    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
    )


def stream_configs(subjects: Subjects) -> list[StreamConfig]:
    """The stream definitions; retention is by age so a slow consumer never loses data early."""

    def limits_stream(
        name: str, subject: str, max_age: float, duplicate_window: float = 120.0
    ) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=max_age,
            duplicate_window=duplicate_window,
        )

    return [
        # Ingest retries within 5 minutes are dropped here.
        limits_stream(subjects.raw_stream, subjects.raw_all, 7 * DAY_S, 300.0),
        # 15 minutes covers a sessionizer replay from its last checkpoint.
        limits_stream(subjects.enriched_stream, subjects.enriched_all, 7 * DAY_S, 900.0),
        limits_stream(subjects.sessions_stream, subjects.sessions_all, 7 * DAY_S, 900.0),
        limits_stream(subjects.dlq_stream, subjects.dlq_all, 30 * DAY_S),
    ]


async def ensure_streams(js: JetStreamContext, subjects: Subjects) -> None:
    """Create or update the streams (idempotent; safe from every service at start-up)."""
    for config in stream_configs(subjects):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
