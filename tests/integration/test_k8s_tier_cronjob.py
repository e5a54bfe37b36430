"""The Kubernetes CronJob alternative for the tier jobs: it runs `strata tier run` with jobs
the CLI accepts, its environment parses as the tiering and CLI settings, it never overlaps
itself, and it is suspended until an operator switches to it."""

from __future__ import annotations

import pytest

from libs.common import settings
from services.tiering.tier_jobs import parse_tier_jobs
from tests.integration.test_k8s_manifests import Manifest, container_env, manifests, named

__all__ = ["manifests"]  # the rendered manifests fixture


def test_tier_cronjob_runs_the_tier_jobs_with_the_tiering_settings(
    manifests: list[Manifest],
) -> None:
    cron = named(manifests, "CronJob", "strata-tier-jobs")
    assert cron["spec"]["suspend"] is True
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "strata"
    (container,) = pod["spec"]["containers"]
    command = container["command"]
    assert command[:4] == ["strata", "tier", "run", "--job"]
    assert "export" not in parse_tier_jobs(command[4])
    env = container_env(manifests, container)
    assert "DATABASE_URL" in env
    tiering = settings.from_env(settings.TieringSettings, env)
    stack = settings.from_env(settings.StackSettings, env)
    assert tiering.data_dir == stack.data_dir == "/var/lib/strata"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert tiering.data_dir in mounts
    with pytest.raises(ValueError):
        parse_tier_jobs("cold,compact")
