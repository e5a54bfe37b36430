"""Calendar periods (hour, day, week, month) aligned in a time zone, as UTC instants: a local
day is 23 or 25 hours across a daylight-saving change, a month is a calendar month, an hour is
an absolute hour starting on a local hour (XX:30 UTC in Asia/Kolkata)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from services.query.buckets import local_midnight

PERIODS = ("hour", "day", "week", "month")
_HOUR = timedelta(hours=1)
WEEK_STARTS = {"monday": 0, "sunday": 6}  # date.weekday() of the first day of a week


def period_floor(day: date, period: str, week_start: str = "monday") -> date:
    """The first local date of the period containing `day`."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=(day.weekday() - WEEK_STARTS[week_start]) % 7)
    return day.replace(day=1)


def next_period(day: date, period: str) -> date:
    """The first date of the period after the one starting on `day`."""
    if period == "day":
        return day + timedelta(days=1)
    if period == "week":
        return day + timedelta(days=7)
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def period_starts(
    start: datetime, last: datetime, period: str, tz: ZoneInfo, week_start: str, extra: int
) -> list[datetime]:
    """UTC starts of the periods from the one containing `start` through the one containing
    `last`, then `extra` more periods, then the end of the final one (so len = periods + 1)."""
    if period == "hour":
        # Absolute hours, as the metrics' hourly buckets: a repeated or skipped local hour at a
        # daylight-saving change stays one hour.
        hour = start.astimezone(tz).replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        hours = [hour]
        while hours[-1] + _HOUR <= last:
            hours.append(hours[-1] + _HOUR)
        return hours + [hours[-1] + _HOUR * k for k in range(1, extra + 2)]
    day = period_floor(start.astimezone(tz).date(), period, week_start)
    last_day = period_floor(last.astimezone(tz).date(), period, week_start)
    days = [day]
    while days[-1] < last_day:
        days.append(next_period(days[-1], period))
    for _ in range(extra + 1):
        days.append(next_period(days[-1], period))
    return [local_midnight(d, tz) for d in days]


def count_periods(start: datetime, last: datetime, period: str) -> int:
    """An upper bound of the periods between two instants, cheap to check before building."""
    days = (last - start).total_seconds() / 86_400
    per = {"hour": 1 / 24, "day": 1.0, "week": 7.0, "month": 28.0}[period]
    return int(days / per) + 2
