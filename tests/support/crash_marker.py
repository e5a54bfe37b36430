"""The marker a crash helper (cold_move_crash, day_export_crash, erasure_crash) leaves for its
test once it has reached the step to be killed at.

The test polls for the file and reads it as soon as it exists, so the text must appear with the
file: it is written beside the marker and renamed into place (a plain write_text could be seen
empty, between the create and the write).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def _write(marker: Path, text: str) -> None:
    staging = marker.with_name(marker.name + ".writing")
    staging.write_text(text)
    os.replace(staging, marker)


async def leave_marker(marker: str, text: str) -> None:
    await asyncio.to_thread(_write, Path(marker), text)
