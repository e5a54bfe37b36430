"""Strata's data model, declared once: the stored tables' columns (`columns`). The writer, the
day files, the event scan, the metric SQL and the conditions derive their column lists from it,
and tests compare it with the migrated database and the day files' Arrow schema."""
