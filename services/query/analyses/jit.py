"""Kernels compiled with Numba on first use (services/query/analyses/funnel_kernel.py,
cached_rows.py): a process that never runs them never imports Numba (~0.2 s) nor compiles
them (~1-2 s each); `cache=True` keeps the machine code beside the module (or under
`NUMBA_CACHE_DIR`), so a later process loads it instead. `nogil=True`: the analysis threads
run them side by side."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Compiled:
    """`function`, compiled on the first call (and kept); `python()` runs it uncompiled (tests:
    its lines are then measured and checked)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self._compiled: Callable[..., Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        compiled = self._compiled
        if compiled is None:
            with self._lock:  # two threads' first calls compile once
                if self._compiled is None:
                    import numba

                    self._compiled = numba.njit(cache=True, nogil=True)(self.function)
                compiled = self._compiled
        return compiled(*args)
