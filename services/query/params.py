"""Query-string parsing shared by every analytics endpoint. Every problem becomes a
`ParamError` naming the parameter, which the app answers with 400."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from multidict import MultiMapping

from libs.common.errors import StrataError
from libs.common.rollup_keys import EVENT_DIMENSIONS, EXIT_PAGE
from services.query.buckets import INTERVALS, local_midnight
from services.query.relative_periods import ALL, NAMED_PERIODS, is_relative, period_range

# Dimensions a filter or breakdown may name: the rollup dimensions plus the event name.
EVENT_NAME_DIMENSION = "event"
DIMENSIONS: tuple[str, ...] = (*EVENT_DIMENSIONS, EVENT_NAME_DIMENSION)
# The metrics endpoint also breaks sessions down (and filters them) by their exit page, a
# dimension of sessions only.
METRICS_DIMENSIONS: tuple[str, ...] = (*DIMENSIONS, EXIT_PAGE)

DEFAULT_RANGE_DAYS = 7
# Dates a range may name: no event is older than the Unix epoch, and far-future dates leave no
# room for the day and week arithmetic of buckets (9999-12-31 + 1 day is no date).
EARLIEST_YEAR, LATEST_YEAR = 1970, 9998
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ParamError(StrataError, ValueError):
    """A request parameter is missing, malformed or out of range."""

    code = "invalid_parameter"
    http_status = 400

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param}: {problem}")
        self.param = param
        self.problem = problem


@dataclass(frozen=True)
class TimeWindow:
    """`[start, end)` in UTC, with the zone the caller's buckets are aligned in."""

    start: datetime
    end: datetime
    tz: ZoneInfo

    @property
    def tz_name(self) -> str:
        return self.tz.key


@dataclass(frozen=True)
class DimensionFilter:
    """`dimension` equals any of `values` (repeat `filter=dim:value` for several)."""

    dimension: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Filters:
    by_dimension: dict[str, DimensionFilter] = field(default_factory=dict)

    @property
    def dimensions(self) -> set[str]:
        return set(self.by_dimension)

    def values(self, dimension: str) -> tuple[str, ...] | None:
        found = self.by_dimension.get(dimension)
        return None if found is None else found.values

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.by_dimension.values())


def reject_unknown(query: MultiMapping[str], allowed: set[str]) -> None:
    """400 for a parameter this endpoint does not know (a typo would silently do nothing)."""
    for name in query:
        if name not in allowed:
            raise ParamError(
                name, f"unknown parameter (this endpoint takes {', '.join(sorted(allowed))})"
            )


def single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise ParamError(name, "given more than once")
    return values[0] if values else None


def parse_timezone(query: MultiMapping[str]) -> ZoneInfo:
    raw = single(query, "timezone")
    if raw is None or raw == "":
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ParamError(
            "timezone", f"unknown IANA time zone {raw!r} (e.g. Europe/Berlin)"
        ) from None


def parse_instant(
    name: str,
    raw: str,
    tz: ZoneInfo,
    *,
    end_of_day: bool,
    now: datetime | None = None,
    history_start: datetime | None = None,
) -> datetime:
    """A date, a datetime or a relative period (its start, or its end when `end_of_day`)."""
    if is_relative(raw):
        start, end = period_range(raw, now or datetime.now(UTC), tz, history_start)
        return end if end_of_day else start
    if _DATE_ONLY.match(raw):
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise ParamError(name, f"{raw!r} is not a valid date") from None
        _check_year(name, raw, day.year)
        # A date `to` includes that whole day: the range ends at the next local midnight.
        return local_midnight(day + timedelta(days=1) if end_of_day else day, tz)
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        raise ParamError(
            name,
            f"{raw!r} is not an ISO date (2024-05-01), datetime (2024-05-01T10:00:00Z) or "
            f"relative period ({', '.join(NAMED_PERIODS)}, <n>d, <n>mo)",
        ) from None
    _check_year(name, raw, ts.year)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=tz)
    return ts.astimezone(UTC)


