"""Time bucketing for analytics answers: output buckets aligned in the caller's time zone, and
the decomposition of each output bucket into whole rollup buckets (hour/day, UTC)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from libs.common.rollup_keys import DAY, HOUR

INTERVALS = ("hour", "day", "week", "month")

_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)  # an output interval, not a rollup granularity


@dataclass(frozen=True)
class OutputBuckets:
    """`labels[i]` names the bucket covering `[bounds[i], bounds[i + 1])`; the first and last
    are clipped to the requested range, so `bounds[0]` is `from` and `bounds[-1]` is `to`, and
    a first bucket that starts before `from` is labelled `from` (never a day outside the
    range)."""

    labels: list[datetime]
    bounds: list[datetime]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class RollupPiece:
    """Rollup rows of `granularity` whose bucket lies in `[lo, hi)` belong to output `index`."""

    index: int
    granularity: str
    lo: datetime
    hi: datetime


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant a local day starts (a day starting in a DST gap starts after it)."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _floor_local(ts: datetime, interval: str, tz: ZoneInfo) -> datetime:
    local = ts.astimezone(tz)
    if interval == "hour":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    day = local.date()
    if interval == "week":
        day -= timedelta(days=day.weekday())
    elif interval == "month":
        day = day.replace(day=1)
    return local_midnight(day, tz)


def _next_local(start: datetime, interval: str, tz: ZoneInfo) -> datetime:
    if interval == "hour":
        # Absolute hours: a repeated or skipped local hour at a DST change stays one hour.
        return start + _HOUR
    day = start.astimezone(tz).date()
    if interval == "day":
        return local_midnight(day + _DAY, tz)
    if interval == "week":
        return local_midnight(day + _WEEK, tz)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return local_midnight(date(year, month, 1), tz)


def count_buckets(start: datetime, end: datetime, interval: str) -> int:
    """An upper bound of the number of output buckets, cheap enough to check before building."""
    span = (end - start).total_seconds()
    per = {"hour": 3600.0, "day": 82800.0, "week": 601200.0, "month": 2419200.0}[interval]
    return int(span // per) + 2


def output_buckets(
    start: datetime, end: datetime, interval: str | None, tz: ZoneInfo
) -> OutputBuckets:
    """The buckets of `interval` in `tz` covering `[start, end)`; one bucket when None."""
    if interval is None:
        return OutputBuckets([start], [start, end])
    labels: list[datetime] = []
    bounds: list[datetime] = [start]
    current = _floor_local(start, interval, tz)
    while current < end:
        following = _next_local(current, interval, tz)
        labels.append(max(current, start))
        bounds.append(min(following, end))
        current = following
    return OutputBuckets(labels, bounds)


def hour_aligned(ts: datetime) -> bool:
    return ts.minute == 0 and ts.second == 0 and ts.microsecond == 0


def _day_aligned(ts: datetime) -> bool:
    return hour_aligned(ts) and ts.hour == 0


def rollup_pieces(buckets: OutputBuckets, finest: str = HOUR) -> list[RollupPiece] | None:
    """Cover every output bucket exactly with whole rollup buckets: days where they fit, hours
    at the edges (unless `finest` is DAY: rows only days have, such as dimensions).

    None when a boundary is not on a whole UTC hour (a partial hour or a zone such as
    Asia/Kolkata), or not on a UTC midnight when `finest` is DAY: the rollups cannot answer
    that exactly, so the caller reads raw events.
    """
    aligned = _day_aligned if finest == DAY else hour_aligned
    pieces: list[RollupPiece] = []
    for index in range(len(buckets)):
        lo, hi = buckets.bounds[index].astimezone(UTC), buckets.bounds[index + 1].astimezone(UTC)
        if not (aligned(lo) and aligned(hi)):
            return None
        cursor = lo
        while cursor < hi:
            # One run of hours up to the next midnight (or `hi`), then one run of whole days.
            if _day_aligned(cursor) and cursor + _DAY <= hi:
                days = (hi - cursor) // _DAY
                pieces.append(RollupPiece(index, DAY, cursor, cursor + days * _DAY))
            else:
                midnight = (cursor + _DAY).replace(hour=0)
                pieces.append(RollupPiece(index, HOUR, cursor, min(midnight, hi)))
            cursor = pieces[-1].hi
    return pieces


_STEP = {HOUR: _HOUR, DAY: _DAY}


def rollup_buckets(pieces: list[RollupPiece]) -> tuple[list[int], list[str], list[datetime]]:
    """Every rollup bucket the pieces cover, as parallel lists (output index, granularity,
    bucket start): exact keys, so each is one precise primary-key probe in PostgreSQL."""
    indexes: list[int] = []
    granularities: list[str] = []
    starts: list[datetime] = []
    for piece in pieces:
        step = _STEP[piece.granularity]
        cursor = piece.lo
        while cursor < piece.hi:
            indexes.append(piece.index)
            granularities.append(piece.granularity)
            starts.append(cursor)
            cursor += step
    return indexes, granularities, starts
