"""The query service's aiohttp application: routes, JSON errors, request metrics, health."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import web

from libs.common.http_errors import client_answer
from libs.common.observability import add_health_routes, hide_server_version
from libs.common.settings import QuerySettings
from libs.common.storable_text import NUL_PROBLEM, may_hold_nul, nul_path
from services.query.analyses.endpoints import add_analysis_routes
from services.query.auth import READ_KEYS, ReadKeys
from services.query.dashboard.accounts import setup_accounts
from services.query.dashboard.assets import DashboardAssets, add_dashboard_routes
from services.query.dashboard.csrf import csrf_guard
from services.query.dashboard.project_admin import add_project_admin_routes
from services.query.dashboard.project_status import add_project_status_routes
from services.query.dashboard.saved_work import add_saved_work_routes
from services.query.dashboard.sessions import SESSIONS, SessionStore
from services.query.dependencies import DEPS, SETTINGS, ApiError, QueryDeps
from services.query.event_scan import ArchivedDaysError
from services.query.events_listing import get_events
from services.query.journeys import get_journey
from services.query.live_stream import LIVE_HUB, LiveActivityHub, stream_metrics
from services.query.metrics import get_metrics
from services.query.openapi import OPENAPI_BODY, get_openapi, openapi_body
from services.query.params import ParamError
from services.query.performance import get_performance
from services.query.privacy import add_privacy_routes
from services.query.reports import get_devices, get_pages, get_sources
from services.query.responses import ErrorResponse, json_encoder
from services.query.service_metrics import QueryMetrics, ScanCachesCollector
from services.query.sessions import get_session
from services.query.tiers_api import add_tier_routes, restore_required

log = structlog.get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    body = json_encoder.encode(ErrorResponse(error=message, param=param))
    return web.Response(status=status, body=body, content_type="application/json")


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _middlewares(deps: QueryDeps) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    metrics = QueryMetrics(deps.registry)
    deps.registry.register(ScanCachesCollector(deps.scan_engine))
    requests, latency = metrics.requests, metrics.request_seconds

    @web.middleware
    async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = _route_name(request)
            requests.labels(route, str(status)).inc()
            latency.labels(route).observe(time.perf_counter() - started)

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ArchivedDaysError as exc:
            # The range needs archived day files: 202 with the restore job started for them.
            return await restore_required(request, exc)
        except Exception as exc:
            answer = client_answer(exc)
            if answer is not None:
                param = exc.param if isinstance(exc, ParamError) else None
                response = error_response(*answer, param)
                if isinstance(exc, web.HTTPException) and "Allow" in exc.headers:
                    response.headers["Allow"] = exc.headers["Allow"]  # a 405's methods
                return response
            if isinstance(exc, web.HTTPException):
                raise  # not an error: a redirect
            log.exception("query_request_failed", path=request.path, query=request.query_string)
            return error_response(500, "internal error; see the query service log")

    @web.middleware
    async def storable_text_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        """NUL characters cannot be stored or compared in PostgreSQL text: a 400 naming the
        parameter, path or body field, before any handler sees them."""
        if "\x00" in request.path:
            raise ApiError(400, f"the path {NUL_PROBLEM.replace('(', 'in it (', 1)}")
        for name, value in request.query.items():
            if "\x00" in name or "\x00" in value:
                raise ParamError(name.replace("\x00", "?"), NUL_PROBLEM)
        if request.body_exists:
            body = await request.read()  # kept by aiohttp for the handler's own read
            if may_hold_nul(body):
                try:
                    where = nul_path(msgspec.json.decode(body))
                except (msgspec.DecodeError, RecursionError):
                    where = None  # not JSON: the handler's own parsing says so
                if where is not None:
                    raise ParamError(where, NUL_PROBLEM)
        return await handler(request)

    return [measured, json_errors, csrf_guard, storable_text_only]


def build_app(
    settings: QuerySettings, deps: QueryDeps, assets: DashboardAssets | None = None
) -> web.Application:
    """The query API over `deps` (a PostgreSQL pool and a NATS connection), and the dashboard
    (`assets`: the built single-page app, by default the packaged one)."""
    app = web.Application(middlewares=_middlewares(deps))
    hide_server_version(app)
    app[SETTINGS] = settings
    app[DEPS] = deps
    app[READ_KEYS] = ReadKeys(deps.pool, settings.key_cache_ttl_s)
    app[SESSIONS] = SessionStore(
        deps.pool, settings.dashboard_session_idle_s, settings.dashboard_session_max_s
    )
    hub = LiveActivityHub(deps.nc, deps.pool, deps.subjects)
    app[LIVE_HUB] = hub
    app[OPENAPI_BODY] = openapi_body()

    api = "/api/v1/analytics"
    app.router.add_get(f"{api}/metrics", get_metrics)
    app.router.add_get(f"{api}/pages", get_pages)
    app.router.add_get(f"{api}/sources", get_sources)
    app.router.add_get(f"{api}/devices", get_devices)
    app.router.add_get(f"{api}/performance", get_performance)
    app.router.add_get(f"{api}/events", get_events)
    app.router.add_get(f"{api}/sessions/{{session_id}}", get_session)
    app.router.add_get(f"{api}/users/{{user_id}}/journey", get_journey)
    app.router.add_get(f"{api}/stream/metrics", stream_metrics)
    app.router.add_get("/openapi.json", get_openapi)
    add_analysis_routes(app)
    add_tier_routes(app)
    add_privacy_routes(app)
    setup_accounts(app, deps.password_hasher)
    add_project_admin_routes(app)
    add_project_status_routes(app)
    add_saved_work_routes(app)
    add_dashboard_routes(app, assets)

    async def postgres_ready() -> None:
        await deps.pool.fetchval("SELECT 1")

    async def nats_ready() -> None:
        if not deps.nc.is_connected:
            raise ConnectionError("not connected to NATS")
        await deps.nc.flush(timeout=2)

    add_health_routes(app, deps.registry, None, {"postgres": postgres_ready, "nats": nats_ready})

    async def close_live_streams(_: web.Application) -> None:
        # Ends every SSE loop so a graceful shutdown does not wait on open streams.
        await hub.close()

    app.on_shutdown.append(close_live_streams)
    return app
