"""docs/configuration.md is the operators' reference: every field of every settings Struct must be
in it, in the table of the service that reads it, with its current default and type, so a
setting added or changed in libs/common/settings.py without its documentation fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from libs.common import settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean"}
# A section heading names its Struct in backticks: "## ingest (`IngestSettings`)".
_SECTION = re.compile(r"^#+ .*`(\w+Settings)`", re.MULTILINE)
_ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|([^|]*)\|(.+)\|\s*$", re.MULTILINE)


class DocumentedVariable(msgspec.Struct, frozen=True):
    type: str
    default: str
    meaning: str


def settings_structs() -> list[type[msgspec.Struct]]:
    """Every settings Struct in settings.py, including ones added after this test was written."""
    return [
        value
        for value in vars(settings).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == settings.__name__
        and value.__name__.endswith("Settings")
    ]


def documented_sections() -> dict[str, dict[str, DocumentedVariable]]:
    """Struct name -> {variable -> its row} from the tables of docs/configuration.md."""
    text = CONFIGURATION_DOC.read_text()
    headings = list(_SECTION.finditer(text))
    sections: dict[str, dict[str, DocumentedVariable]] = {}
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        rows = _ROW.findall(text, heading.end(), end)
        sections[heading.group(1)] = {
            name: DocumentedVariable(
                type=type_.strip(), default=default.strip().strip("`"), meaning=meaning.strip()
            )
            for name, type_, default, meaning in rows
        }
    return sections


def rendered_default(value: Any) -> str:
    """A default as the documentation writes it (the value you would set the variable to)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value == "":
        return "(empty)"
    return str(value)


def where_documented(struct: type[msgspec.Struct], field: msgspec.structs.FieldInfo) -> str:
    """A field inherited unchanged from CommonSettings is documented once, in its table."""
    common = {f.name: f for f in msgspec.structs.fields(settings.CommonSettings)}
    if field.name in common and common[field.name].default == field.default:
        return settings.CommonSettings.__name__
    return struct.__name__


def test_settings_structs_are_found() -> None:
    names = {s.__name__ for s in settings_structs()}
    assert {
        "CommonSettings",
        "IngestSettings",
        "SessionizerSettings",
        "AggregatorSettings",
        "QuerySettings",
        "TieringSettings",
        "StackSettings",
    } <= names


@pytest.mark.parametrize("struct", settings_structs(), ids=lambda s: s.__name__)
def test_every_field_is_documented_with_its_default_and_type(
    struct: type[msgspec.Struct],
) -> None:
    sections = documented_sections()
    problems = []
    for field in msgspec.structs.fields(struct):
        section = where_documented(struct, field)
        variable = settings.env_name(field.name)
        row = sections.get(section, {}).get(variable)
        if row is None:
            problems.append(f"{variable} is missing from the `{section}` table")
            continue
        if row.default != rendered_default(field.default):
            problems.append(
                f"{variable} ({section}): documented default {row.default!r}, "
                f"actual {rendered_default(field.default)!r}"
            )
        if row.type != TYPE_NAMES.get(field.type, str(field.type)):
            problems.append(f"{variable} ({section}): documented type {row.type!r}")
        if len(row.meaning) < 10:
            problems.append(f"{variable} ({section}): say what it means")
    assert problems == []


def test_no_documented_variable_is_stale() -> None:
    """A variable in a service's table that the service no longer reads misleads operators."""
    structs = {s.__name__: s for s in settings_structs()}
    sections = documented_sections()
    assert set(sections) <= set(structs), "a table names a settings type that does not exist"
    for section, rows in sections.items():
        known = {settings.env_name(f.name) for f in msgspec.structs.fields(structs[section])}
        assert set(rows) <= known, f"`{section}` documents {sorted(set(rows) - known)}"


def test_documented_defaults_parse_as_the_settings_read_them() -> None:
    """Setting a variable to its documented default changes nothing."""
    sections = documented_sections()
    structs = {s.__name__: s for s in settings_structs()}
    for section, rows in sections.items():
        env = {name: row.default for name, row in rows.items() if row.default != "(empty)"}
        assert settings.from_env(structs[section], env) == settings.from_env(structs[section], {})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STRATA_LOG_FORMAT", "xml"),
        ("STRATA_LOG_LEVEL", "loud"),
        ("STRATA_OTEL_EXPORTER", "zipkin"),
    ],
)
def test_a_value_outside_a_settings_choices_stops_the_service(variable: str, value: str) -> None:
    for cls in settings_structs():
        with pytest.raises(settings.SettingsError, match=f"{variable}='{value}' is not one of"):
            settings.from_env(cls, {variable: value})
    assert settings.from_env(settings.IngestSettings, {"STRATA_LOG_LEVEL": "WARNING"})
