"""Strata's benchmarks: figures printed and written to JSON, never asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def report(figures: dict[str, Any], output: Path | None) -> None:
    """Print a benchmark's figures as JSON, and write them to `output` when given."""
    text = json.dumps(figures, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
