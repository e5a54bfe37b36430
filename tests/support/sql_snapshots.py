"""Generated SQL kept as files beside the tests (tests/snapshots/<name>.sql), so a change of the
SQL a feature runs shows up in review as a diff of that file.

A test calls `assert_sql_snapshot("funnel_ordered", sql)` and is marked
`pytest.mark.sql_snapshot`; `./just snapshots` rewrites every snapshot from the code (delete,
regenerate, then review `git diff tests/snapshots`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SNAPSHOT_DIR = Path(__file__).resolve().parents[1] / "snapshots"
UPDATE_ENV = "STRATA_UPDATE_SNAPSHOTS"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def normalise(sql: str) -> str:
    """The text kept: lines without trailing blanks, no blank runs, one final newline."""
    lines = [line.rstrip() for line in sql.strip("\n").splitlines()]
    kept: list[str] = []
    for line in lines:
        if line or (kept and kept[-1]):
            kept.append(line)
    return "\n".join(kept).rstrip() + "\n"


def assert_sql_snapshot(name: str, sql: str) -> None:
    """`sql` equals the committed snapshot `name` (or becomes it under `just snapshots`)."""
    if not _NAME.match(name):
        raise ValueError(f"snapshot names are lowercase file names, not {name!r}")
    path = SNAPSHOT_DIR / f"{name}.sql"
    text = normalise(sql)
    if os.environ.get(UPDATE_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no snapshot tests/snapshots/{path.name}: run `./just snapshots`"
    assert path.read_text() == text, (
        f"the SQL of tests/snapshots/{path.name} changed: run `./just snapshots` and review the "
        "diff"
    )
