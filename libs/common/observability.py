"""Logs (structlog), metrics (Prometheus), traces (OpenTelemetry, context in NATS headers) and
the health endpoints every service exposes."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def error_text(exc: BaseException) -> str:
    """An exception as a log's `error=` field: its type and message."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def configure_logging(service: str, log_format: str = "json", level: str = "info") -> None:
    """JSON lines in production, key=value for a developer's terminal."""
    renderer: structlog.types.Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def configure_tracing(service: str, exporter: str = "none", endpoint: str = "") -> None:
    """Install a tracer provider; `none` keeps the no-op default (no overhead)."""
    if exporter == "none":
        return
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint or None)
    else:
        raise ValueError(f"STRATA_OTEL_EXPORTER must be none, console or otlp, not {exporter!r}")
    provider = TracerProvider(resource=Resource.create({"service.name": f"strata-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)


def tracing_enabled() -> bool:
    """Whether an OpenTelemetry tracer provider is installed (STRATA_OTEL_EXPORTER != none);
    without one, spans and trace headers would be empty work on every message."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def inject_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add W3C trace context of the current span to NATS message headers."""
    propagate.inject(headers)
    return headers


def extract_trace_context(headers: dict[str, str] | None) -> object:
    return propagate.extract(headers or {})


class Liveness:
    """Progress of a service's main loop: alive while it has ticked within `stall_s`."""

    def __init__(self, stall_s: float = 60.0) -> None:
        self.stall_s = stall_s
        self.last_tick = time.monotonic()

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_s


ReadyCheck = Callable[[], Awaitable[None]]


def add_health_routes(
    app: web.Application,
    registry: CollectorRegistry,
    liveness: Liveness | None,
    ready_checks: dict[str, ReadyCheck],
) -> None:
    """`/healthz` (main loop alive), `/readyz` (dependencies reachable), `/metrics`."""

    async def healthz(_: web.Request) -> web.Response:
        if liveness is not None and not liveness.alive:
            return web.json_response({"status": "stalled"}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        failures = {}
        for name, check in ready_checks.items():
            try:
                await check()
            except Exception as exc:  # any failure means not ready; say which and why
                failures[name] = str(exc) or type(exc).__name__
        if failures:
            return web.json_response({"status": "unready", "failures": failures}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


SERVER_HEADER = "strata"


def hide_server_version(app: web.Application) -> None:
    """Answer with `Server: strata` instead of aiohttp's exact Python and aiohttp versions,
    which only help someone matching known vulnerabilities."""

    async def set_server(_: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = SERVER_HEADER

    app.on_response_prepare.append(set_server)


async def start_health_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    liveness: Liveness | None,
    ready_checks: dict[str, ReadyCheck],
) -> web.AppRunner:
    """A small HTTP server with only the health routes (for the consumer services)."""
    app = web.Application()
    hide_server_version(app)
    add_health_routes(app, registry, liveness, ready_checks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
