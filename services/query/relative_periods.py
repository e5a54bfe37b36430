"""Relative periods, accepted wherever a date is (docs/api-query.md, "Dates and periods"):
`today`, `yesterday`, `<n>d` (the last n local days including today: `7d`, `30d`), `month`
(this calendar month so far), `last_month`, `<n>mo` (the last n calendar months including this
one: `12mo`) and `all` (from the project's first event). Each names a range of whole local
days `[start, end)` in the request's time zone; as `from` it means its start, as `to` its end,
as `period` both. And the ranges a metrics answer is compared with."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from services.query.buckets import local_midnight

ALL = "all"
NAMED_PERIODS = ("today", "yesterday", "7d", "30d", "month", "last_month", "12mo", ALL)
COMPARISONS = ("previous_period", "previous_year")
_DAYS = re.compile(r"^([1-9][0-9]{0,3})d$")
_MONTHS = re.compile(r"^([1-9][0-9]{0,2})mo$")
# Before any event, `all` starts today.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_relative(raw: str) -> bool:
    return raw in NAMED_PERIODS or bool(_DAYS.match(raw) or _MONTHS.match(raw))


def _months_back(day: date, months: int) -> date:
    """The first day of the month `months` before the one containing `day`."""
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def period_range(
    raw: str, now: datetime, tz: ZoneInfo, history_start: datetime | None = None
) -> tuple[datetime, datetime]:
    """The `[start, end)` a relative period names at `now` in `tz` (`all`: from
    `history_start`, the project's first event, else the epoch)."""
    today = now.astimezone(tz).date()
    tomorrow = local_midnight(today + timedelta(days=1), tz)
    if raw == "today":
        return local_midnight(today, tz), tomorrow
    if raw == "yesterday":
        return local_midnight(today - timedelta(days=1), tz), local_midnight(today, tz)
    if raw == "month":
        return local_midnight(today.replace(day=1), tz), tomorrow
    if raw == "last_month":
        return local_midnight(_months_back(today, 1), tz), local_midnight(today.replace(day=1), tz)
    if raw == ALL:
        start = history_start if history_start is not None else _EPOCH
        first_day = min(start.astimezone(tz).date(), today)
        return local_midnight(first_day, tz), tomorrow
    days = _DAYS.match(raw)
    if days:
        return local_midnight(today - timedelta(days=int(days.group(1)) - 1), tz), tomorrow
    months = _MONTHS.match(raw)
    if months:
        return local_midnight(_months_back(today, int(months.group(1)) - 1), tz), tomorrow
    raise ValueError(f"not a relative period: {raw!r}")


def _whole_local_days(start: datetime, end: datetime, tz: ZoneInfo) -> int | None:
    """How many local days `[start, end)` spans when both are local midnights, else None."""
    first, last = start.astimezone(tz), end.astimezone(tz)
    if local_midnight(first.date(), tz) != start or local_midnight(last.date(), tz) != end:
        return None
    return (last.date() - first.date()).days


def _year_before(day: date) -> date:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year - 1, day=28)


def comparison_range(
    compare: str, start: datetime, end: datetime, tz: ZoneInfo
) -> tuple[datetime, datetime]:
    """The range `[start, end)` is compared with: `previous_period` the same number of local
    days (or the same duration, for a range not on local midnights) just before it;
    `previous_year` the same local dates (or instants) one year earlier."""
    days = _whole_local_days(start, end, tz)
    if compare == "previous_period":
        if days is None:
            return start - (end - start), start
        first = start.astimezone(tz).date()
        return local_midnight(first - timedelta(days=days), tz), start
    if compare == "previous_year":
        if days is None:
            return start - timedelta(days=365), end - timedelta(days=365)
        # The last local date of the range maps a year back too, so a range ending on
        # 29 February (exclusive end 1 March) or on 28 February of a leap year keeps a day.
        first = start.astimezone(tz).date()
        last = end.astimezone(tz).date() - timedelta(days=1)
        return (
            local_midnight(_year_before(first), tz),
            local_midnight(_year_before(last) + timedelta(days=1), tz),
        )
    raise ValueError(f"unknown comparison {compare!r}")


def change_percent(current: float | None, previous: float | None) -> float | None:
    """How much `current` changed from `previous`, in percent (one decimal); None when there
    is nothing to compare with (no value, or a previous value of 0)."""
    if current is None or previous is None or previous == 0:
        return None
    return round((current - previous) / abs(previous) * 100, 1)


async def first_event_at(pool: asyncpg.Pool, project_id: str) -> datetime | None:
    """The start of the hour of the project's first event (rollups are kept forever, so their
    first hourly bucket is it), or None before any event."""
    first: datetime | None = await pool.fetchval(
        "SELECT min(bucket) FROM rollups WHERE project_id = $1 AND granularity = 'h'",
        project_id,
    )
    return first
