"""GET /openapi.json: an OpenAPI 3.1 document of every route the query app serves, with
response schemas generated from the msgspec Structs the handlers encode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from libs.common.day_files.restores import RestoreJob
from libs.common.day_files.tier_summary import TierSummary
from libs.common.erasure import ErasureStatus
from libs.common.rollup_keys import EVENT_DIMENSIONS, EXIT_PAGE
from services.query.analyses.cohorts import CohortBody
from services.query.analyses.experiments import ExperimentRequest
from services.query.analyses.metric_definitions import MetricBody
from services.query.analyses.requests import FunnelRequest, PathsRequest, RetentionRequest
from services.query.analyses.responses import (
    CohortDetail,
    CohortList,
    CohortPersons,
    CohortRecord,
    ExperimentResponse,
    FunnelResponse,
    MetricDefinitionDetail,
    MetricDefinitionList,
    PathsResponse,
    RetentionResponse,
    SavedDefinition,
)
from services.query.buckets import INTERVALS
from services.query.dashboard.accounts import AcceptInviteBody, LoginBody, PasswordBody
from services.query.dashboard.project_admin import KeyBody, MemberBody, ProjectBody, RoleBody
from services.query.dashboard.saved_work import AnnotationBody, DashboardBody, InsightBody
from services.query.metric_query import SHARE_METRICS, STANDARD_METRICS
from services.query.params import DIMENSIONS, METRICS_DIMENSIONS
from services.query.performance import PERFORMANCE_PROPERTIES
from services.query.privacy import ErasureBody
from services.query.relative_periods import COMPARISONS, NAMED_PERIODS
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
    method: str = "get"
    request: type | None = None  # the JSON body's Struct (POST/PUT)
    ok_status: str = "200"  # 201 for a create, 204 (no body) for a delete
    security: str = "bearer"  # or "dashboard": a session cookie (or a key), "none"
    conflict: str | None = None  # when the endpoint answers 409: why
    errors: tuple[tuple[str, str], ...] = ()  # other statuses it answers, and why


_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}

PROJECT = Param(
    "project", "Project id; required with an admin key that is not bound to one project."
)
_RELATIVE = ", ".join(NAMED_PERIODS) + ", <n>d or <n>mo"
FROM = Param(
    "from",
    "Range start: an ISO date (local midnight in `timezone`), a datetime (naive = in "
    f"`timezone`) or a relative period ({_RELATIVE}: its start). Default: 7 local days before "
    "`to`.",
)
TO = Param(
    "to",
    "Range end, exclusive for a datetime; a date includes that whole day; a relative period "
    "means its end. Default: the end of today in `timezone`.",
)
PERIOD = Param(
    "period",
    f"A relative period as the whole range instead of from/to: {_RELATIVE} (whole local days "
    "of `timezone`; `all` from the project's first event).",
)
COMPARE = Param(
    "compare",
    "Also answer the metrics over the previous period or the same dates a year earlier "
    "(`comparison`, with each total's change in percent).",
    {"enum": list(COMPARISONS)},
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
METRICS_FILTER = Param(
    "filter",
    FILTER.description.removesuffix(".") + f", and `{EXIT_PAGE}` (session metrics only).",
    repeatable=True,
)
INCLUDE_BOTS = Param("include_bots", "Count traffic flagged as bots (default false).", _BOOL)
LIMIT_VALUES = Param("limit", "Most rows returned, 1-1000 (default 100).", _INT)
PAGE_LIMIT = Param("limit", "Page size, 1..max_page_size (default 100).", _INT)
CURSOR = Param("cursor", "`next_cursor` of the previous page.")
SOURCE = Param(
    "source",
    "auto (default): rollups when they answer exactly, else raw events; events: always raw "
    "rows (exact visitors; days moved to day files are read from them); rollups: 400 when "
    "rollups cannot answer.",
    {"enum": ["auto", "rollups", "events"]},
)
RANGE_PARAMS = (PROJECT, FROM, TO, PERIOD, TIMEZONE, FILTER, INCLUDE_BOTS, LIMIT_VALUES)
REPORT_PARAMS = (*RANGE_PARAMS, SOURCE)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/api/v1/analytics/metrics",
        "KPIs over time",
        "Visitors, pageviews, sessions, bounce rate, average session duration, views per "
        "session, events and `event:<name>` counts, bucketed by `interval`, filtered and "
        "optionally broken down. `source` says whether rollups or raw events answered; "
        "`tier_reads` the raw path's rows and ms per storage tier. A raw answer needing "
        "archived days that are not restored is a 202 with a restore job (docs/tiering.md).",
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
            PERIOD,
            TIMEZONE,
            INTERVAL,
            METRICS_FILTER,
            Param(
                "breakdown",
                f"Dimension to break down by; `{EXIT_PAGE}` (the page a session ended on) with "
                "session metrics only.",
                {"enum": list(METRICS_DIMENSIONS)},
            ),
            INCLUDE_BOTS,
            Param("limit", "Most breakdown values returned, 1-1000 (default 100).", _INT),
            SOURCE,
            Param("cohort", "Cohort id the persons must be in; repeat for more.", repeatable=True),
            Param(
                "allow_partial",
                "Leave out days archived and not restored (listed in `missing`) instead of "
                "answering 202 with a restore job.",
                _BOOL,
            ),
            COMPARE,
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
            Param(
                "from",
                "Earliest event time (inclusive; a relative period's start); unbounded by default.",
            ),
            Param(
                "to",
                "Latest event time (exclusive; a date includes that day, a relative period's end).",
            ),
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
            Param("from", "Earliest event time (a date, datetime or relative period)."),
            Param("to", "Latest event time (exclusive; a relative period's end)."),
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

# The analyses (docs/analytics.md): JSON bodies in, JSON out. A request needing archived
# days not restored answers 202 with a restore job, unless its body has allow_partial=true:
# then the answer covers the readable days and `missing` lists the others.
_COHORT_ID = Param("cohort_id", "Cohort id.", where="path")
_METRIC_ID = Param("metric_id", "Metric definition id.", where="path")
_ANALYSIS_PARTIAL = (
    " Days archived and not restored: 202 with a restore job (docs/tiering.md), or with "
    "`allow_partial: true` the answer over the readable days and `missing` day ranges."
)
ANALYSIS_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/api/v1/analytics/funnels",
        "Funnel",
        "Persons reaching each of 2-20 steps (ordered, strict or unordered) within a conversion "
        "window, conversion and drop-off per step, median and average time between steps, an "
        "optional breakdown, and a page of the persons who converted or dropped at a step."
        + _ANALYSIS_PARTIAL,
        (PROJECT,),
        FunnelResponse,
        method="post",
        request=FunnelRequest,
    ),
    Endpoint(
        "/api/v1/analytics/retention",
        "Retention",
        "The cohort x period matrix: persons who did the start event in a period (every period, "
        "or their first-ever) and the return event k periods later." + _ANALYSIS_PARTIAL,
        (PROJECT,),
        RetentionResponse,
        method="post",
        request=RetentionRequest,
    ),
    Endpoint(
        "/api/v1/analytics/paths",
        "Paths",
        "Step-indexed paths of pageviews and/or custom events within sessions: nodes, the top "
        "edges by paths taking them, drop-offs; cleaning rules, start and end points."
        + _ANALYSIS_PARTIAL,
        (PROJECT,),
        PathsResponse,
        method="post",
        request=PathsRequest,
    ),
    Endpoint(
        "/api/v1/analytics/experiments/analyze",
        "Experiment results",
        "Per variant of an A/B test: exposures, conversions or mean of the goal after exposure, "
        "lift against control with 95% CIs, p-value (z-test or Welch), probability to be best, "
        "and a sample-ratio-mismatch check." + _ANALYSIS_PARTIAL,
        (PROJECT,),
        ExperimentResponse,
        method="post",
        request=ExperimentRequest,
    ),
    Endpoint(
        "/api/v1/analytics/cohorts",
        "Cohorts",
        "The latest version of every saved cohort.",
        (PROJECT,),
        CohortList,
    ),
    Endpoint(
        "/api/v1/analytics/cohorts",
        "Create a cohort",
        "Behavioural, first-seen, person-property or static (a list, or a funnel step's persons). "
        "Usable as a filter (`cohorts`) in every analysis and `cohort=` in the metrics endpoint.",
        (PROJECT,),
        CohortRecord,
        method="post",
        request=CohortBody,
        ok_status="201",
        conflict="A cohort with this id exists already (deleted ones keep their id).",
    ),
    Endpoint(
        "/api/v1/analytics/cohorts/{cohort_id}",
        "A cohort",
        "The latest version and every earlier one.",
        (PROJECT, _COHORT_ID),
        CohortDetail,
    ),
    Endpoint(
        "/api/v1/analytics/cohorts/{cohort_id}",
        "Update a cohort",
        "Saves the next version; analyses use the latest.",
        (PROJECT, _COHORT_ID),
        CohortRecord,
        method="put",
        request=CohortBody,
    ),
    Endpoint(
        "/api/v1/analytics/cohorts/{cohort_id}",
        "Delete a cohort",
        "Every version; analyses naming it answer 400 afterwards.",
        (PROJECT, _COHORT_ID),
        None,
        method="delete",
        ok_status="204",
    ),
    Endpoint(
        "/api/v1/analytics/cohorts/{cohort_id}/persons",
        "A cohort's persons",
        "The persons in the cohort now (latest version), by id.",
        (PROJECT, _COHORT_ID, PAGE_LIMIT, CURSOR),
        CohortPersons,
    ),
    Endpoint(
        "/api/v1/analytics/metric-definitions",
        "Custom metrics",
        "The latest version of every custom metric definition.",
        (PROJECT,),
        MetricDefinitionList,
    ),
    Endpoint(
        "/api/v1/analytics/metric-definitions",
        "Create a custom metric",
        "Count, unique persons, sum/avg/min/max/percentiles of a numeric property, or a ratio; "
        "usable as `metric:<id>` in the metrics endpoint and as an experiment goal.",
        (PROJECT,),
        SavedDefinition,
        method="post",
        request=MetricBody,
        ok_status="201",
        conflict="A metric with this id exists already (deleted ones keep their id).",
    ),
    Endpoint(
        "/api/v1/analytics/metric-definitions/{metric_id}",
        "A custom metric",
        "The latest version and every earlier one.",
        (PROJECT, _METRIC_ID),
        MetricDefinitionDetail,
    ),
    Endpoint(
        "/api/v1/analytics/metric-definitions/{metric_id}",
        "Update a custom metric",
        "Saves the next version.",
        (PROJECT, _METRIC_ID),
        SavedDefinition,
        method="put",
        request=MetricBody,
    ),
    Endpoint(
        "/api/v1/analytics/metric-definitions/{metric_id}",
        "Delete a custom metric",
        "Every version.",
        (PROJECT, _METRIC_ID),
        None,
        method="delete",
        ok_status="204",
    ),
)
ENDPOINTS = (*ENDPOINTS, *ANALYSIS_ENDPOINTS)

# Storage tiers (docs/tiering.md): what each tier holds, and restore jobs of archived days.
TIER_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/api/v1/tiers",
        "Storage tiers",
        "Per tier (hot, cold, archive): objects, rows, bytes, bytes per event, date range and "
        "a projected monthly cost at the configured per-GB-month prices; pending tier work.",
        (PROJECT,),
        TierSummary,
        tag="tiers",
    ),
    Endpoint(
        "/api/v1/tiers/restores/{restore_id}",
        "Restore job",
        "A restore of archived day files, started by a request that answered 202: restoring, "
        "restored (retry the request) or failed; restored copies expire at expires_at.",
        (PROJECT, Param("restore_id", "Restore job id.", where="path")),
        RestoreJob,
        tag="tiers",
    ),
)
ENDPOINTS = (*ENDPOINTS, *TIER_ENDPOINTS)

# GDPR erasure and access (docs/privacy.md, "Erasure and access (GDPR)"): admin keys only.
_ERASURE_ID = Param("request_id", "Erasure request id.", where="path")
PRIVACY_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/api/v1/privacy/erasure",
        "Erase a person",
        "Admin key. Removes the person's events (aliases resolved to every id), sessions, "
        "aliases and traits from PostgreSQL and hides them from day-file reads at once; the "
        "tiering service then rewrites the day files holding them and recomputes rollups.",
        (PROJECT,),
        ErasureStatus,
        tag="privacy",
        method="post",
        request=ErasureBody,
        ok_status="202",
    ),
    Endpoint(
        "/api/v1/privacy/erasure/{request_id}",
        "Erasure progress",
        "State (rewriting, recomputing, completed), files checked, rewritten and bytes.",
        (PROJECT, _ERASURE_ID),
        ErasureStatus,
        tag="privacy",
    ),
    Endpoint(
        "/api/v1/privacy/users/{user_id}/export",
        "Export a person's events",
        "Admin key. Every event of the person from every tier as NDJSON (chunked). Archived "
        "days not restored: 409, unless allow_partial=true (then listed in the "
        "X-Strata-Missing-Days header).",
        (
            PROJECT,
            Param("user_id", "User id or distinct id of the person.", where="path"),
            Param("allow_partial", "Skip archived days that are not restored.", _BOOL),
        ),
        None,
        content_type="application/x-ndjson",
        tag="privacy",
        conflict="Archived days hold the person's events and are not restored (and "
        "allow_partial is not set).",
    ),
)
ENDPOINTS = (*ENDPOINTS, *PRIVACY_ENDPOINTS)

# The dashboard (docs/dashboard.md): sign-in, saved work, members and keys, and the app's pages.
# Authenticated by the session cookie (with X-CSRF-Token on mutations) or a bearer key; the
# role each needs is in its description.
_PROJECT = Param("project", "The project (required with a session or an unbound admin key).")
_OBJECT = None  # a JSON object described in docs/dashboard.md
_JSON = "application/json"


def _dashboard(
    path: str,
    summary: str,
    description: str,
    method: str = "get",
    params: tuple[Param, ...] = (_PROJECT,),
    ok_status: str = "200",
    security: str = "dashboard",
    content_type: str = _JSON,
    request: type | None = None,
    errors: tuple[tuple[str, str], ...] = (),
    conflict: str | None = None,
) -> Endpoint:
    return Endpoint(
        path,
        summary,
        description,
        params,
        _OBJECT,
        content_type=content_type,
        tag="dashboard",
        method=method,
        ok_status=ok_status,
        authenticated=security != "none",
        security=security,
        request=request,
        errors=errors,
        conflict=conflict,
    )


def _id(name: str) -> Param:
    return Param(name, "Its id.", where="path")


DASHBOARD_ENDPOINTS: list[Endpoint] = [
    _dashboard(
        "/api/v1/auth/login",
        "Sign in",
        "Body {email, password}. Sets the session cookie; answers the user, their projects "
        "and roles and the CSRF token. 401 for a wrong pair, 429 (Retry-After) when throttled.",
        "post",
        (),
        security="none",
        request=LoginBody,
        errors=(
            ("401", "Wrong e-mail or password."),
            ("403", "A cross-site sign-in."),
            ("429", "Too many failed sign-ins; Retry-After says when to try again."),
        ),
    ),
    _dashboard("/api/v1/auth/logout", "Sign out", "Ends the session.", "post", (), "204"),
    _dashboard(
        "/api/v1/auth/me", "Who is signed in", "User, projects, roles, CSRF token.", params=()
    ),
    _dashboard(
        "/api/v1/auth/password",
        "Change one's password",
        "Body {current_password, new_password}; ends every other session.",
        "post",
        (),
        request=PasswordBody,
    ),
    _dashboard(
        "/api/v1/auth/invites/{token}",
        "An invitation",
        "The e-mail, project and role an invitation is for.",
        params=(_id("token"),),
        security="none",
        errors=(("404", "The invitation was used, has expired or does not exist."),),
    ),
    _dashboard(
        "/api/v1/auth/invites/accept",
        "Accept an invitation",
        "Body {token, password, name}: creates the account, makes it a member, signs it in.",
        "post",
        (),
        "201",
        security="none",
        request=AcceptInviteBody,
        errors=(
            ("403", "A cross-site request."),
            ("404", "The invitation was used, has expired or does not exist."),
        ),
        conflict="An account with the invitation's e-mail exists: sign in instead.",
    ),
    _dashboard("/api/v1/project", "Project settings", "Name, time zone, storage days, privacy."),
    _dashboard(
        "/api/v1/project",
        "Change project settings",
        "Admin. Name, time zone, privacy.",
        "put",
        request=ProjectBody,
    ),
    _dashboard(
        "/api/v1/project/status",
        "Data freshness",
        "Whether events arrived (first event's day), the newest event and its receipt time.",
    ),
    _dashboard("/api/v1/members", "Members", "Admin. Members and open invitations."),
    _dashboard(
        "/api/v1/members",
        "Add or invite a member",
        "Admin. Body {email, role}: an existing user is added, a new one gets an invite link.",
        "post",
        request=MemberBody,
    ),
    _dashboard(
        "/api/v1/members/{user_id}",
        "Change a member's role",
        "Admin. Body {role}; the last admin cannot be demoted (409).",
        "put",
        (_PROJECT, _id("user_id")),
        request=RoleBody,
        conflict="The last admin cannot be demoted.",
    ),
    _dashboard(
        "/api/v1/members/{user_id}",
        "Remove a member",
        "Admin. The last admin cannot be removed (409).",
        "delete",
        (_PROJECT, _id("user_id")),
        "204",
        conflict="The last admin cannot be removed.",
    ),
    _dashboard("/api/v1/keys", "API keys", "Admin. The project's keys, without secrets."),
    _dashboard(
        "/api/v1/keys",
        "Create an API key",
        "Admin. Body {role, name}; the secret once.",
        "post",
        ok_status="201",
        request=KeyBody,
    ),
    _dashboard(
        "/api/v1/keys/{key_id}",
        "Revoke an API key",
        "Admin.",
        "delete",
        (_PROJECT, _id("key_id")),
        "204",
    ),
]
_SAVED_BODIES: dict[str, type] = {"insight": InsightBody, "dashboard": DashboardBody}
for _plural, _noun in (("insights", "insight"), ("dashboards", "dashboard")):
    _item = (_PROJECT, _id(f"{_noun}_id"))
    DASHBOARD_ENDPOINTS += [
        _dashboard(
            f"/api/v1/{_plural}", f"Saved {_plural}", f"The latest version of each {_noun}."
        ),
        _dashboard(
            f"/api/v1/{_plural}",
            f"Save an {_noun}" if _noun == "insight" else f"Save a {_noun}",
            "Analyst. Body {id?, name, description, definition}: version 1.",
            "post",
            ok_status="201",
            request=_SAVED_BODIES[_noun],
        ),
        _dashboard(
            f"/api/v1/{_plural}/{{{_noun}_id}}", f"One {_noun}", "Latest and history.", params=_item
        ),
        _dashboard(
            f"/api/v1/{_plural}/{{{_noun}_id}}",
            f"Update a {_noun}",
            "Analyst. The next version.",
            "put",
            _item,
            request=_SAVED_BODIES[_noun],
        ),
        _dashboard(
            f"/api/v1/{_plural}/{{{_noun}_id}}",
            f"Delete a {_noun}",
            "Analyst. Every version.",
            "delete",
            _item,
            "204",
        ),
    ]
DASHBOARD_ENDPOINTS += [
    _dashboard(
        "/api/v1/annotations",
        "Annotations",
        "Notes on the time charts, optionally within from/to.",
        params=(_PROJECT, FROM, TO, TIMEZONE),
    ),
    _dashboard(
        "/api/v1/annotations",
        "Add an annotation",
        "Analyst. Body {at, text}.",
        "post",
        ok_status="201",
        request=AnnotationBody,
    ),
    _dashboard(
        "/api/v1/annotations/{annotation_id}",
        "Delete an annotation",
        "Analyst.",
        "delete",
        (_PROJECT, _id("annotation_id")),
        "204",
    ),
    _dashboard(
        "/api/v1/dashboards/{dashboard_id}/shares",
        "Share links",
        "Analyst. The live links.",
        params=(_PROJECT, _id("dashboard_id")),
    ),
    _dashboard(
        "/api/v1/dashboards/{dashboard_id}/shares",
        "Share a dashboard",
        "Analyst. A new read-only link (/share/<token>).",
        "post",
        (_PROJECT, _id("dashboard_id")),
        "201",
    ),
    _dashboard(
        "/api/v1/shares/{token}",
        "Revoke a share link",
        "Analyst.",
        "delete",
        (_PROJECT, _id("token")),
        "204",
    ),
    _dashboard(
        "/api/v1/shared/{token}",
        "A shared dashboard",
        "No sign-in: the dashboard and its insights. Their data is asked for with the "
        "X-Strata-Share header, which allows exactly these insights' queries.",
        params=(_id("token"),),
        security="none",
        errors=(("404", "The share link was revoked or does not exist."),),
    ),
]
for _page in ("/", "/login", "/account", "/p/{tail}", "/share/{token}", "/invite/{token}"):
    DASHBOARD_ENDPOINTS.append(
        _dashboard(
            _page,
            "Dashboard page",
            "The dashboard's single-page app (HTML).",
            params=tuple(
                Param(n, "Part of the page's address.", where="path")
                for n in ("tail", "token")
                if "{" + n + "}" in _page
            ),
            security="none",
            content_type="text/html",
        )
    )
DASHBOARD_ENDPOINTS.append(
    _dashboard(
        "/ui/{name}",
        "Dashboard asset",
        "A script or stylesheet of the app; `?v=<hash>` makes it cacheable for a year.",
        params=(Param("name", "The file.", where="path"),),
        security="none",
        content_type="application/octet-stream",
        errors=(("404", "No such asset."),),
    )
)
ENDPOINTS = (*ENDPOINTS, *DASHBOARD_ENDPOINTS)

_ERRORS = {
    "400": "A parameter is malformed or out of range; `param` names it.",
    "401": "Missing, unknown or revoked key.",
    "403": "A write key, or another project's key.",
    "404": "Unknown session, person or project.",
}


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document for ENDPOINTS."""
    structs = [e.response for e in ENDPOINTS if e.response is not None] + [ErrorResponse]
    structs += [e.request for e in ENDPOINTS if e.request is not None and e.request not in structs]
    refs, components = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    ref_of = dict(zip(structs, refs, strict=True))
    error_ref = ref_of[ErrorResponse]
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        if endpoint.response is None:
            shape = {"type": "object"} if endpoint.content_type == _JSON else {"type": "string"}
            ok_content: dict[str, Any] = {endpoint.content_type: {"schema": shape}}
        elif endpoint.content_type == "text/event-stream":
            # Each event of the stream: its `data` is the response Struct as JSON.
            event = {
                "type": "object",
                "properties": {
                    "event": {"type": "string"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": ref_of[endpoint.response],
                    },
                },
                "required": ["data"],
            }
            ok_content = {endpoint.content_type: {"schema": event}}
        else:
            ok_content = {endpoint.content_type: {"schema": ref_of[endpoint.response]}}
        ok: dict[str, Any] = {"description": "OK"}
        if endpoint.ok_status != "204":
            ok["content"] = ok_content
        responses: dict[str, Any] = {endpoint.ok_status: ok}
        errors = dict(_ERRORS) if endpoint.authenticated else {}
        if endpoint.request is not None:
            errors["400"] = "The body is not valid JSON of the documented shape; it says why."
            errors["413"] = "The body is too large."
            errors["415"] = "The body is not sent as Content-Type: application/json."
        if endpoint.conflict is not None:
            errors["409"] = endpoint.conflict
        errors.update(endpoint.errors)
        for status, text in sorted(errors.items()):
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
        if not endpoint.authenticated:
            operation["security"] = []
        elif endpoint.security == "dashboard":
            operation["security"] = [{"session": []}, {"bearer": []}]
        else:
            operation["security"] = [{"bearer": []}]
        if endpoint.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref_of[endpoint.request]}},
            }
        paths.setdefault(endpoint.path, {})[endpoint.method] = operation
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
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "strata_session",
                    "description": "A dashboard session (POST /api/v1/auth/login); mutations "
                    "also send its CSRF token in X-CSRF-Token.",
                },
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
