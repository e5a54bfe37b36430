"""What the query app is built from: passed in by `__main__` (or a test), never imported as
globals, and reachable from handlers through typed application keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from argon2 import PasswordHasher
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from libs.common.errors import StrataError
from libs.common.settings import QuerySettings
from libs.common.subjects import Subjects
from services.query.scan_engine import ScanEngine


@dataclass
class QueryDeps:
    """The connections the query service reads through."""

    pool: asyncpg.Pool
    nc: NATS
    subjects: Subjects
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Event scans for the analyses (services/query/event_scan.py): DuckDB plus the day-file
    # cache. The default reads every day from PostgreSQL (no object store).
    scan_engine: ScanEngine = field(default_factory=ScanEngine)
    # Threads a large funnel stream is split over by person (STRATA_ANALYSIS_THREADS).
    analysis_threads: int = 2
    # Dashboard passwords (argon2id; tests pass a cheap one, the hash records its parameters).
    password_hasher: PasswordHasher = field(default_factory=PasswordHasher)


class ApiError(StrataError):
    """An error answered as JSON `{"error": message}` with `status` (401, 403, 404, ...)."""

    code = "api_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = self.http_status = status
        self.message = message


SETTINGS = web.AppKey("settings", QuerySettings)
DEPS = web.AppKey("deps", QueryDeps)
