"""Per-project session rules, loaded from PostgreSQL and refreshed periodically."""

from __future__ import annotations

import time
import zoneinfo
from collections.abc import Iterable

import asyncpg
import structlog

from services.sessionizer.session_window import DEFAULT_RULES, SessionRules

log = structlog.get_logger(__name__)

_SELECT = (
    "SELECT id, timezone, session_timeout_s, session_max_s, session_split_midnight,"
    " session_split_campaign FROM projects"
)


def _rules_from_row(row: asyncpg.Record) -> SessionRules:
    timezone = row["timezone"]
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # A typo in a project's time zone must not stop every other project's sessions.
        log.warning("unknown_project_time_zone", project_id=row["id"], tz=timezone)
        timezone = "UTC"
    return SessionRules(
        timeout_s=max(1, row["session_timeout_s"]),
        max_s=max(1, row["session_max_s"]),
        split_midnight=row["session_split_midnight"],
        split_campaign=row["session_split_campaign"],
        timezone=timezone,
    )


class ProjectRules:
    """The session rules of every project. Lookups are synchronous (the sessionizing step is
    pure); `ensure_known` fetches projects first seen in a batch before it is processed."""

    def __init__(self, pool: asyncpg.Pool, refresh_s: float) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._rules: dict[str, SessionRules] = {}
        self._loaded_at = float("-inf")

    def __call__(self, project_id: str) -> SessionRules:
        return self._rules.get(project_id, DEFAULT_RULES)

    async def refresh(self) -> None:
        """Reload every project's rules."""
        rows = await self._pool.fetch(_SELECT)
        self._rules = {row["id"]: _rules_from_row(row) for row in rows}
        self._loaded_at = time.monotonic()

    async def ensure_known(self, project_ids: Iterable[str]) -> None:
        """Refresh when due, or at once when a batch names a project not loaded yet."""
        stale = time.monotonic() - self._loaded_at >= self._refresh_s
        if stale or any(p not in self._rules for p in project_ids):
            # Unknown projects trigger a reload at most once a second, so events naming a
            # project that does not exist (the defaults apply) do not query on every batch.
            if stale or time.monotonic() - self._loaded_at >= min(self._refresh_s, 1.0):
                await self.refresh()
