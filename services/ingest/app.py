"""The ingest gateway's HTTP application: Segment-compatible tracking routes and the analytics
events API, in front of validation, enrichment and publishing to JetStream.

Order of checks for a request: body size (Content-Length, then bytes read) -> write key ->
JSON -> rate limit -> each event through the event path (services/ingest/stages: decode ->
validate -> event time -> enrich -> policy -> EventV1) -> publish -> answer. A request is
answered 2xx only after JetStream acknowledged every accepted event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from opentelemetry import propagate
from prometheus_client import CollectorRegistry

from libs.common.errors import StrataError
from libs.common.http_errors import client_answer
from libs.common.observability import add_health_routes, error_text, hide_server_version
from libs.common.schemas.events_v1 import EventV1
from libs.common.settings import IngestSettings
from libs.common.storable_text import NUL_PROBLEM, may_hold_nul, nul_path
from libs.common.subjects import Subjects
from services.ingest.analytics_api_payloads import (
    analytics_batch_decoder,
    raw_array_decoder,
)
from services.ingest.answers import Rejection, RetryLater, Skip
from services.ingest.auth import (
    KeyStoreUnavailable,
    WriteKey,
    WriteKeyCache,
    key_from_authorization,
)
from services.ingest.collection import CollectionRules, CookielessIdOf
from services.ingest.connections import OpenConnections, http_handler_args
from services.ingest.cookieless import (
    DailySalts,
    SaltsUnavailable,
    cookieless_id,
    sent_by_tracker,
)
from services.ingest.geo import GeoLocator
from services.ingest.metrics import IngestMetrics
from services.ingest.networks import NetworkSet, client_ip, load_network_file, parse_network_list
from services.ingest.openapi import (
    ANALYTICS_EVENTS_BATCH_PATH,
    ANALYTICS_EVENTS_PATH,
    SEGMENT_TYPES,
    SHORT_PATHS,
    add_openapi_route,
)
from services.ingest.publishing import PublishUnavailable, RawEventPublisher
from services.ingest.rate_limits import WriteKeyRateLimiter, retry_after_header
from services.ingest.referrer_spam import load_referrer_spam_list
from services.ingest.request_body import (
    BodyRefused,
    ClientGone,
    read_body,
    split_array_items,
    too_large_message,
)
from services.ingest.segment_payloads import (
    SegmentBatch,
    SegmentBatchItems,
    SegmentMessage,
    message_id_decoder,
    segment_batch_decoder,
    write_key_decoder,
)
from services.ingest.stages.draft import ItemSkipped, RequestInfo
from services.ingest.stages.path import decode_batch, event_of, item_event, items_within_size
from services.ingest.tracker.script import add_tracker_routes
from services.ingest.validation import (
    ISO_TIME_HINT,
    EventLimits,
    ItemRejected,
    describe_validation_error,
)

log = structlog.get_logger("strata.ingest")


_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Retry-After",
}
_PREFLIGHT = {
    **_CORS,
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    # X-Retry-Count: analytics.js marks its retries with it; refusing it in the preflight would
    # make the browser drop every retried event.
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding, X-Retry-Count",
    "Access-Control-Max-Age": "86400",
}
_MISSING_KEY = (
    "missing write key: send it as the HTTP Basic user name (empty password), as a Bearer "
    "token, or as writeKey in the body"
)

_MILLIS_OR_ISO_HINT = "Unix time in milliseconds or " + ISO_TIME_HINT

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class IngestDeps:
    """What the ingest app runs on; built by `__main__` (or a test) and passed in."""

    nc: NATS
    pool: asyncpg.Pool
    subjects: Subjects
    registry: CollectorRegistry


class _Refused(StrataError):
    """Ends a request early with this response."""

    code = "request_refused"

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _json(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    merged = _CORS if headers is None else {**_CORS, **headers}
    return web.Response(
        body=_encode(payload), status=status, content_type="application/json", headers=merged
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"success": False, "error": message}, headers)


# How a route reads its body: (the write key in the body, the raw items, batch-level fields).
ItemsReader = Callable[[bytes], tuple[str | None, list[Any], dict[str, Any]]]


class IngestApi:
    """The request handlers and the state they share (key cache, buckets, publisher)."""

    def __init__(self, settings: IngestSettings, deps: IngestDeps) -> None:
        self.settings = settings
        self.limits = EventLimits(
            max_event_bytes=settings.max_event_bytes,
            max_name_chars=settings.max_name_chars,
            max_property_depth=settings.max_property_depth,
            max_properties=settings.max_properties,
            future_tolerance_s=settings.future_tolerance_s,
        )
        self.metrics = IngestMetrics(deps.registry)
        self.keys = WriteKeyCache(deps.pool, settings.key_cache_ttl_s)
        self.rate_limiter = WriteKeyRateLimiter(
            settings.rate_limit_per_s, settings.rate_limit_burst
        )
        self.publisher = RawEventPublisher(
            deps.nc,
            deps.subjects,
            settings.partitions,
            settings.publish_timeout_s,
            settings.max_in_flight_publishes,
            latency=self.metrics.publish_seconds,
            linger_s=settings.publish_linger_s,
            max_message_events=settings.publish_max_message_events,
            max_message_bytes=settings.publish_max_message_bytes,
            message_events=self.metrics.raw_message_events,
        )
        self.metrics.publish_in_flight.set_function(lambda: self.publisher.in_flight)
        # Enrichment from the client IP; files are read once here, a bad one stops start-up.
        self.geo = GeoLocator(settings.geoip_db) if settings.geoip_db else None
        self.bot_networks = (
            load_network_file(settings.bot_ip_ranges) if settings.bot_ip_ranges else None
        )
        self.trusted_proxies = NetworkSet(parse_network_list(settings.trusted_proxies))
        self.referrer_spam = (
            load_referrer_spam_list(settings.referrer_spam_list)
            if settings.referrer_spam_list
            else None
        )
        self.consent_salts = DailySalts(deps.nc.jetstream(), deps.subjects)
        self._request_counters: dict[tuple[str, int], Any] = {}
        self._active_requests = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is being handled (or `timeout_s` passed); True when idle.
        Used on SIGTERM after the listener closed, so requests still arriving finish."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- routes ---------------------------------------------------------------------------

    def segment_single(self, event_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        route = f"/v1/{event_type}"

        async def handler(request: web.Request) -> web.Response:
            return await self._counted(route, self._ingest(request, event_type, _segment_single))

        return handler

    async def segment_batch(self, request: web.Request) -> web.Response:
        return await self._counted("/v1/batch", self._ingest(request, None, _segment_batch))

    async def analytics_event(self, request: web.Request) -> web.Response:
        return await self._counted(
            ANALYTICS_EVENTS_PATH, self._ingest(request, "analytics", _analytics_single)
        )

    async def analytics_batch(self, request: web.Request) -> web.Response:
        return await self._counted(
            ANALYTICS_EVENTS_BATCH_PATH, self._ingest(request, "analytics", _analytics_batch)
        )

    @staticmethod
    async def preflight(_: web.Request) -> web.Response:
        return web.Response(status=204, headers=_PREFLIGHT)

    # -- the pipeline of one request --------------------------------------------------------

    async def _counted(self, route: str, handling: Awaitable[web.Response]) -> web.Response:
        status = 500
        self._active_requests += 1
        self._idle.clear()
        try:
            response = await handling
            status = response.status
            return response
        except Exception as exc:
            answer = client_answer(exc)  # an error meant for the client keeps its status
            if answer is not None:
                status = answer[0]
                retry = (
                    {"Retry-After": retry_after_header(exc.retry_after_s)}
                    if isinstance(exc, RetryLater)
                    else None
                )
                return _error(*answer, retry)
            log.exception("ingest_request_failed", route=route)
            return _error(500, "internal error; the events were not accepted, retry later")
        finally:
            self._active_requests -= 1
            if self._active_requests == 0:
                self._idle.set()
            counter = self._request_counters.get((route, status))
            if counter is None:
                counter = self._request_counters[(route, status)] = self.metrics.requests.labels(
                    route, str(status)
                )
            counter.inc()

    async def _ingest(
        self, request: web.Request, kind: str | None, read: ItemsReader
    ) -> web.Response:
        received_at = datetime.now(UTC)
        limit = self.settings.max_request_bytes
        try:
            declared = request.content_length
            if declared is not None and declared > limit:
                raise _Refused(_too_large(declared, limit))
            header_secret = key_from_authorization(request.headers.get("Authorization"))
            write_key = await self._authenticate(header_secret) if header_secret else None
            try:
                body = await read_body(request, limit, self.settings.http_body_timeout_s)
            except BodyRefused as refused:
                raise _Refused(_error(refused.status, refused.message)) from None
            if not body:
                raise _Refused(_error(400, "request body is empty: expected JSON"))
            body_secret, items, batch = _read_items(read, body)
            if write_key is None:
                if not body_secret:
                    raise _Refused(_error(401, _MISSING_KEY))
                write_key = await self._authenticate(body_secret)
            if not items:
                raise _Refused(_error(400, "the batch holds no events"))
            self._check_rate(write_key, len(items))
        except _Refused as refused:
            return refused.response
        except ClientGone as gone:
            # Nothing was accepted and nobody is waiting for an answer: not an error of ours.
            log.info("client_disconnected_before_body", error=error_text(gone))
            return _error(400, "connection closed before the body arrived")

        project_id = write_key.key.project_id or ""
        try:
            collection = await self._collection_rules(write_key, project_id, received_at)
        except _Refused as refused:
            return refused.response
        info = RequestInfo(
            project_id=project_id,
            received_at=received_at,
            limits=self.limits,
            sent_at=batch.get("sent_at"),
            context=batch.get("context"),
            fallback_user_agent=(
                request.headers.get("User-Agent") if "Origin" in request.headers else None
            ),
            client_ip=client_ip(
                request.remote, request.headers.get("X-Forwarded-For"), self.trusted_proxies
            ),
            collection=collection,
        )
        try:
            if sent_by_tracker(info.context):
                info.cookieless_id = await self._tracker_visitor_id(
                    project_id, info.client_ip, request.headers.get("User-Agent")
                )
            events, rejected, skipped = self._events(items, kind, info, body)
        except _Refused as refused:
            return refused.response
        # Most requests reject and skip nothing: a counter's inc takes a lock.
        if rejected:
            self.metrics.rejected.inc(len(rejected))
        if skipped:
            self.metrics.skipped.inc(len(skipped))
        if not events:
            if rejected:
                only = rejected[0].error if len(items) == 1 else None
                return _json(
                    400,
                    {
                        "success": False,
                        "error": only or f"all {len(items)} events were rejected",
                        "accepted": 0,
                        "rejected": rejected,
                        **({"skipped": skipped} if skipped else {}),
                    },
                )
            return _json(200, {"success": True, "accepted": 0, "rejected": [], "skipped": skipped})

        accepted = len(events)
        trace_context = None
        if self.publisher.tracing and "traceparent" in request.headers:
            trace_context = propagate.extract(request.headers)
        publishing = self.publisher.publish(info.project_id, events, trace_context)
        # The publisher encodes the events before its first wait: without this reference they
        # are freed right then, while still in the CPU's caches, rather than after the acks,
        # when other requests have evicted them (~a tenth of ingest's CPU went to freeing each
        # request's objects as it ended). So are the items, decoded Structs for a usual batch.
        del events, items
        try:
            await publishing
        except PublishUnavailable as exc:
            log.warning(
                "publish_failed",
                project_id=info.project_id,
                events=accepted,
                error=error_text(exc),
            )
            raise RetryLater(f"events not accepted: {exc}; retry later", exc.retry_after_s) from exc
        self.metrics.accepted.inc(accepted)
        payload: dict[str, Any] = {"success": True, "accepted": accepted, "rejected": rejected}
        if skipped:
            payload["skipped"] = skipped
        return _json(200, payload)

    async def _collection_rules(
        self, write_key: WriteKey, project_id: str, received_at: datetime
    ) -> CollectionRules:
        """Geo, bot ranges and the project's privacy policy for one request's events."""
        privacy = write_key.privacy
        rules = CollectionRules(
            privacy,
            self.geo,
            self.bot_networks,
            own_domains=write_key.own_domains,
            referrer_spam=self.referrer_spam,
        )
        if rules.needs_cookieless_ids:
            try:
                salt = await self.consent_salts.salt_for(received_at.date())
            except SaltsUnavailable as exc:
                log.warning("cookieless_salt_unavailable", error=error_text(exc))
                raise RetryLater(f"events not accepted: {exc}; retry later", 2) from exc

            def visitor_id(ip: str | None, user_agent: str | None) -> str:
                return cookieless_id(salt, project_id, ip or "", user_agent or "")

            id_of: CookielessIdOf = visitor_id
            rules.cookieless_id = id_of
        return rules

    async def _tracker_visitor_id(
        self, project_id: str, ip: str | None, user_agent: str | None
    ) -> str:
        """Today's cookieless id of the browser tracker's visitor (used for its events that
        carry no id: sent before consent)."""
        try:
            salt = await self.consent_salts.salt_for(datetime.now(UTC).date())
        except SaltsUnavailable as exc:
            log.warning("cookieless_salt_unavailable", error=error_text(exc))
            raise RetryLater(f"events not accepted: {exc}; retry later", 2) from exc
        return cookieless_id(salt, project_id, ip or "", user_agent or "")

    async def _authenticate(self, secret: str) -> WriteKey:
        try:
            found = await self.keys.resolve(secret)
        except KeyStoreUnavailable as exc:
            log.warning("key_lookup_failed", error=error_text(exc))
            raise RetryLater("cannot check the write key right now; retry later", 2) from exc
        if found is None:
            raise _Refused(_error(401, "invalid write key"))
        if found.key.role != "write" or found.key.project_id is None:
            role = found.key.role
            article = "an" if role[:1] in "aeiou" else "a"
            raise _Refused(
                _error(403, f"{article} {role} key cannot send events; use the project's write key")
            )
        return found

    def _check_rate(self, write_key: WriteKey, events: int) -> None:
        wait_s = self.rate_limiter.retry_after(write_key.key.id, events, write_key.rate_limit_per_s)
        if wait_s > 0:
            rate = write_key.rate_limit_per_s or self.settings.rate_limit_per_s
            header = retry_after_header(wait_s)
            raise _Refused(
                _error(
                    429,
                    f"rate limit of {rate:g} events/s for this write key exceeded;"
                    f" retry after {header} s",
                    {"Retry-After": header},
                )
            )

    def _events(
        self, items: list[Any], kind: str | None, info: RequestInfo, body: bytes
    ) -> tuple[list[EventV1], list[Rejection], list[Skip]]:
        """Run every item through the event path (services/ingest/stages); a bad item is
        listed, never published."""
        events: list[EventV1] = []
        rejected: list[Rejection] = []
        skipped: list[Skip] = []
        analytics = kind == "analytics"
        single = len(items) == 1
        # One scan of the body instead of one per item: most bodies hold no NUL escape at all.
        nul_possible = may_hold_nul(body)
        # A Segment batch whose items all decoded (the usual case) was read in one pass, its
        # items already Structs (`_segment_batch`); they skip decode's size and NUL checks when
        # neither can fail. Otherwise the items' own JSON is read, and each item too large or
        # holding a NUL goes item by item, so that only the items at fault are rejected.
        decoded: list[SegmentMessage] | None = None
        if items and type(items[0]) is SegmentMessage:
            if not nul_possible and items_within_size(body, self.limits):
                decoded = items
            else:
                raw_items = segment_batch_decoder.decode(body).batch or []
                if (
                    not nul_possible
                    and max(map(len, raw_items), default=0) <= self.limits.max_event_bytes
                ):
                    decoded = items
                items = raw_items
        append = events.append
        for index, raw in enumerate(items):
            try:
                if decoded is not None:
                    append(event_of(decoded[index], None, info))
                else:
                    append(item_event(raw, kind, info, nul_possible))
            except ItemRejected as exc:
                rejected.append(Rejection(index, _message_id(raw, analytics), exc.reason))
            except ItemSkipped as exc:
                skipped.append(Skip(index, _message_id(raw, analytics), exc.reason))
            except msgspec.ValidationError as exc:
                reason = describe_validation_error(
                    exc, _MILLIS_OR_ISO_HINT if analytics else ISO_TIME_HINT
                )
                rejected.append(Rejection(index, _message_id(raw, analytics), reason))
            except msgspec.DecodeError as exc:
                # Only a single-event body reaches here unparsed (batch items were parsed).
                if single:
                    raise _Refused(_error(400, f"malformed JSON: {exc}")) from None
                rejected.append(Rejection(index, None, f"malformed JSON: {exc}"))
            except RecursionError:
                rejected.append(Rejection(index, None, _TOO_DEEP))
        return events, rejected, skipped


def _message_id(raw: Any, analytics: bool) -> Any:
    if type(raw) is SegmentMessage:
        return raw.messageId  # decoded with the batch: a str or None
    try:
        if analytics:
            found = msgspec.json.decode(raw, type=dict[str, Any]).get("eventId")
        else:
            found = message_id_decoder.decode(raw).messageId
    except (msgspec.DecodeError, RecursionError):
        return None
    # JSON true/false decode as int subclasses; they are no id.
    return found if isinstance(found, str | int) and not isinstance(found, bool) else None


def _too_large(size: int | None, limit: int) -> web.Response:
    return _error(413, too_large_message(size, limit))


_TOO_DEEP = "JSON nested too deeply to read (properties may nest at most a few levels)"


def _read_items(read: ItemsReader, body: bytes) -> tuple[str | None, list[Any], dict[str, Any]]:
    """The body's write key, raw items and batch fields; a body nested too deeply for the
    decoder has its items cut out by a flat scan, so only the deep items are rejected."""
    try:
        return read(body)
    except msgspec.ValidationError as exc:
        raise _Refused(_error(400, describe_validation_error(exc))) from None
    except msgspec.DecodeError as exc:
        raise _Refused(_error(400, f"malformed JSON: {exc}")) from None
    except RecursionError:
        pass
    split = split_array_items(body, _items_key(read, body))
    if split is None:
        raise _Refused(_error(400, _TOO_DEEP))
    envelope, items = split
    try:
        secret, _, batch = read(envelope)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        raise _Refused(_error(400, _TOO_DEEP)) from None
    return secret, items, batch


# -- body readers: (write key in the body, items, batch-level fields) ------------------------


def _segment_single(body: bytes) -> tuple[str | None, list[Any], dict[str, Any]]:
    try:
        secret = write_key_decoder.decode(body).writeKey
    except msgspec.ValidationError as exc:
        if "`$." not in str(exc):
            raise  # the body is not a JSON object
        secret = None  # a writeKey that is not a string counts as missing
    return secret, [body], {}


def _segment_batch(body: bytes) -> tuple[str | None, list[Any], dict[str, Any]]:
    # The body read once, its items straight into their Structs (the usual batch); a body any
    # part of which fails to decode so is read again with its items raw, which gives the
    # body's error, or the items for the item-by-item path (`IngestApi._events`).
    batch: SegmentBatch | SegmentBatchItems | None = decode_batch(body)
    if batch is None:
        batch = segment_batch_decoder.decode(body)
    if batch.batch is None:
        raise _Refused(_error(400, "batch is required: an array of events"))
    if batch.context is not None and may_hold_nul(body):
        where = nul_path(msgspec.to_builtins(batch.context))
        if where is not None:
            # The batch's context is merged into every event: none of them could be stored.
            raise _Refused(_error(400, f"context.{where}: {NUL_PROBLEM}"))
    extra: dict[str, Any] = {}
    if batch.sentAt is not None:
        extra["sent_at"] = batch.sentAt
    if batch.context is not None:
        extra["context"] = batch.context
    return batch.writeKey, batch.batch, extra


def _analytics_single(body: bytes) -> tuple[str | None, list[Any], dict[str, Any]]:
    return _segment_single(body)


def _analytics_batch(body: bytes) -> tuple[str | None, list[Any], dict[str, Any]]:
    if body.lstrip()[:1] == b"[":
        return None, raw_array_decoder.decode(body), {}
    batch = analytics_batch_decoder.decode(body)
    if batch.events is None:
        raise _Refused(_error(400, "events is required: an array of events"))
    return batch.writeKey, batch.events, {}


def _items_key(read: ItemsReader, body: bytes) -> str | None:
    """Where a batch body keeps its items (None: the body is the array itself); a single
    event's body has no items to save, so it is rejected whole."""
    if read is _segment_batch:
        return "batch"
    if read is _analytics_batch:
        return None if body.lstrip()[:1] == b"[" else "events"
    raise _Refused(_error(400, _TOO_DEEP))


