"""An erasure pass that stops dead at one step, for kill -9 tests:

    python -m tests.support.erasure_crash DATABASE_URL STORE_URL WORK_DIR STEP MARKER

runs `process_erasures` and, once it reaches STEP (uploaded, verified, activated, recorded),
writes MARKER and sleeps until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from libs.common.day_files import DayExportSettings, DayPart
from libs.common.db import create_pool
from libs.common.object_store import open_object_store
from services.tiering.erasure import process_erasures
from tests.support.crash_marker import leave_marker


async def main(argv: list[str]) -> None:
    database_url, store_url, work_dir, stop_at, marker = argv
    pool = await create_pool(database_url, min_size=1, max_size=2)
    store = open_object_store(store_url)

    async def on_step(step: str, part: DayPart) -> None:
        if step == stop_at:
            await leave_marker(marker, part.object_name)
            await asyncio.sleep(3600)  # until kill -9

    await process_erasures(pool, store, DayExportSettings(work_dir=Path(work_dir)), on_step=on_step)
    await leave_marker(marker, "finished without reaching the step")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
