"""JSON Schema documentation of the wire types, generated from the msgspec Structs so it can
never drift from what the services actually encode and decode.

Every versioned module in this package (`events_v1`, later `events_v2`, ...) is included, and
every Struct defined in it, so a type added to a module is documented without touching this file.

    python -m libs.common.schemas.jsonschema docs/schemas
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

import libs.common.schemas as schemas_package

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# A wire module's name ends in its version: events_v1, events_v2, ...
_VERSIONED_MODULE = re.compile(r"_v\d+$")
_REF_TEMPLATE = "#/$defs/{name}"


def wire_modules() -> list[ModuleType]:
    """The versioned wire-type modules of libs.common.schemas, by name."""
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(schemas_package.__path__)
        if _VERSIONED_MODULE.search(info.name)
    )
    return [importlib.import_module(f"{schemas_package.__name__}.{name}") for name in names]


def wire_structs(modules: list[ModuleType] | None = None) -> list[type[msgspec.Struct]]:
    """Every msgspec Struct defined (not merely imported) in the wire modules."""
    found: list[type[msgspec.Struct]] = []
    for module in wire_modules() if modules is None else modules:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, msgspec.Struct)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


def _clean_descriptions(node: Any) -> Any:
    """Docstring-derived descriptions with their indentation removed (`inspect.cleandoc`), so the
    files do not depend on whether the msgspec release at hand dedents docstrings itself."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _clean_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list | tuple):
        return type(node)(_clean_descriptions(item) for item in node)
    return node


def json_schemas(structs: list[type[msgspec.Struct]] | None = None) -> dict[str, dict[str, Any]]:
    """One JSON Schema document per Struct, keyed by file name (`EventV1.json`)."""
    documents: dict[str, dict[str, Any]] = {}
    for struct in wire_structs() if structs is None else structs:
        file_name = f"{struct.__name__}.json"
        if file_name in documents:
            raise ValueError(f"two wire types are named {struct.__name__}; names must be unique")
        (root,), components = _clean_descriptions(
            msgspec.json.schema_components([struct], ref_template=_REF_TEMPLATE)
        )
        documents[file_name] = {
            "$schema": JSON_SCHEMA_DIALECT,
            "$comment": (
                f"Generated from {struct.__module__}.{struct.__qualname__} by "
                "`python -m libs.common.schemas.jsonschema docs/schemas`; do not edit by hand."
            ),
            "title": struct.__name__,
            **root,
            "$defs": components,
        }
    return dict(sorted(documents.items()))


def render(document: dict[str, Any]) -> str:
    """The committed text of a schema document (stable, so regenerating changes nothing)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema document into `directory`, removing documents of types that are gone."""
    directory.mkdir(parents=True, exist_ok=True)
    documents = json_schemas()
    for stale in directory.glob("*.json"):
        if stale.name not in documents:
            stale.unlink()
    written = []
    for file_name, document in documents.items():
        path = directory / file_name
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """`python -m libs.common.schemas.jsonschema [directory]` (default docs/schemas)."""
    directory = Path(argv[1]) if len(argv) > 1 else Path("docs/schemas")
    for path in write_schemas(directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
