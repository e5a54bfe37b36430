"""The code's habits, checked so they stay (docs/architecture.md, "Errors, logs and metrics"):
every exception Strata defines derives from StrataError with its own code; log event names are
snake_case with errors in one `error=` field; Prometheus metrics are defined only in each
service's metrics registry module; no issue-tracker numbers in code or comments."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.errors import StrataError, error_codes

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("libs", "services", "strata_cli", "strata_dev")
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical"}


def _modules() -> Iterator[str]:
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                yield info.name


def _sources(*roots: str) -> Iterator[Path]:
    for root in roots:
        yield from sorted((ROOT / root).rglob("*.py"))


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in Strata's packages (importing them all)."""
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and value is not StrataError
            ):
                found.append(value)
    return found


def test_every_exception_class_is_a_strata_error_with_its_own_code() -> None:
    found = _exception_classes()
    assert len(found) > 30  # the walk found the services' errors
    not_strata = [
        f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, StrataError)
    ]
    assert not_strata == []
    codes = [c.code for c in found if issubclass(c, StrataError)]
    assert len(set(codes)) == len(codes)
    assert all(_SNAKE.match(code) for code in codes)
    assert set(codes) <= set(error_codes())


def test_every_error_code_is_documented() -> None:
    documented = (ROOT / "docs" / "architecture.md").read_text()
    codes = [c.code for c in _exception_classes() if issubclass(c, StrataError)]
    missing = [code for code in codes if f"| `{code}` |" not in documented]
    assert missing == []


def test_a_subclass_without_its_own_code_or_with_a_taken_one_is_refused() -> None:
    with pytest.raises(TypeError, match="must declare its own `code`"):
        type("NoCode", (StrataError,), {})
    with pytest.raises(TypeError, match="poison_message"):
        type("Copycat", (StrataError,), {"code": "poison_message"})


def _log_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _LOG_METHODS
            and "log" in ast.unparse(node.func.value).lower()
            and node.args
        ):
            yield node


def test_log_event_names_are_snake_case_and_errors_go_in_one_error_field() -> None:
    problems = []
    for path in _sources(*PACKAGES):
        for call in _log_calls(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            event = call.args[0]
            if not (isinstance(event, ast.Constant) and isinstance(event.value, str)):
                problems.append(f"{where}: event name is not a literal")
            elif not _SNAKE.match(event.value):
                problems.append(f"{where}: {event.value!r} is not snake_case")
            for keyword in call.keywords:
                if keyword.arg in {"reason", "exc", "err", "exception"}:
                    problems.append(f"{where}: {keyword.arg}= (log an error as error=)")
                elif keyword.value is not None and "repr(" in ast.unparse(keyword.value):
                    problems.append(f"{where}: repr() in a log field (use error_text)")
    assert problems == []


def test_metrics_are_defined_only_in_each_services_metrics_registry() -> None:
    constructors = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
    # services/query/metrics.py is the KPI endpoint, so the query service's registry has its own
    # name.
    registries = set(ROOT.glob("services/*/metrics.py")) - {ROOT / "services/query/metrics.py"}
    registries.add(ROOT / "services/query/service_metrics.py")
    defined = []
    for path in _sources(*PACKAGES):
        tree = ast.parse(path.read_text())
        imported = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client"
            for alias in node.names
            if alias.name in constructors
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in imported and path not in registries:
                    defined.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert defined == []


def test_no_issue_numbers_in_code_or_comments() -> None:
    issue = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _sources(*PACKAGES, "bench", "tests")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if issue.search(line) and path != Path(__file__)
    ]
    assert found == []
