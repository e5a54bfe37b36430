"""The query process keeps memory its analyses free (services/query/freed_memory.py): after
a burst of allocations is freed, the process's resident size stays instead of falling back,
so the next analysis reuses the pages instead of faulting fresh ones in; 0 leaves glibc's
defaults, which hand the freed heap back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.query.freed_memory import keep_freed_memory

_BURST = """
import os, sys
from services.query.freed_memory import keep_freed_memory

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

applied = keep_freed_memory(int(sys.argv[1]))
before = resident_mb()
# 200 MB in 64 KiB blocks (below any mmap threshold: from the heap), written, then freed.
blocks = [bytearray(b"x" * 65536) for _ in range(3200)]
peak = resident_mb()
del blocks
after = resident_mb()
print(applied, round(peak - before), round(after - before))
"""


def burst(keep_bytes: int) -> tuple[bool, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _BURST, str(keep_bytes)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; glibc's mallopt")
def test_freed_memory_stays_with_the_process_and_zero_hands_it_back() -> None:
    applied, grown, kept = burst(1024**3)
    assert applied
    assert grown >= 150
    assert kept >= grown - 20  # still resident after the free
    applied, grown, kept = burst(0)
    assert not applied
    assert grown >= 150
    assert kept <= 20  # glibc's defaults trimmed the heap back


def test_zero_sets_nothing() -> None:
    assert keep_freed_memory(0) is False
