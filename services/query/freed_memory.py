"""The query process keeps the memory its analyses free instead of handing it back to the
operating system at once (glibc's `mallopt`), so the next analysis reuses those pages instead
of faulting fresh ones in.

An analysis builds arrays of tens of megabytes (a funnel's stream, its sort, its look-ups) and
frees them when it answers. By default glibc serves each allocation above a threshold (128 KiB,
raised as large blocks are freed, to at most 32 MiB) with its own `mmap`, unmapped again when
freed, and returns the heap's top to the system past 128 KiB: the next analysis then faults
every page of its arrays in anew, zeroed by the kernel. Measured on the analyses benchmark's
5-step funnels at `--scale 1` (docs/analytics.md, the funnels' fourth round): the 30-day
funnel's wall median 87-110 -> 65-75 ms.

`STRATA_QUERY_KEEP_FREED_BYTES` (1 GiB; 0: glibc's defaults) is both thresholds: allocations
below 32 MiB (glibc's largest allowed threshold) come from the heap, and up to that many bytes
freed at the heap's top stay mapped. The process's resident size then stays near its peak
instead of falling back between analyses; the peak itself does not change.

The same setting puts every thread's allocations on that one heap (one arena). glibc otherwise
gives each new thread an arena of its own, whose heaps are at most 64 MiB and hand their free
top back to the system whatever the thresholds say: the analysis threads (a funnel's person
parts, stream_parts.py) then faulted their arrays in anew each time, which cost the 120-day
benchmark funnel's two parts ~20 ms each of their ~50 (docs/analytics.md, the funnels' fifth
round). Python's small objects come from its own allocator, and DuckDB has its own, so the
one arena's lock is taken for large blocks only. Elsewhere than glibc (no `mallopt`) this does
nothing.
"""

from __future__ import annotations

import ctypes

import structlog

log = structlog.get_logger("query")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# glibc refuses a larger mmap threshold (half its largest heap of a thread's arena).
MAX_MMAP_THRESHOLD = 32 * 1024**2


def keep_freed_memory(keep_bytes: int) -> bool:
    """Set glibc's thresholds for `keep_bytes` (0: leave them); whether they were set."""
    if keep_bytes <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.info("freed_memory_default", error="no mallopt in this C library")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    trim = min(keep_bytes, 2**31 - 1)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, min(MAX_MMAP_THRESHOLD, trim)))
    ok = bool(mallopt(_M_TRIM_THRESHOLD, trim)) and ok
    ok = bool(mallopt(_M_ARENA_MAX, 1)) and ok
    return ok
