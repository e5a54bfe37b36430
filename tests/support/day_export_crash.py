"""An exporter that stops dead at one step, for kill -9 tests:

    python -m tests.support.day_export_crash DATABASE_URL STORE_URL WORK_DIR PROJECT DAY STEP MARKER

runs `export_day` and, once the export reaches STEP (catalogued, written, uploaded, verified,
activated), writes MARKER and sleeps until killed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import date
from pathlib import Path

from libs.common.day_files import DayExportSettings, DayPart, export_day
from libs.common.db import create_pool
from libs.common.object_store import open_object_store
from tests.support.crash_marker import leave_marker


async def main(argv: list[str]) -> None:
    database_url, store_url, work_dir, project_id, day, stop_at, marker = argv
    pool = await create_pool(database_url, min_size=1, max_size=2)
    store = open_object_store(store_url)

    async def on_step(step: str, part: DayPart) -> None:
        if step == stop_at:
            await leave_marker(marker, part.object_name)
            await asyncio.sleep(3600)  # until kill -9

    await export_day(
        pool,
        store,
        project_id,
        date.fromisoformat(day),
        DayExportSettings(work_dir=Path(work_dir)),
        on_step=on_step,
    )
    await leave_marker(marker, "finished without reaching the step")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
