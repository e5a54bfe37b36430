"""Debian's Chromium for the browser tests, installed where we may (never Playwright's own
browser downloads, which this project's machines cannot fetch).

The install runs once, before any test, when the run collected a `browser` test
(tests/conftest.py): an apt-get takes minutes on a loaded machine, more than a test's timeout,
and the test workers would otherwise race each other for dpkg's lock. A file lock lets one worker
install while the others wait for it."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

# A desktop Chrome's agent: HeadlessChrome's own would be flagged as a bot, which is right for
# crawlers but not what these tests model.
VISITOR_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/156.0.0.0 Safari/537.36"
)


def _progress(message: str) -> None:
    # Straight to the terminal: pytest captures stdout, and an install takes a minute or two.
    print(f"[browser tests] {message}", file=sys.__stderr__, flush=True)


_INSTALL_LOCK = Path(tempfile.gettempdir()) / "strata-test-chromium.lock"


def ensure_chromium() -> Path:
    """/usr/bin/chromium, installed with apt-get when missing and we are root; otherwise the
    calling test fails saying what to install."""
    if CHROMIUM.exists():
        return CHROMIUM
    with _INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be installing it right now
        return CHROMIUM if CHROMIUM.exists() else _install_chromium()


def _install_chromium() -> Path:
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        pytest.fail(
            "the browser tests need Debian's chromium at /usr/bin/chromium: "
            "run `sudo apt-get install -y chromium` (or the equivalent for this system)",
            pytrace=False,
        )
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # An install cut short (a killed test run) leaves dpkg "interrupted", and apt-get then
    # refuses everything until it is finished: finish it first (nothing to do otherwise).
    steps = (
        ["dpkg", "--configure", "-a"],
        [apt_get, "update"],
        [apt_get, "install", "-y", "chromium"],
    )
    for step in steps:
        command = " ".join([Path(step[0]).name, *step[1:]])
        _progress(f"running {command} ...")
        done = subprocess.run(step, env=environment, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(
                f"{command} failed ({done.returncode}):\n{done.stderr[-2000:]}", pytrace=False
            )
    if not CHROMIUM.exists():
        pytest.fail("apt-get installed chromium but /usr/bin/chromium is missing", pytrace=False)
    _progress("chromium installed")
    return CHROMIUM


@asynccontextmanager
async def visitor_browser() -> AsyncIterator[Browser]:
    """Headless Chromium with a visitor's agent set browser-wide (beacons sent while a page
    unloads use the browser's agent, not a context's)."""
    chromium = str(ensure_chromium())
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, args=[*CHROMIUM_ARGS, f"--user-agent={VISITOR_AGENT}"]
        )
        try:
            yield launched
        finally:
            await launched.close()
