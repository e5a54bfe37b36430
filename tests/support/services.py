"""Run Strata services as real subprocesses (`python -m services.<name>`), as Kubernetes does,
so tests can kill -9 them mid-stream."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def service_env(
    database_url: str, nats_url: str, prefix: str, **extra: str | int | float
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env.update(
        DATABASE_URL=database_url,
        NATS_URL=nats_url,
        STRATA_NATS_PREFIX=prefix,
        STRATA_LOG_FORMAT="console",
        STRATA_LOG_LEVEL="warning",
    )
    for key, value in extra.items():
        env[f"STRATA_{key.upper()}"] = str(value)
    return env


class ServiceProcess:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, open_file_limit: int | None = None) -> ServiceProcess:
        """Start the service; `open_file_limit` starts it with that soft RLIMIT_NOFILE (as a
        shell with the common `ulimit -n 1024` would)."""

        def limit_open_files() -> None:
            if open_file_limit is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_file_limit, hard))

        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_open_files,
        )
        log.close()
        return self

    def wait_http(self, port: int, path: str = "/readyz", timeout: float = 90.0) -> None:
        """Block until the service answers 200 on `path`. A bound for a hung start, not a speed
        check: the query service's imports alone (DuckDB, SciPy, pandas) took 16 s on a
        throttled CI machine, where three workers starting services at once passed 30 s."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready on :{port}{path}:\n{self.log()}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
