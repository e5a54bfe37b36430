"""JSON request bodies of the analyses as msgspec Structs, and their decoding: any problem is a
`ParamError` naming the field (`steps[1].conditions[0].value`), which the app answers with 400."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TypeVar

import msgspec
from multidict import MultiDict

from services.query.params import Filters, ParamError, TimeWindow, parse_filters, parse_window
from services.query.relative_periods import ALL

PropertyValue = str | int | float | bool

DEFAULT_ANALYSIS_DAYS = 30
MAX_BODY_BYTES = 1024 * 1024


class Condition(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A property condition: `property` is an event column (`path`, `country`, ...), an event
    property (`plan` or `properties.plan`) or a person trait (`person.plan`)."""

    property: str
    operator: str = "eq"
    value: PropertyValue | list[PropertyValue] | None = None


class EventMatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An event name with optional property conditions (all must hold)."""

    event: str
    conditions: list[Condition] = []


class AnalysisRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What every analysis takes: the range, its time zone, the metrics endpoint's filters,
    bots, and cohorts the persons must all belong to."""

    from_: str | None = msgspec.field(name="from", default=None)
    to: str | None = None
    # A relative period (today, yesterday, 7d, 30d, month, last_month, 12mo, all) instead of
    # from/to, as the query string's `period` (a body's `period` is retention's period length);
    # from and to accept them too.
    date_range: str | None = None
    timezone: str | None = None
    filters: list[str] = []
    include_bots: bool = False
    cohorts: list[str] = []
    # Answer from the readable days when some are archived and not restored (listed in the
    # response's `missing`) instead of 202 with a restore job.
    allow_partial: bool = False


class WindowSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    value: int
    unit: str = "day"


class FunnelStep(EventMatch, frozen=True):
    label: str | None = None


class FunnelExclusion(EventMatch, frozen=True, kw_only=True):
    """Persons with this event between `from_step` and `to_step` of an attempt are removed."""

    from_step: int = 1
    to_step: int | None = None  # default: the last step


class PersonsPage(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Which persons to list: those who reached (`converted`) or dropped before (`dropped`)
    step `step`."""

    step: int
    status: str = "converted"
    breakdown_value: str | None = None
    limit: int = 100
    cursor: str | None = None


class TimeToConvertSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The distribution of the time from `from_step` to `to_step` (default: first to last)
    over the persons who reached `to_step`, in `bins` equal bins (default: about the square
    root of those persons, at most 60)."""

    from_step: int = 1
    to_step: int | None = None
    bins: int | None = None


class FunnelRequest(AnalysisRequest, kw_only=True):
    steps: list[FunnelStep]
    order: str = "ordered"
    window: WindowSpec = WindowSpec(14, "day")
    exclusions: list[FunnelExclusion] = []
    breakdown: str | None = None
    breakdown_limit: int = 25
    persons: PersonsPage | None = None
    time_to_convert: TimeToConvertSpec = TimeToConvertSpec()


class RetentionRequest(AnalysisRequest, kw_only=True):
    start_event: EventMatch
    return_event: EventMatch
    period: str = "day"
    intervals: int = 7
    week_start: str = "monday"
    mode: str = "recurring"
    cumulative: bool = False


class CleaningRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    regex: str
    replacement: str


class PathsRequest(AnalysisRequest, kw_only=True):
    event_types: list[str] = msgspec.field(default_factory=lambda: ["pageview"])
    steps: int = 5
    start_point: str | None = None
    end_point: str | None = None
    cleaning_rules: list[CleaningRule] = []
    edge_limit: int = 50
    # A path per session (default) or per person (their path events of the range, across
    # sessions).
    per: str = "session"


T = TypeVar("T")

_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_BACKTICKED = re.compile(r"`(?P<name>[^`]+)`")


def _field_of(message: str) -> str:
    """The request field a msgspec validation message is about."""
    at = _AT_PATH.search(message)
    path = at.group("path") if at else ""
    if "unknown field" in message or "missing required field" in message:
        named = _BACKTICKED.search(message)
        if named:
            return f"{path}.{named.group('name')}" if path else named.group("name")
    return path or "body"


def decode_body(body: bytes, request_type: type[T]) -> T:
    """`body` as `request_type`, or a ParamError naming the offending field."""
    if len(body) > MAX_BODY_BYTES:
        raise ParamError("body", f"larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise ParamError("body", "a JSON object is required")
    try:
        return msgspec.json.decode(body, type=request_type)
    except msgspec.ValidationError as exc:
        message = str(exc)
        problem = _AT_PATH.sub("", message)
        raise ParamError(_field_of(message), problem) from None
    except msgspec.DecodeError as exc:
        raise ParamError("body", f"not valid JSON: {exc}") from None


def mentions_all(request: AnalysisRequest) -> bool:
    """Whether the range starts at the project's first event (`all`)."""
    return ALL in (request.date_range, request.from_, request.to)


def parse_range(
    request: AnalysisRequest, now: datetime, history_start: datetime | None = None
) -> TimeWindow:
    """`period` or `from`/`to`, and `timezone`, with the metrics endpoint's rules; default:
    the last 30 days. `history_start`: the project's first event, for `all`."""
    query: MultiDict[str] = MultiDict()
    for name, value in (
        ("from", request.from_),
        ("to", request.to),
        ("period", request.date_range),
    ):
        if value is not None:
            query[name] = value
    if request.timezone is not None:
        query["timezone"] = request.timezone
    try:
        return parse_window(query, now, DEFAULT_ANALYSIS_DAYS, history_start)
    except ParamError as exc:
        if exc.param == "period":
            raise ParamError("date_range", exc.problem.replace("period", "date_range")) from None
        raise


def parse_body_filters(request: AnalysisRequest) -> Filters:
    """`filters: ["country:DE", "device_type:mobile"]`, read like the metrics endpoint's."""
    try:
        return parse_filters(MultiDict(("filter", raw) for raw in request.filters))
    except ParamError as exc:
        raise ParamError("filters", exc.problem) from None


def check_range(field: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise ParamError(field, f"must be between {lo} and {hi}, not {value}")
    return value


def check_choice(field: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ParamError(field, f"must be one of {', '.join(choices)}, not {value!r}")
    return value
