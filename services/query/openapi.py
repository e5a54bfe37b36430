"""GET /openapi.json: an OpenAPI 3.1 document of every route the query app serves, with
response schemas generated from the msgspec Structs the handlers encode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from libs.common.rollup_keys import EVENT_DIMENSIONS
from services.query.buckets import INTERVALS
from services.query.metric_query import SHARE_METRICS, STANDARD_METRICS
from services.query.params import DIMENSIONS
from services.query.performance import PERFORMANCE_PROPERTIES
from services.query.reports import DEVICE_DIMENSIONS, SOURCE_DIMENSIONS
from services.query.responses import (
    DimensionReport,
    ErrorResponse,
    EventsPage,
    Health,
    Journey,
    LiveMetrics,
    MetricsResponse,
    PagesResponse,
    PerformanceResponse,
    SessionDetail,
)


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    where: str = "query"
    required: bool = False
    repeatable: bool = False

    def spec(self) -> dict[str, Any]:
        schema = {"type": "array", "items": self.schema} if self.repeatable else self.schema
        out: dict[str, Any] = {
            "name": self.name,
            "in": self.where,
            "description": self.description,
            "required": self.required or self.where == "path",
            "schema": schema,
        }
        if self.repeatable:
            out["style"], out["explode"] = "form", True
        return out


@dataclass(frozen=True)
class Endpoint:
    path: str
    summary: str
    description: str
    params: tuple[Param, ...]
    response: type | None  # None: not JSON (SSE, Prometheus text)
    content_type: str = "application/json"
    authenticated: bool = True
    tag: str = "analytics"


_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}

PROJECT = Param(
    "project", "Project id; required with an admin key that is not bound to one project."
)
FROM = Param(
    "from",
    "Range start: an ISO date (local midnight in `timezone`) or datetime (naive = in "
    "`timezone`). Default: 7 local days before `to`.",
)
TO = Param(
    "to",
    "Range end, exclusive for a datetime; a date includes that whole day. Default: the end "
    "of today in `timezone`.",
)
TIMEZONE = Param(
    "timezone", "IANA time zone buckets and dates are aligned in (default UTC).", {"type": "string"}
)
INTERVAL = Param("interval", "Bucket size (default day).", {"enum": list(INTERVALS)})
FILTER = Param(
    "filter",
    "`dimension:value`; repeat for more. Values of one dimension are alternatives, different "
    "dimensions must all match. `(none)` matches a missing value. Dimensions: "
    + ", ".join(DIMENSIONS)
    + ".",
    repeatable=True,
)
INCLUDE_BOTS = Param("include_bots", "Count traffic flagged as bots (default false).", _BOOL)
LIMIT_VALUES = Param("limit", "Most rows returned, 1-1000 (default 100).", _INT)
PAGE_LIMIT = Param("limit", "Page size, 1..max_page_size (default 100).", _INT)
CURSOR = Param("cursor", "`next_cursor` of the previous page.")
SOURCE = Param(
    "source",
    "auto (default): rollups when they answer exactly, else raw events; events: always raw "
    "rows (exact visitors, hot tier only); rollups: 400 when rollups cannot answer.",
    {"enum": ["auto", "rollups", "events"]},
)
RANGE_PARAMS = (PROJECT, FROM, TO, TIMEZONE, FILTER, INCLUDE_BOTS, LIMIT_VALUES)
REPORT_PARAMS = (*RANGE_PARAMS, SOURCE)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/api/v1/analytics/metrics",
        "KPIs over time",
        "Visitors, pageviews, sessions, bounce rate, average session duration, views per "
        "session, events and `event:<name>` counts, bucketed by `interval`, filtered and "
        "optionally broken down. `source` says whether rollups or raw events answered.",
        (
            PROJECT,
            Param(
                "metrics",
                "Comma-separated: "
                + ", ".join((*STANDARD_METRICS, *SHARE_METRICS))
                + ", event:<name>.",
            ),
            FROM,
            TO,
            TIMEZONE,
            INTERVAL,
            FILTER,
            Param("breakdown", "Dimension to break down by.", {"enum": list(DIMENSIONS)}),
            INCLUDE_BOTS,
            Param("limit", "Most breakdown values returned, 1-1000 (default 100).", _INT),
            SOURCE,
        ),
        MetricsResponse,
    ),
    Endpoint(
        "/api/v1/analytics/pages",
        "Top pages",
        "Pages by pageviews with visitors, entries, bounce rate of entries and average time "
        "on page.",
        REPORT_PARAMS,
        PagesResponse,
    ),
    Endpoint(
        "/api/v1/analytics/sources",
        "Traffic sources",
        "Visitors, sessions and bounce rate by channel, referrer domain or UTM parameter.",
        (
            *REPORT_PARAMS,
            Param("by", "Source dimension (default channel).", {"enum": list(SOURCE_DIMENSIONS)}),
        ),
        DimensionReport,
    ),
    Endpoint(
        "/api/v1/analytics/devices",
        "Devices",
        "Visitors, sessions and bounce rate by device type, browser or operating system.",
        (
            *REPORT_PARAMS,
            Param(
                "by", "Device dimension (default device_type).", {"enum": list(DEVICE_DIMENSIONS)}
            ),
        ),
        DimensionReport,
    ),
    Endpoint(
        "/api/v1/analytics/performance",
        "Page performance",
        "Percentiles of numeric event properties "
        + ", ".join(PERFORMANCE_PROPERTIES)
        + " (any event carrying them, e.g. $pageview with load_time_ms or $web_vitals), "
        "overall and per page.",
        (
            *RANGE_PARAMS,
            Param(
                "properties", "Comma-separated subset of " + ", ".join(PERFORMANCE_PROPERTIES) + "."
            ),
        ),
        PerformanceResponse,
    ),
    Endpoint(
        "/api/v1/analytics/events",
        "Raw events",
        "Events matching the filters, newest first by default, paged by an opaque cursor.",
        (
            PROJECT,
            Param("name", "Event name; repeat for several.", repeatable=True),
            Param("distinct_id", "Device id."),
            Param("user_id", "User id."),
            Param("session_id", "Session id."),
            Param("from", "Earliest event time (inclusive); unbounded by default."),
            Param("to", "Latest event time (exclusive; a date includes that day)."),
            TIMEZONE,
            Param(
                "property",
                "`key:value`: the property's text equals value; repeatable.",
                repeatable=True,
            ),
            Param("order", "desc (default) or asc by (ts, event_id).", {"enum": ["desc", "asc"]}),
            PAGE_LIMIT,
            CURSOR,
            INCLUDE_BOTS,
        ),
        EventsPage,
    ),
    Endpoint(
        "/api/v1/analytics/sessions/{session_id}",
        "One session",
        "The session and its events in time order; 404 for an unknown session.",
        (PROJECT, Param("session_id", "Session id.", where="path")),
        SessionDetail,
    ),
    Endpoint(
        "/api/v1/analytics/users/{user_id}/journey",
        "A person's journey",
        "Every event and session of the person across all their linked ids, oldest first.",
        (
            PROJECT,
            Param("user_id", "A user id or any device id linked to the person.", where="path"),
            Param("from", "Earliest event time."),
            Param("to", "Latest event time (exclusive)."),
            TIMEZONE,
            PAGE_LIMIT,
            CURSOR,
        ),
        Journey,
    ),
    Endpoint(
        "/api/v1/analytics/stream/metrics",
        "Live metrics (Server-Sent Events)",
        "A `text/event-stream` of `event: metrics` whose data is LiveMetrics, every "
        "stream_interval_s.",
        (PROJECT, INCLUDE_BOTS),
        LiveMetrics,
        content_type="text/event-stream",
    ),
    Endpoint(
        "/openapi.json",
        "This document",
        "The OpenAPI 3.1 description of the query API.",
        (),
        None,
        authenticated=False,
        tag="meta",
    ),
    Endpoint(
        "/healthz",
        "Liveness",
        "200 while the process serves.",
        (),
        Health,
        authenticated=False,
        tag="ops",
    ),
    Endpoint(
        "/readyz",
        "Readiness",
        "200 when PostgreSQL and NATS are reachable, else 503 with the failures.",
        (),
        Health,
        authenticated=False,
        tag="ops",
    ),
    Endpoint(
        "/metrics",
        "Prometheus metrics",
        "Request counts and latencies in the Prometheus text format.",
        (),
        None,
        content_type="text/plain",
        authenticated=False,
        tag="ops",
    ),
)

_ERRORS = {
    "400": "A parameter is malformed or out of range; `param` names it.",
    "401": "Missing, unknown or revoked key.",
    "403": "A write key, or another project's key.",
    "404": "Unknown session, person or project.",
}


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document for ENDPOINTS."""
    structs = [e.response for e in ENDPOINTS if e.response is not None] + [ErrorResponse]
    refs, components = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    ref_of = dict(zip(structs, refs, strict=True))
    error_ref = ref_of[ErrorResponse]
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        if endpoint.response is None:
            ok_content: dict[str, Any] = {endpoint.content_type: {"schema": {"type": "string"}}}
        else:
            ok_content = {endpoint.content_type: {"schema": ref_of[endpoint.response]}}
        responses: dict[str, Any] = {"200": {"description": "OK", "content": ok_content}}
        if endpoint.authenticated:
            for status, text in _ERRORS.items():
                responses[status] = {
                    "description": text,
                    "content": {"application/json": {"schema": error_ref}},
                }
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "description": endpoint.description,
            "tags": [endpoint.tag],
            "parameters": [p.spec() for p in endpoint.params],
            "responses": responses,
        }
        if endpoint.authenticated:
            operation["security"] = [{"bearer": []}]
        else:
            operation["security"] = []
        paths[endpoint.path] = {"get": operation}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Strata query API",
            "version": "1",
            "description": "Analytics over Strata's hot store. Dimensions: "
            + ", ".join(EVENT_DIMENSIONS)
            + ", event. See docs/api-query.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A read (or admin) key: Authorization: Bearer sk_r_...",
                }
            },
        },
        "paths": paths,
    }


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document (built once per app)."""
    return web.Response(body=request.app[OPENAPI_BODY], content_type="application/json")


OPENAPI_BODY = web.AppKey("openapi_body", bytes)


def openapi_body() -> bytes:
    return msgspec.json.encode(build_document())
