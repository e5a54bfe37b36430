"""Columnar day files: every closed UTC day of `events` written as Parquet parts to the object
store and catalogued in PostgreSQL (`day_files`), read back through a bounded local cache.

    run = await export_pending_days(pool, store, settings, grace=timedelta(minutes=30))
    cache = DayFileCache(cache_dir, max_bytes, store)
"""

from libs.common.day_files.cache import DayFileCache
from libs.common.day_files.catalog import DayPart, active_parts, active_watermarks
from libs.common.day_files.export import (
    DayExport,
    DayExportSettings,
    DayFileVerificationError,
    DayNotClosedError,
    ExportRun,
    XidCounterBehindError,
    days_needing_export,
    export_day,
    export_pending_days,
    last_closed_day,
    merge_late_parts,
    sweep_objects,
)
from libs.common.day_files.layout import (
    EVENT_FILE_SCHEMA,
    day_bounds,
    days_between,
    parse_object_name,
    part_object_name,
    project_prefix,
)

__all__ = [
    "EVENT_FILE_SCHEMA",
    "DayExport",
    "DayExportSettings",
    "DayFileCache",
    "DayFileVerificationError",
    "DayNotClosedError",
    "DayPart",
    "ExportRun",
    "XidCounterBehindError",
    "active_parts",
    "active_watermarks",
    "day_bounds",
    "days_between",
    "days_needing_export",
    "export_day",
    "export_pending_days",
    "last_closed_day",
    "merge_late_parts",
    "parse_object_name",
    "part_object_name",
    "project_prefix",
    "sweep_objects",
]
