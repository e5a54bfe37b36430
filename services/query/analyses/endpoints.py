"""The analyses' route table (docs/analytics.md): each analysis is a runner in its own module
(funnel_runner.py, retention_runner.py, paths_runner.py, experiment_runner.py) served through
runner.py's protocol, and the saved cohorts and metric definitions are CRUD APIs of their own."""

from __future__ import annotations

from aiohttp import web

from services.query.analyses import cohorts_api, metric_definitions_api
from services.query.analyses.experiment_runner import ExperimentRunner
from services.query.analyses.funnel_runner import FunnelRunner
from services.query.analyses.paths_runner import PathsRunner
from services.query.analyses.retention_runner import RetentionRunner
from services.query.analyses.runner import analysis_handler

API = "/api/v1/analytics"

post_funnels = analysis_handler(FunnelRunner())
post_retention = analysis_handler(RetentionRunner())
post_paths = analysis_handler(PathsRunner())
post_experiment = analysis_handler(ExperimentRunner())


def add_analysis_routes(app: web.Application) -> None:
    """Register the analyses' routes on the query app."""
    r = app.router
    r.add_post(f"{API}/funnels", post_funnels)
    r.add_post(f"{API}/retention", post_retention)
    r.add_post(f"{API}/paths", post_paths)
    r.add_post(f"{API}/experiments/analyze", post_experiment)
    r.add_get(f"{API}/cohorts", cohorts_api.get_cohorts)
    r.add_post(f"{API}/cohorts", cohorts_api.post_cohort)
    r.add_get(f"{API}/cohorts/{{cohort_id}}", cohorts_api.get_cohort)
    r.add_put(f"{API}/cohorts/{{cohort_id}}", cohorts_api.put_cohort)
    r.add_delete(f"{API}/cohorts/{{cohort_id}}", cohorts_api.delete_cohort)
    r.add_get(f"{API}/cohorts/{{cohort_id}}/persons", cohorts_api.get_cohort_persons)
    r.add_get(f"{API}/metric-definitions", metric_definitions_api.get_metric_definitions)
    r.add_post(f"{API}/metric-definitions", metric_definitions_api.post_metric_definition)
    r.add_get(
        f"{API}/metric-definitions/{{metric_id}}", metric_definitions_api.get_metric_definition
    )
    r.add_put(
        f"{API}/metric-definitions/{{metric_id}}", metric_definitions_api.put_metric_definition
    )
    r.add_delete(
        f"{API}/metric-definitions/{{metric_id}}", metric_definitions_api.delete_metric_definition
    )
