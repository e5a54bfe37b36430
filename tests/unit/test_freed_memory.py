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
import os, sys, threading
from services.query.freed_memory import keep_freed_memory

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

applied = keep_freed_memory(int(sys.argv[1]))
block = int(sys.argv[2])
sizes = {}

def burst():
    before = resident_mb()
    # 200 MB in blocks below any mmap threshold (from a heap), written, then freed.
    blocks = [bytearray(b"x" * block) for _ in range(200 * 2**20 // block)]
    peak = resident_mb()
    del blocks
    sizes.update(grown=peak - before, kept=resident_mb() - before)

if sys.argv[3] == "thread":
    worker = threading.Thread(target=burst)
    worker.start()
    worker.join()
else:
    burst()
print(applied, round(sizes["grown"]), round(sizes["kept"]))
"""


def burst(keep_bytes: int, block: int = 65536, where: str = "main") -> tuple[bool, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _BURST, str(keep_bytes), str(block), where],
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; glibc's mallopt")
def test_freed_memory_of_another_thread_stays_too() -> None:
    # An analysis thread's arrays (4 MiB blocks here) come from the one heap and stay.
    applied, grown, kept = burst(1024**3, block=4 * 2**20, where="thread")
    assert applied
    assert grown >= 150
    assert kept >= grown - 20
    # glibc's defaults give the thread its own arena, which hands most of it back.
    applied, grown, kept = burst(0, block=4 * 2**20, where="thread")
    assert not applied
    assert kept <= grown - 100


def test_zero_sets_nothing() -> None:
    assert keep_freed_memory(0) is False
