"""Strata's benchmarks: figures printed and written to JSON, never asserted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from strata_dev.embedded import free_port


def report(figures: dict[str, Any], output: Path | None) -> None:
    """Print a benchmark's figures as JSON, and write them to `output` when given."""
    text = json.dumps(figures, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


def stack_env(data_dir: Path | str, **settings: str) -> dict[str, str]:
    """The environment for a `strata up` of a benchmark's own: this one's without any STRATA_
    setting or server URL (so it starts its embedded NATS and PostgreSQL), a data directory,
    free ports for ingest and query, and the given STRATA_ settings (`log_level="warning"`
    sets STRATA_LOG_LEVEL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env.pop("NATS_URL", None)
    env.pop("DATABASE_URL", None)
    env.update(
        STRATA_DATA_DIR=str(data_dir),
        STRATA_INGEST_PORT=str(free_port()),
        STRATA_QUERY_PORT=str(free_port()),
    )
    env.update({f"STRATA_{name.upper()}": value for name, value in settings.items()})
    return env
