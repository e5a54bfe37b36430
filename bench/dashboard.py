"""The dashboard's overview of the demo project, cold cache, in Chromium: `strata up --demo`
(backfilled history, no live trickle) on this machine, then each run a fresh browser context
(empty HTTP cache, signed in through the API) loads /p/demo/overview (last 30 days). Figures,
in milliseconds from navigation start: interactive (`data-ready=true`: the key figures with
their change, the chart and the pages, sources, devices and countries panels hold their data),
all panels (`data-complete=true`: the web vitals' raw percentiles too), DOMContentLoaded; and
the bytes of JavaScript transferred (gzipped).

    python -m bench.dashboard [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import stack_env
from tests.support.browser import CHROMIUM_ARGS, ensure_chromium

ROOT = Path(__file__).resolve().parents[1]


def _wait(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise TimeoutError(f"{what} not within {timeout:.0f}s")


async def _measure(dev: dict[str, str], runs: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    base = dev["dashboard_url"].rstrip("/")
    samples: list[dict[str, Any]] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(ensure_chromium()), args=CHROMIUM_ARGS
        )
        try:
            for _ in range(runs + 1):  # the first run warms the server, not the browser
                context = await browser.new_context(viewport={"width": 1360, "height": 900})
                login = {"email": dev["dashboard_email"], "password": dev["dashboard_password"]}
                answer = await context.request.post(f"{base}/api/v1/auth/login", data=login)
                assert answer.ok, await answer.text()
                page = await context.new_page()
                scripts: list[int] = []

                async def on_response(response: Any, found: list[int] = scripts) -> None:
                    if response.url.endswith(".js") or "/ui/app.js" in response.url:
                        found.append(int(response.headers.get("content-length", "0") or 0))

                page.on("response", on_response)
                await page.goto(f"{base}/p/demo/overview?range=30d")
                await page.wait_for_selector(
                    "[data-testid=overview][data-ready=true]", timeout=60_000
                )
                timing = await page.evaluate(
                    """() => {
                        const nav = performance.getEntriesByType("navigation")[0];
                        return {interactive_ms: performance.now(),
                                dom_content_loaded_ms: nav.domContentLoadedEventEnd};
                    }"""
                )
                await page.wait_for_selector(
                    "[data-testid=overview][data-complete=true]", timeout=60_000
                )
                timing["complete_ms"] = await page.evaluate("performance.now()")
                timing["js_bytes_transferred"] = float(sum(scripts))
                timing["requests"] = await page.evaluate(
                    """() => performance.getEntriesByType("resource")
                        .filter(r => r.name.includes("/api/"))
                        .map(r => [new URL(r.name).pathname + new URL(r.name).search.slice(0, 60),
                                   Math.round(r.startTime), Math.round(r.duration)])"""
                )
                samples.append(timing)
                await context.close()
        finally:
            await browser.close()
    measured = samples[1:]
    return {
        "runs": len(measured),
        "interactive_median_ms": round(statistics.median(s["interactive_ms"] for s in measured), 1),
        "interactive_max_ms": round(max(s["interactive_ms"] for s in measured), 1),
        "all_panels_median_ms": round(statistics.median(s["complete_ms"] for s in measured), 1),
        "dom_content_loaded_median_ms": round(
            statistics.median(s["dom_content_loaded_ms"] for s in measured), 1
        ),
        "js_bytes_transferred": int(measured[-1]["js_bytes_transferred"]),
        # The last run's API requests: [path and query, start ms, duration ms].
        "last_run_requests": measured[-1]["requests"],
    }


def run_benchmark(runs: int = 5) -> dict[str, Any]:
    """Start `strata up --demo`, wait for its backfill, measure, stop it."""
    with tempfile.TemporaryDirectory(prefix="strata-bench-dashboard-") as tmp:
        data_dir = Path(tmp)
        env = stack_env(data_dir, demo_live="false")
        log_path = data_dir / "up.log"
        with open(log_path, "wb") as log:
            stack = subprocess.Popen(
                [str(Path(sys.executable).parent / "strata"), "up", "--demo"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            started = time.monotonic()
            dev_json = data_dir / "dev.json"
            _wait("dev.json", dev_json.exists, 300)
            dev = json.loads(dev_json.read_text())
            _wait(
                "the demo backfill",
                lambda: re.search(r"demo: backfill .* done", log_path.read_text()),
                900,
            )
            time.sleep(10)  # the aggregator's last batches
            backfill_s = time.monotonic() - started
            figures = asyncio.run(_measure(dev, runs))
            figures["stack_and_backfill_s"] = round(backfill_s, 1)
            return figures
        finally:
            stack.send_signal(signal.SIGINT)
            try:
                stack.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description="Dashboard overview, cold cache, Chromium")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    figures = run_benchmark(args.runs)
    for key, value in figures.items():
        print(f"{key:40} {value}")
    print("target: interactive_median_ms <= 1000")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dashboard.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
