"""Property-based fuzzing of both HTTP APIs from their own OpenAPI documents (Schemathesis):
for every operation, valid and invalid requests generated from the schema, with a real key,
must never get a 5xx, and every answer must be a documented status whose body matches the
documented schema. Bounded for CI: a fixed number of examples per operation and mode, and a
derandomized (seeded) run, so a failure here is reproducible."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from nats.js import JetStreamContext
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from libs.common.subjects import Subjects
from services.ingest import openapi as ingest_openapi
from services.query import openapi as query_openapi
from tests.integration.test_ingest_api import (  # noqa: F401
    MakeIngest,
    basic,
    make_ingest,
)
from tests.support.project import TestProject
from tests.support.query_app import query_client

pytestmark = pytest.mark.infra

EXAMPLES = {"positive": 5, "negative": 5}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MODES = {
    "positive": schemathesis.GenerationMode.POSITIVE,
    "negative": schemathesis.GenerationMode.NEGATIVE,
}


def fuzz(
    document: dict[str, Any],
    base_url: str,
    headers: dict[str, str],
    aliases: frozenset[str] = frozenset(),
) -> list[str]:
    """Every operation of `document` against `base_url` (but the `aliases`: paths served by
    the same handler as another path fuzzed); the failures, one line each."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in aliases:
            continue
        for mode_name, mode in MODES.items():
            if mode_name == "positive" and _streams(operation):
                continue  # a valid request opens a stream that never ends; its 4xx are fuzzed

            @hypothesis.settings(
                max_examples=EXAMPLES[mode_name],
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
                print_blob=False,
                report_multiple_bugs=False,
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, session=session, headers=headers)
                case.validate_response(response, checks=CHECKS)

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                pass  # no parameters or body: nothing to make invalid
            except (
                Exception,
                BaseExceptionGroup,
            ) as exc:  # a failing example: report it, go on with the others
                first = str(exc).strip().splitlines()
                failures.append(f"{operation.label} [{mode_name}]: {' | '.join(first[:12])}")
    return failures


def _streams(operation: Any) -> bool:
    ok = operation.definition.raw.get("responses", {}).get("200", {})
    return "text/event-stream" in ok.get("content", {})


async def test_the_ingest_api_answers_every_generated_request_as_documented(
    make_ingest: MakeIngest,  # noqa: F811
    js: JetStreamContext,
) -> None:
    ingest = await make_ingest()
    server = ingest.client.server
    document = ingest_openapi.build_document()
    failures = await asyncio.to_thread(
        fuzz,
        document,
        f"http://{server.host}:{server.port}",
        basic(ingest.project.write_key),
        # analytics.js's short paths: the same handlers as /v1/batch, /v1/track, ...
        frozenset({"/v1/b", *(f"/v1/{short}" for short in ingest_openapi.SHORT_PATHS)}),
    )
    assert failures == [], "\n".join(failures)


async def test_the_query_api_answers_every_generated_request_as_documented(
    pool: asyncpg.Pool, nats_url: str, subjects: Subjects, project: TestProject
) -> None:
    document = query_openapi.build_document()
    async with query_client(pool, nats_url, subjects) as client:
        server = client.server
        failures = await asyncio.to_thread(
            fuzz,
            document,
            f"http://{server.host}:{server.port}",
            {"Authorization": f"Bearer {project.read_key}"},
        )
    assert failures == [], "\n".join(failures)


async def test_the_ingest_openapi_document_describes_every_route(
    make_ingest: MakeIngest,  # noqa: F811
) -> None:
    ingest = await make_ingest()
    response = await ingest.client.get("/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.1") and doc == ingest_openapi.build_document()
    # Every (method, path) served is documented, and nothing else (aiohttp adds HEAD).
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in ingest.client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert {(m, path) for path, item in doc["paths"].items() for m in item} == served
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for operation in item.values():
            for status in operation["responses"].values():
                for content in status.get("content", {}).values():
                    ref = content["schema"].get("$ref")
                    if ref:
                        assert ref.removeprefix("#/components/schemas/") in schemas, path
            if path.startswith(("/v1/", "/api/")) and "post" in item:
                documented = set(item["post"]["responses"])
                assert {"200", "400", "401", "403", "408", "413", "415", "429", "503"} <= documented


def test_every_conflict_the_query_api_answers_is_documented() -> None:
    doc = query_openapi.build_document()
    for path, method in (
        ("/api/v1/analytics/cohorts", "post"),
        ("/api/v1/analytics/metric-definitions", "post"),
        ("/api/v1/privacy/users/{user_id}/export", "get"),
    ):
        assert "409" in doc["paths"][path][method]["responses"], path