def _check_year(name: str, raw: str, year: int) -> None:
    if not EARLIEST_YEAR <= year <= LATEST_YEAR:
        raise ParamError(name, f"{raw!r} is outside {EARLIEST_YEAR}-01-01 .. {LATEST_YEAR}-12-31")


def mentions_all(query: MultiMapping[str]) -> bool:
    """Whether the request's range starts at the project's first event (`all`)."""
    return ALL in (single(query, "period"), single(query, "from"), single(query, "to"))


def parse_window(
    query: MultiMapping[str],
    now: datetime,
    default_days: int | None = DEFAULT_RANGE_DAYS,
    history_start: datetime | None = None,
) -> TimeWindow:
    """`period` or `from`/`to`, and `timezone`. Defaults: the last `default_days` local days
    including today. `history_start`: the project's first event, for `all`."""
    tz = parse_timezone(query)
    raw_period = single(query, "period")
    raw_from, raw_to = single(query, "from"), single(query, "to")
    if raw_period:
        if raw_from or raw_to:
            raise ParamError("period", "give period or from/to, not both")
        if not is_relative(raw_period):
            raise ParamError(
                "period",
                f"must be one of {', '.join(NAMED_PERIODS)}, <n>d or <n>mo, not {raw_period!r}",
            )
        start, end = period_range(raw_period, now, tz, history_start)
        return TimeWindow(start, end, tz)
    end = (
        parse_instant("to", raw_to, tz, end_of_day=True, now=now, history_start=history_start)
        if raw_to
        else local_midnight(now.astimezone(tz).date() + timedelta(days=1), tz)
    )
    if raw_from:
        start = parse_instant(
            "from", raw_from, tz, end_of_day=False, now=now, history_start=history_start
        )
    elif default_days is None:
        start = datetime(1970, 1, 1, tzinfo=UTC)
    else:
        start = local_midnight(end.astimezone(tz).date() - timedelta(days=default_days), tz)
    if start >= end:
        raise ParamError(
            "from", f"must be before to: [{start.isoformat()}, {end.isoformat()}) is empty"
        )
    return TimeWindow(start, end, tz)


def parse_interval(query: MultiMapping[str], default: str = "day") -> str:
    raw = single(query, "interval")
    raw = default if raw is None else raw
    if raw not in INTERVALS:
        raise ParamError("interval", f"must be one of {', '.join(INTERVALS)}, not {raw!r}")
    return raw


def parse_dimension(name: str, raw: str, allowed: tuple[str, ...] = DIMENSIONS) -> str:
    if raw not in allowed:
        raise ParamError(name, f"unknown dimension {raw!r} (one of {', '.join(allowed)})")
    return raw


def parse_filters(query: MultiMapping[str], allowed: tuple[str, ...] = DIMENSIONS) -> Filters:
    """Repeatable `filter=dimension:value`; values of one dimension are alternatives (OR),
    different dimensions must all match (AND). `(none)` matches a missing value."""
    grouped: dict[str, list[str]] = {}
    for raw in query.getall("filter", []):
        dimension, sep, value = raw.partition(":")
        if not sep or value == "":
            raise ParamError("filter", f"{raw!r} is not dimension:value (e.g. country:DE)")
        parse_dimension("filter", dimension, allowed)
        values = grouped.setdefault(dimension, [])
        if value not in values:
            values.append(value)
    return Filters({d: DimensionFilter(d, tuple(v)) for d, v in grouped.items()})


def parse_bool(query: MultiMapping[str], name: str, default: bool = False) -> bool:
    raw = single(query, name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ParamError(name, f"must be true or false, not {raw!r}")


def parse_int(query: MultiMapping[str], name: str, default: int, lo: int, hi: int) -> int:
    raw = single(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParamError(name, f"must be an integer, not {raw!r}") from None
    if not lo <= value <= hi:
        raise ParamError(name, f"must be between {lo} and {hi}, not {value}")
    return value
