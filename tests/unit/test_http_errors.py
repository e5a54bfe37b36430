"""The one mapping both HTTP APIs answer errors with: an error meant for the client keeps its
status and message, aiohttp's own errors keep theirs, and anything else is internal (a 500
without details, decided by the app)."""

from __future__ import annotations

from aiohttp import web

from libs.common.http_errors import client_answer
from libs.common.object_store import ObjectNotFound
from services.ingest.auth import KeyStoreUnavailable
from services.ingest.request_body import BodyRefused
from services.query.dependencies import ApiError
from services.query.params import ParamError


def test_client_errors_keep_their_status_and_message() -> None:
    assert client_answer(ParamError("from", "not a date")) == (400, "from: not a date")
    assert client_answer(ApiError(404, "no such cohort")) == (404, "no such cohort")
    assert client_answer(BodyRefused(413, "too large")) == (413, "too large")
    assert client_answer(KeyStoreUnavailable("database down")) == (503, "database down")


def test_aiohttp_errors_keep_their_status_and_redirects_are_not_errors() -> None:
    assert client_answer(web.HTTPNotFound()) == (404, "Not Found")
    assert client_answer(web.HTTPFound("/elsewhere")) is None


def test_internal_failures_get_no_client_answer() -> None:
    assert client_answer(ObjectNotFound("events/v1/x.parquet")) is None
    assert client_answer(RuntimeError("bug")) is None
