"""The Kubernetes base in deploy/k8s: rendered with the real `kubectl kustomize` (no cluster),
validated strictly against the Kubernetes API schemas offline, and checked for what an operator
relies on: every service runs with probes on the ports it listens on, the sessionizer owns its
partitions by ordinal, ingest and query autoscale, and every variable set is a real setting."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import msgspec
import pytest
import yaml

from libs.common import settings

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "deploy" / "k8s"
NAMESPACE = "strata"
# A release every current managed Kubernetes offers; the schemas ship with kubernetes-validate.
KUBERNETES_VERSION = "1.32.0"

Manifest = dict[str, Any]

# What each Strata container runs, the Settings it reads, and the port its probes must hit.
SERVICES: dict[str, tuple[str, type[settings.CommonSettings], str, int]] = {
    "ingest": ("Deployment", settings.IngestSettings, "ingest_port", 8080),
    "query": ("Deployment", settings.QuerySettings, "query_port", 8081),
    "sessionizer": ("StatefulSet", settings.SessionizerSettings, "health_port", 8082),
    "aggregator": ("Deployment", settings.AggregatorSettings, "health_port", 8083),
    "tiering": ("Deployment", settings.TieringSettings, "health_port", 8084),
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Stands in for a value the kubelet fills in (downward API) when checking settings parse.
DOWNWARD_API = "<downward-api>"


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    kubectl = Path(sys.executable).parent / "kubectl"
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(KUSTOMIZE_DIR)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(manifests: list[Manifest]) -> Iterator[Manifest]:
    for m in manifests:
        if m["kind"] in WORKLOAD_KINDS:
            yield m


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def strata_service_of(container: dict[str, Any]) -> str | None:
    """'ingest' for `python -m services.ingest`, 'migrate' for `strata migrate`, else None."""
    command = container.get("command", [])
    if command[:2] == ["python", "-m"] and len(command) == 3:
        module = command[2]
        return module.removeprefix("services.") if module.startswith("services.") else None
    if command == ["strata", "migrate"]:
        return "migrate"
    return None


def strata_containers(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for workload in workloads(manifests):
        for container in pod_spec(workload)["containers"]:
            if strata_service_of(container) is not None:
                yield workload, container


def service_workload(manifests: list[Manifest], service: str) -> tuple[Manifest, dict[str, Any]]:
    found = [(w, c) for w, c in strata_containers(manifests) if strata_service_of(c) == service]
    assert len(found) == 1, f"expected one workload running services.{service}, found {found}"
    return found[0]


def container_env(manifests: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with: envFrom sources, then env entries on top."""
    config_maps = {m["metadata"]["name"]: m for m in of_kind(manifests, "ConfigMap")}
    secrets = {m["metadata"]["name"]: m for m in of_kind(manifests, "Secret")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in config_maps, f"envFrom names a missing ConfigMap {name}"
            env.update(config_maps[name].get("data", {}))
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            assert name in secrets, f"envFrom names a missing Secret {name}"
            secret = secrets[name]
            env.update(secret.get("stringData", {}))
            env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else DOWNWARD_API
    return env


def settings_of(service: str) -> type[settings.CommonSettings]:
    # The `strata` CLI (the migration Job) reads StackSettings for every command.
    return settings.StackSettings if service == "migrate" else SERVICES[service][1]


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"probe names port {port!r}, which the container does not declare"
    return int(numbers[0])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_document_is_valid_kubernetes_strictly(manifests: list[Manifest]) -> None:
    failures = []
    for m in manifests:
        try:
            kubernetes_validate.validate(m, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{m['kind']}/{m['metadata']['name']}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{m['kind']}/{m['metadata']['name']}: {exc.message}")
    assert failures == []
    kinds = {m["kind"] for m in manifests}
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "StatefulSet",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds


def test_everything_lives_in_the_strata_namespace(manifests: list[Manifest]) -> None:
    named(manifests, "Namespace", NAMESPACE)
    outside = [
        f"{m['kind']}/{m['metadata']['name']}"
        for m in manifests
        if m["kind"] != "Namespace" and m["metadata"].get("namespace") != NAMESPACE
    ]
    assert outside == []


def test_every_object_carries_the_recommended_labels(manifests: list[Manifest]) -> None:
    for m in manifests:
        labels = m["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "strata", m["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", m["metadata"]["name"]
    for workload in workloads(manifests):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert "app.kubernetes.io/name" in pod_labels, workload["metadata"]["name"]
        assert "app.kubernetes.io/component" in pod_labels, workload["metadata"]["name"]
        assert pod_labels.get("app.kubernetes.io/part-of") == "strata"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_runs_with_probes_on_the_port_it_listens_on(
    manifests: list[Manifest], service: str
) -> None:
    kind, settings_cls, port_field, expected_port = SERVICES[service]
    workload, container = service_workload(manifests, service)
    assert workload["kind"] == kind
    configured = settings.from_env(settings_cls, container_env(manifests, container))
    listen_port = getattr(configured, port_field)
    assert listen_port == expected_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(container, container["livenessProbe"]) == listen_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probe_port(container, container["readinessProbe"]) == listen_port
    if "startupProbe" in container:
        assert probe_port(container, container["startupProbe"]) == listen_port


def test_sessionizer_owns_partitions_by_statefulset_ordinal(manifests: list[Manifest]) -> None:
    workload, container = service_workload(manifests, "sessionizer")
    # settings.py derives the ordinal from pod names strata-sessionizer-<n>.
    assert workload["kind"] == "StatefulSet"
    assert workload["metadata"]["name"] == "strata-sessionizer"
    env = {var["name"]: var for var in container["env"]}
    assert env["STRATA_REPLICAS"]["value"] == str(workload["spec"]["replicas"])
    assert env["STRATA_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # No explicit ordinal, which would make every pod claim the same partitions.
    assert "STRATA_ORDINAL" not in container_env(manifests, container)
    configured = settings.from_env(
        settings.SessionizerSettings,
        {**container_env(manifests, container), "STRATA_POD_NAME": "strata-sessionizer-1"},
    )
    assert configured.replicas == workload["spec"]["replicas"]
    assert configured.replicas <= configured.partitions, "some sessionizer pods would idle"
    governing = named(manifests, "Service", workload["spec"]["serviceName"])
    assert governing["spec"].get("clusterIP") == "None"
    assert selects(
        governing["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"]
    )


def test_scaling_the_sessionizer_with_kustomize_updates_strata_replicas(tmp_path: Path) -> None:
    """Scaling through kustomize's `replicas` field keeps STRATA_REPLICAS in step, so no
    partition is left without an owner."""
    base = tmp_path / "k8s"
    shutil.copytree(KUSTOMIZE_DIR, base)
    kustomization = base / "kustomization.yaml"
    scaled = "replicas:\n  - name: strata-sessionizer\n    count: 4\n"
    kustomization.write_text(kustomization.read_text() + scaled)
    kubectl = Path(sys.executable).parent / "kubectl"
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(base)], check=True, capture_output=True, text=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    workload = named(docs, "StatefulSet", "strata-sessionizer")
    env = {var["name"]: var for var in pod_spec(workload)["containers"][0]["env"]}
    assert workload["spec"]["replicas"] == 4
    assert env["STRATA_REPLICAS"]["value"] == "4"


@pytest.mark.parametrize("service", ["ingest", "query"])
def test_ingest_and_query_autoscale_behind_their_services(
    manifests: list[Manifest], service: str
) -> None:
    workload, container = service_workload(manifests, service)
    name = workload["metadata"]["name"]
    hpas = [
        h
        for h in of_kind(manifests, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]
        == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    ]
    assert len(hpas) == 1
    assert hpas[0]["apiVersion"] == "autoscaling/v2"
    assert 2 <= hpas[0]["spec"]["minReplicas"] < hpas[0]["spec"]["maxReplicas"]
    # The HPA owns the replica count; a fixed one would be reset by every `kubectl apply`.
    assert "replicas" not in workload["spec"]
    # CPU utilization targets are relative to requests.
    assert "cpu" in container["resources"]["requests"]
    port = SERVICES[service][3]
    routed = [
        s
        for s in of_kind(manifests, "Service")
        if selects(
            s["spec"].get("selector", {}), workload["spec"]["template"]["metadata"]["labels"]
        )
        and any(p["port"] == port for p in s["spec"]["ports"])
    ]
    assert [s["metadata"]["name"] for s in routed] == [name]
    service_port = next(p for p in routed[0]["spec"]["ports"] if p["port"] == port)
    target = service_port["targetPort"]
    assert target == port or any(
        p["name"] == target and p["containerPort"] == port for p in container["ports"]
    )


def test_every_variable_set_is_a_setting_of_the_service_that_reads_it(
    manifests: list[Manifest],
) -> None:
    for workload, container in strata_containers(manifests):
        service = strata_service_of(container)
        assert service is not None
        settings_cls = settings_of(service)
        known = {settings.env_name(f.name) for f in msgspec.structs.fields(settings_cls)}
        env = container_env(manifests, container)
        unknown = sorted(set(env) - known)
        assert unknown == [], f"{workload['metadata']['name']} sets unknown variables {unknown}"
        # Without these a pod would fall back to localhost defaults and never become ready.
        assert {"DATABASE_URL", "NATS_URL"} <= set(env), workload["metadata"]["name"]
        parseable = {
            k: ("strata-sessionizer-0" if v == DOWNWARD_API else v) for k, v in env.items()
        }
        settings.from_env(settings_cls, parseable)


def test_nats_url_reaches_a_jetstream_server(manifests: list[Manifest]) -> None:
    _, container = service_workload(manifests, "ingest")
    url = urlsplit(container_env(manifests, container)["NATS_URL"])
    service = named(manifests, "Service", (url.hostname or "").split(".")[0])
    assert any(p["port"] == (url.port or 4222) for p in service["spec"]["ports"])
    nats = [
        s
        for s in of_kind(manifests, "StatefulSet")
        if selects(service["spec"]["selector"], s["spec"]["template"]["metadata"]["labels"])
    ]
    assert len(nats) == 1
    container = pod_spec(nats[0])["containers"][0]
    assert container["image"].split(":")[0] == "nats"
    mounted = {v["name"]: v for v in pod_spec(nats[0])["volumes"]}
    config_volume = next(
        mounted[m["name"]] for m in container["volumeMounts"] if m["mountPath"] == "/etc/nats"
    )
    config = named(manifests, "ConfigMap", config_volume["configMap"]["name"])["data"]["nats.conf"]
    assert re.search(r"^jetstream\s*\{", config, re.MULTILINE)
    store_dir = re.search(r"store_dir:\s*(\S+)", config)
    assert store_dir is not None
    claims = {c["metadata"]["name"] for c in nats[0]["spec"]["volumeClaimTemplates"]}
    persisted = [
        m
        for m in container["volumeMounts"]
        if m["name"] in claims and store_dir.group(1).startswith(m["mountPath"])
    ]
    assert persisted, "the JetStream store must live on the PersistentVolumeClaim"


def test_nats_is_a_three_server_cluster_with_r3_streams(manifests: list[Manifest]) -> None:
    [nats] = [
        s for s in of_kind(manifests, "StatefulSet") if s["metadata"]["name"] == "strata-nats"
    ]
    servers = nats["spec"]["replicas"]
    assert servers == 3
    container = pod_spec(nats)["containers"][0]
    config_map = next(
        v["configMap"]["name"] for v in pod_spec(nats)["volumes"] if v["name"] == "config"
    )
    config = named(manifests, "ConfigMap", config_map)["data"]["nats.conf"]
    cluster = re.search(r"^cluster\s*\{(?P<body>.*?)^\}", config, re.MULTILINE | re.DOTALL)
    assert cluster is not None, "nats.conf needs a cluster block"
    listen = re.search(r"listen:\s*\S+:(\d+)", cluster.group("body"))
    assert listen is not None
    route_port = int(listen.group(1))
    # Every server is routed to by its stable name under the headless Service, on a port the
    # container and that Service expose.
    headless = named(manifests, "Service", nats["spec"]["serviceName"])
    routes = set(re.findall(r"nats://([\w.-]+):(\d+)", cluster.group("body")))
    assert routes == {
        (f"strata-nats-{i}.{headless['metadata']['name']}", str(route_port)) for i in range(servers)
    }
    assert route_port in {p["containerPort"] for p in container["ports"]}
    assert route_port in {p["port"] for p in headless["spec"]["ports"]}
    # The services replicate every stream on all three servers; a drain takes one at a time.
    _, ingest = service_workload(manifests, "ingest")
    assert container_env(manifests, ingest)["STRATA_STREAM_REPLICAS"] == str(servers)
    [budget] = [
        b
        for b in of_kind(manifests, "PodDisruptionBudget")
        if selects(
            b["spec"]["selector"]["matchLabels"], nats["spec"]["template"]["metadata"]["labels"]
        )
    ]
    assert budget["spec"]["maxUnavailable"] == 1


def test_migration_job_runs_the_strata_cli_against_the_database(
    manifests: list[Manifest],
) -> None:
    job, container = service_workload(manifests, "migrate")
    assert job["kind"] == "Job"
    assert "DATABASE_URL" in container_env(manifests, container)
    # The image has no wheel of the project: its Dockerfile puts a `strata` launcher of the
    # operator CLI on the PATH.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "/opt/strata/venv/bin/strata" in dockerfile
    assert "from strata_cli.main import main" in dockerfile


def test_one_strata_image_at_the_project_version(manifests: list[Manifest]) -> None:
    images = {c["image"] for _, c in strata_containers(manifests)}
    assert len(images) == 1, images
    (image,) = images
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image.rsplit(":", 1)[1] == version
    others = {
        c["image"]
        for w in workloads(manifests)
        for c in pod_spec(w)["containers"]
        if strata_service_of(c) is None
    }
    for other in others:
        assert ":" in other and not other.endswith(":latest"), other


def test_every_container_is_bounded_and_unprivileged(manifests: list[Manifest]) -> None:
    for workload in workloads(manifests):
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        for container in spec["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            security = {**pod_security, **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"].get(bound, {})), where


def test_strata_pods_run_as_the_image_user(manifests: list[Manifest]) -> None:
    user = re.search(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None, "the Dockerfile must name a numeric non-root USER"
    assert int(user.group(1)) != 0
    for workload, _ in strata_containers(manifests):
        assert pod_spec(workload)["securityContext"]["runAsUser"] == int(user.group(1))


def test_every_long_running_workload_has_a_disruption_budget(manifests: list[Manifest]) -> None:
    budgets = of_kind(manifests, "PodDisruptionBudget")
    for workload in workloads(manifests):
        if workload["kind"] == "Job":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(covering) == 1, workload["metadata"]["name"]
