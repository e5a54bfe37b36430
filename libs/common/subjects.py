"""JetStream stream and subject names, all derived from one prefix so tests and tenants can run
side by side on one NATS server without sharing state."""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import msgspec

_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# Event names repeat endlessly: the regex substitution runs once per distinct name.
@lru_cache(maxsize=4096)
def subject_token(value: str) -> str:
    """A NATS-subject-safe token for an arbitrary name ('$pageview' -> '_pageview')."""
    token = _TOKEN_UNSAFE.sub("_", value)[:64]
    return token or "_"


def partition_of(distinct_id: str, partitions: int) -> int:
    """Stable person partition: crc32 so every process and language agrees."""
    return zlib.crc32(distinct_id.encode()) % partitions


class Subjects(msgspec.Struct, frozen=True):
    prefix: str = "strata"

    @property
    def raw_stream(self) -> str:
        return f"{self.prefix.upper()}_RAW"

    @property
    def enriched_stream(self) -> str:
        return f"{self.prefix.upper()}_ENRICHED"

    @property
    def sessions_stream(self) -> str:
        return f"{self.prefix.upper()}_SESSIONS"

    @property
    def dlq_stream(self) -> str:
        return f"{self.prefix.upper()}_DLQ"

    def raw(self, partition: int) -> str:
        return f"{self.prefix}.raw.v1.{partition}"

    @property
    def raw_all(self) -> str:
        return f"{self.prefix}.raw.v1.*"

    def enriched(self, project_id: str, event_name: str) -> str:
        return f"{self.enriched_prefix}{project_id}.{subject_token(event_name)}"

    @property
    def enriched_prefix(self) -> str:
        """What every enriched subject starts with, before `<project>.<event token>`."""
        return f"{self.prefix}.enriched.v1."

    @property
    def enriched_all(self) -> str:
        return f"{self.prefix}.enriched.v1.>"

    def sessions(self, project_id: str) -> str:
        return f"{self.prefix}.sessions.v1.{project_id}"

    @property
    def sessions_all(self) -> str:
        return f"{self.prefix}.sessions.v1.>"

    def dlq(self, service: str) -> str:
        return f"{self.prefix}.dlq.v1.{service}"

    @property
    def dlq_all(self) -> str:
        return f"{self.prefix}.dlq.v1.>"