# -- the application --------------------------------------------------------------------------


@web.middleware
async def _json_http_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404/405 answers in the API's JSON error shape (405 keeps `Allow`)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        answer = client_answer(exc)
        if answer is None:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        status, message = answer
        return _error(status, f"{message}: {request.method} {request.path}", allow)


INGEST_API = web.AppKey("ingest_api", IngestApi)


def build_app(
    settings: IngestSettings, deps: IngestDeps, connections: OpenConnections | None = None
) -> web.Application:
    """The ingest aiohttp application (routes, health endpoints, metrics). `connections`,
    when given, learns which connections are busy with a request (see OpenConnections)."""
    app = web.Application(
        client_max_size=settings.max_request_bytes,
        middlewares=[_json_http_errors] + ([connections.middleware] if connections else []),
        handler_args=http_handler_args(settings),
    )
    hide_server_version(app)
    api = IngestApi(settings, deps)
    app[INGEST_API] = api
    routes: list[tuple[str, Callable[[web.Request], Awaitable[web.Response]]]] = [
        ("/v1/batch", api.segment_batch),
        # analytics.js's batching delivery posts the same batch body to `<apiHost>/b`.
        ("/v1/b", api.segment_batch),
        (ANALYTICS_EVENTS_PATH, api.analytics_event),
        (ANALYTICS_EVENTS_BATCH_PATH, api.analytics_batch),
    ]
    for event_type in SEGMENT_TYPES:
        routes.append((f"/v1/{event_type}", api.segment_single(event_type)))
    for short, event_type in SHORT_PATHS.items():
        routes.append((f"/v1/{short}", api.segment_single(event_type)))
    for path, handler in routes:
        app.router.add_post(path, handler)
        app.router.add_route("OPTIONS", path, api.preflight)

    async def nats_ready() -> None:
        if not deps.nc.is_connected:
            raise RuntimeError("not connected to NATS")
        await deps.nc.jetstream().stream_info(deps.subjects.raw_stream)

    async def postgres_ready() -> None:
        await deps.pool.fetchval("SELECT 1")

    async def close_geo(_: web.Application) -> None:
        if api.geo is not None:
            api.geo.close()

    app.on_cleanup.append(close_geo)

    add_tracker_routes(app)
    add_openapi_route(app)

    # Ingest has no background loop: it is alive while it answers HTTP.
    add_health_routes(
        app,
        deps.registry,
        liveness=None,
        ready_checks={"nats": nats_ready, "postgres": postgres_ready},
    )
    return app
