"""The column registry (libs/common/model) agrees with the wire schema (`EventV1`) and with the
column lists derived from it: the writer's, the day files', the scan's, the metric SQL's, the
conditions' and the rollups' dimensions."""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Any

import msgspec

from libs.common.day_files.layout import EVENT_FILE_SCHEMA
from libs.common.model.columns import (
    DERIVED_EVENT_COLUMNS,
    EVENT_COLUMNS,
    EVENTS,
    FILTERABLE_EVENT_COLUMNS,
    SESSIONS,
    STORED_EVENT_COLUMNS,
)
from libs.common.rollup_keys import EVENT_DIMENSIONS, SESSION_DIMENSIONS
from libs.common.schemas.events_v1 import EventV1
from services.aggregator.writer import EVENT_COLUMNS as WRITER_COLUMNS
from services.query.analyses.conditions import EVENT_COLUMNS as CONDITION_COLUMNS
from services.query.metrics_from_events import METRIC_EVENT_COLUMNS
from services.query.scan_engine import KEYED_SCAN_COLUMNS, SCAN_COLUMNS

# EventV1 fields the aggregator keeps elsewhere than in `events`: aliases (previous_id) and
# person traits in their own tables, the group id and the IP address nowhere in the hot store.
_NOT_EVENT_COLUMNS = {"previous_id", "group_id", "traits", "ip"}
_PYTHON_TYPES: dict[str, Any] = {
    "text": str,
    "timestamptz": datetime,
    "boolean": bool,
    "jsonb": dict[str, Any],
}


def test_every_stored_event_column_is_an_event_v1_field_of_the_same_type() -> None:
    fields = {f.name: f for f in msgspec.structs.fields(EventV1)}
    hints = typing.get_type_hints(EventV1)
    assert set(fields) - set(STORED_EVENT_COLUMNS) == _NOT_EVENT_COLUMNS
    # The person keys are the aggregator's, not the event's (derived).
    assert set(DERIVED_EVENT_COLUMNS) == {"person_key", "device_key"}
    assert not set(DERIVED_EVENT_COLUMNS) & set(fields)
    for name in STORED_EVENT_COLUMNS:
        if name in DERIVED_EVENT_COLUMNS:
            continue
        column, field = EVENTS[name], fields[name]
        expected = _PYTHON_TYPES[column.pg_type]
        # A NOT NULL column is a field that is always set; a nullable one may be either.
        allowed = (expected, expected | None) if column.nullable else (expected,)
        assert hints[name] in allowed, name
        if not column.nullable:
            assert field.required or field.default is not None, name


def test_the_writer_writes_every_column_a_day_file_holds() -> None:
    # anonymous_id and properties travel encoded (with derived_fields) beside the writer's other
    # columns, the person keys after them.
    assert {*WRITER_COLUMNS, "anonymous_id", "properties", *DERIVED_EVENT_COLUMNS} == set(
        STORED_EVENT_COLUMNS
    )
    assert list(STORED_EVENT_COLUMNS) == EVENT_FILE_SCHEMA.names


def test_query_column_lists_are_registry_columns_with_their_types() -> None:
    assert [c for c in SCAN_COLUMNS if c != "person_id"] == [
        c.name for c in EVENT_COLUMNS if c.scanned and not c.derived
    ]
    # The keyed view: the same columns with the person's key in place of its id.
    assert [c if c != "person_id" else "person_key" for c in SCAN_COLUMNS] == list(
        KEYED_SCAN_COLUMNS
    )
    assert set(CONDITION_COLUMNS) == FILTERABLE_EVENT_COLUMNS <= set(SCAN_COLUMNS)
    assert all(EVENTS[c].pg_type == t for c, t in METRIC_EVENT_COLUMNS.items())
    # Dimensions name columns that exist, and breakdowns may name the event ones.
    assert set(EVENT_DIMENSIONS.values()) <= FILTERABLE_EVENT_COLUMNS
    assert set(SESSION_DIMENSIONS.values()) <= set(SESSIONS)
    assert list(EVENT_DIMENSIONS) == list(SESSION_DIMENSIONS)
