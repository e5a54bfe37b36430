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
    common = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "discard": DiscardPolicy.OLD,
    }
    return [
        StreamConfig(
            name=subjects.raw_stream,
            subjects=[subjects.raw_all],
            max_age=7 * DAY_S,
            duplicate_window=300.0,  # ingest retries within 5 min are dropped here
            **common,
        ),
        StreamConfig(
            name=subjects.enriched_stream,
            subjects=[subjects.enriched_all],
            max_age=7 * DAY_S,
            duplicate_window=900.0,  # covers a sessionizer replay from its last checkpoint
            **common,
        ),
        StreamConfig(
            name=subjects.sessions_stream,
            subjects=[subjects.sessions_all],
            max_age=7 * DAY_S,
            duplicate_window=900.0,
            **common,
        ),
        StreamConfig(
            name=subjects.dlq_stream,
            subjects=[subjects.dlq_all],
            max_age=30 * DAY_S,
            **common,
        ),
    ]


async def ensure_streams(js: JetStreamContext, subjects: Subjects) -> None:
    """Create or update the streams (idempotent; safe from every service at start-up)."""
    for config in stream_configs(subjects):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
