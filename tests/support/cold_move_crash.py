"""A cold move that stops dead at one step, for kill -9 tests:

    python -m tests.support.cold_move_crash DATABASE_URL STORE_URL PROJECT DAY STEP MARKER

runs `move_day_cold` and, once it reaches STEP (checked, deleted: inside the transaction before
COMMIT, committed, dropped), writes MARKER and sleeps until killed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import date

from libs.common.db import create_pool
from libs.common.object_store import open_object_store
from services.tiering.tier_moves import move_day_cold
from tests.support.crash_marker import leave_marker


async def main(argv: list[str]) -> None:
    database_url, store_url, project_id, day, stop_at, marker = argv
    pool = await create_pool(database_url, min_size=1, max_size=2)
    store = open_object_store(store_url)

    async def on_step(step: str) -> None:
        if step == stop_at:
            await leave_marker(marker, step)
            await asyncio.sleep(3600)  # until kill -9

    await move_day_cold(pool, store, project_id, date.fromisoformat(day), on_step=on_step)
    await leave_marker(marker, "finished without reaching the step")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
