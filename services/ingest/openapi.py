"""GET /openapi.json of the ingest gateway: an OpenAPI 3.1 document of every route it serves,
with request and response schemas generated from the msgspec Structs it decodes and answers."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from services.ingest.analytics_api_payloads import AnalyticsEvent
from services.ingest.answers import IngestAnswer, IngestError
from services.ingest.segment_payloads import SegmentContext, SegmentMessage
from services.ingest.tracker.script import TRACKER_PATH

SEGMENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
# analytics.js's short paths for the same calls.
SHORT_PATHS = {
    "t": "track",
    "p": "page",
    "s": "screen",
    "i": "identify",
    "g": "group",
    "a": "alias",
}
ANALYTICS_EVENTS_PATH = "/api/v1/analytics/events"
ANALYTICS_EVENTS_BATCH_PATH = "/api/v1/analytics/events/batch"

_ERRORS = {
    "400": "The body is not JSON of the route's shape, or every item was rejected (each listed "
    "with the field and problem).",
    "401": "No write key, or an unknown or revoked one.",
    "403": "A key of another role (read, admin): only write keys send events.",
    "408": "The body did not arrive within http_body_timeout_s.",
    "413": "The body (or its decompressed form) is over max_request_bytes.",
    "415": "A Content-Encoding other than gzip, deflate or identity.",
    "429": "The write key's rate limit is exceeded; Retry-After says when to retry.",
    "503": "JetStream (or the key store) cannot acknowledge now; nothing was accepted. "
    "Retry-After says when to retry.",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}


def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    structs: list[Any] = [SegmentMessage, SegmentContext, AnalyticsEvent, IngestAnswer, IngestError]
    refs, components = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    ref = dict(zip([s.__name__ for s in structs], refs, strict=True))
    components["SegmentBatch"] = {
        "title": "SegmentBatch",
        "description": "POST /v1/batch: Segment calls of any type; `context` is merged into "
        "each item's own, `sentAt` corrects their clocks.",
        "type": "object",
        "properties": {
            "batch": {"type": "array", "items": ref["SegmentMessage"]},
            "writeKey": {"type": "string"},
            "sentAt": {"type": "string", "format": "date-time"},
            "context": ref["SegmentContext"],
        },
        "required": ["batch"],
    }
    components["AnalyticsEventBatch"] = {
        "title": "AnalyticsEventBatch",
        "description": 'The analytics events API\'s batch: `{"events": [...]}` or a bare '
        "array of events.",
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "events": {"type": "array", "items": ref["AnalyticsEvent"]},
                    "writeKey": {"type": "string"},
                },
                "required": ["events"],
            },
            {"type": "array", "items": ref["AnalyticsEvent"]},
        ],
    }
    ref["SegmentBatch"] = {"$ref": "#/components/schemas/SegmentBatch"}
    ref["AnalyticsEventBatch"] = {"$ref": "#/components/schemas/AnalyticsEventBatch"}
    return ref, components


def _event_operation(summary: str, description: str, body: dict[str, Any]) -> dict[str, Any]:
    json_of = {"application/json": {"schema": {"$ref": "#/components/schemas/IngestError"}}}
    responses: dict[str, Any] = {
        "200": {
            "description": "Acknowledged by JetStream, except the items listed in `rejected`.",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/IngestAnswer"}}
            },
        }
    }
    for status, text in _ERRORS.items():
        responses[status] = {"description": text, "content": json_of}
        if status in ("429", "503"):
            responses[status]["headers"] = _RETRY_AFTER
    return {
        "summary": summary,
        "description": description,
        "tags": ["events"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": responses,
        "security": [{"writeKeyBasic": []}, {"writeKeyBearer": []}, {}],
    }


def _preflight() -> dict[str, Any]:
    return {
        "summary": "CORS preflight",
        "description": "Browsers ask before posting cross-origin; any origin is allowed.",
        "tags": ["events"],
        "security": [],
        "responses": {"204": {"description": "Allowed"}},
    }


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the ingest gateway's routes."""
    ref, components = _schemas()
    paths: dict[str, Any] = {}

    def post(path: str, operation: dict[str, Any]) -> None:
        paths[path] = {"post": operation, "options": _preflight()}

    batch_text = (
        "Segment's batch call: each item is validated on its own, so a bad item is listed in "
        "`rejected` and never costs the others their place."
    )
    post(
        "/v1/batch",
        _event_operation("Send a batch of Segment calls", batch_text, ref["SegmentBatch"]),
    )
    post(
        "/v1/b",
        _event_operation("Send a batch (analytics.js's path)", batch_text, ref["SegmentBatch"]),
    )
    for call in SEGMENT_TYPES:
        post(
            f"/v1/{call}",
            _event_operation(
                f"Send one Segment {call} call",
                f"Segment's HTTP Tracking API `{call}`; the write key as the Basic user name "
                "or `writeKey` in the body.",
                ref["SegmentMessage"],
            ),
        )
    for short, call in SHORT_PATHS.items():
        post(
            f"/v1/{short}",
            _event_operation(
                f"Send one {call} call (analytics.js's path)",
                f"The same as /v1/{call}.",
                ref["SegmentMessage"],
            ),
        )
    post(
        ANALYTICS_EVENTS_PATH,
        _event_operation(
            "Send one event (analytics events API)",
            "An event of the analytics events API (eventType, millisecond timestamp, ...).",
            ref["AnalyticsEvent"],
        ),
    )
    post(
        ANALYTICS_EVENTS_BATCH_PATH,
        _event_operation(
            "Send a batch of events (analytics events API)",
            "Events of the analytics events API, each validated on its own.",
            ref["AnalyticsEventBatch"],
        ),
    )
    paths[TRACKER_PATH] = {
        "get": {
            "summary": "The browser tracker",
            "description": "strata.js, minified; `?v=<version>` makes it cacheable for a year.",
            "tags": ["tracker"],
            "security": [],
            "parameters": [
                {"name": "v", "in": "query", "required": False, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "The script",
                    "content": {"application/javascript": {"schema": {"type": "string"}}},
                },
                "304": {"description": "Not modified (If-None-Match)"},
            },
        }
    }
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    paths["/healthz"] = _plain_get("Alive", status, "503")
    paths["/readyz"] = _plain_get("NATS and PostgreSQL reachable", status, "503")
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    paths["/openapi.json"] = _plain_get("This document", {"type": "object"}, None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Strata ingest API",
            "version": "1",
            "description": "Segment-compatible tracking and the analytics events API. See "
            "docs/api-ingest.md.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": components,
            "securitySchemes": {
                "writeKeyBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "The write key as the user name, an empty password.",
                },
                "writeKeyBearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "paths": paths,
    }


def _plain_get(summary: str, schema: dict[str, Any], failing: str | None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    if failing is not None:
        responses[failing] = {"description": "Not (yet)", "content": content}
    return {
        "get": {
            "summary": summary,
            "tags": ["operations"],
            "security": [],
            "responses": responses,
        }
    }


OPENAPI_BODY = web.AppKey("ingest_openapi_body", bytes)


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document (built once per app)."""
    return web.Response(body=request.app[OPENAPI_BODY], content_type="application/json")


def add_openapi_route(app: web.Application) -> None:
    app[OPENAPI_BODY] = msgspec.json.encode(build_document())
    app.router.add_get("/openapi.json", get_openapi)
