"""`strata up`: the whole stack in the foreground on one machine.

Without NATS_URL / DATABASE_URL it starts its own NATS (JetStream) and PostgreSQL under the data
directory, on loopback ports that stay the same from run to run when they are free. It applies
migrations, makes sure a "demo" project with write/read/admin keys exists (their secrets are
kept in the data directory, since the database holds only hashes) and a dashboard admin
(admin@strata.local, its password kept there too), creates the streams, then runs the five
services as child processes, restarting any that dies. The embedded NATS and PostgreSQL are
watched the same way: one that dies is restarted (same port, same store) with backoff, and the
supervisor says so. Once every service answers /readyz it writes `dev.json` (URLs and keys) and
prints it. SIGINT/SIGTERM stop the children first (SIGTERM, then SIGKILL after a grace period),
then PostgreSQL and NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import msgspec

from libs.common import db, keys, users
from libs.common.nats_io import connect, ensure_streams
from libs.common.settings import StackSettings
from libs.common.subjects import Subjects
from strata_cli.local_stack import StackError, dev_json_path, redact, say
from strata_dev.demo import (
    DEMO_PROJECTS,
    DemoError,
    DemoPlan,
    IngestClient,
    IngestTarget,
    SendStats,
    iter_backfill,
    send_backfill,
    send_live,
)
from strata_dev.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres, free_port

SERVICES = ("ingest", "sessionizer", "aggregator", "tiering", "query")
DEFAULT_PROJECT = "demo"
DASHBOARD_EMAIL = "admin@strata.local"
ROLES = ("write", "read", "admin")
REPO_ROOT = Path(__file__).resolve().parents[1]

# A child that stayed up this long is healthy again: its next crash restarts without delay.
_STABLE_RUN_S = 60.0
_FIRST_BACKOFF_S = 0.5


class StackState(msgspec.Struct, kw_only=True):
    """What a run leaves in `<data_dir>/stack.json` for the next one (private: holds secrets)."""

    nats_port: int = 0
    nats_pid: int = 0
    postgres_port: int = 0
    health_ports: dict[str, int] = {}
    keys: dict[str, dict[str, str]] = {}  # project -> role -> secret
    dashboard_password: str = ""  # the demo admin's (the database holds only its hash)
    demo_backfilled_until: datetime | None = None


# --- data directory -------------------------------------------------------------------------


def state_path(data_dir: Path) -> Path:
    return data_dir / "stack.json"


def load_state(data_dir: Path) -> StackState:
    path = state_path(data_dir)
    if not path.exists():
        return StackState()
    try:
        return msgspec.json.decode(path.read_bytes(), type=StackState)
    except (msgspec.DecodeError, msgspec.ValidationError):
        say(f"ignoring unreadable {path}; new ports and keys will be chosen")
        return StackState()


def save_private_json(path: Path, data: bytes) -> None:
    """Write atomically, readable only by the owner (the file holds key secrets)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def save_state(data_dir: Path, state: StackState) -> None:
    save_private_json(state_path(data_dir), msgspec.json.format(msgspec.json.encode(state)))


class DataDirLock:
    """One `strata up` per data directory: a second one would fight over the same servers."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "stack.lock"
        self.file: IO[str] | None = None

    def acquire(self) -> None:
        # Held (and locked) for the stack's lifetime.
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise StackError(
                f"another `strata up` ({holder}) is running on {self.path.parent}; stop it or "
                "use another --data-dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
            self.file.close()
            self.file = None


# --- ports ------------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port` (TIME_WAIT leftovers do not count)."""
    if port <= 0:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stable_port(previous: int, taken: set[int]) -> int:
    """The previous run's port when it is free again (URLs stay the same), else a new one."""
    if previous and previous not in taken and port_is_free(previous):
        taken.add(previous)
        return previous
    while True:
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port


# --- embedded servers ---------------------------------------------------------------------


def _process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_orphaned_nats(state: StackState, nats_dir: Path) -> None:
    """A previous `up` killed with SIGKILL leaves its nats-server running on our store."""
    pid = state.nats_pid
    cmdline = _process_cmdline(pid) if pid else ""
    if "nats-server" not in cmdline or str(nats_dir) not in cmdline:
        return
    say(f"stopping the NATS server (pid {pid}) left running by a previous run")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _process_cmdline(pid):
        time.sleep(0.1)
    if _process_cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


# --- database: schema, projects, keys -------------------------------------------------------


async def prepare_database(database_url: str) -> list[str]:
    """Create the database when missing and apply pending migrations; returns those applied."""
    try:
        await db.ensure_database(database_url)
    except asyncpg.InsufficientPrivilegeError:
        pass  # a managed database the user may not create: it must exist already
    conn = await asyncpg.connect(database_url)
    try:
        return await db.migrate(conn)
    finally:
        await conn.close()


async def ensure_project_keys(
    conn: asyncpg.Connection, project: str, roles: tuple[str, ...], known: Mapping[str, str]
) -> dict[str, str]:
    """Secrets of live keys of `project` for each role: the known ones when still valid (a
    second `up` keeps its keys), new ones otherwise. The admin key is bound to no project, so
    it reads every project of the stack (with `?project=`)."""
    await keys.ensure_project(conn, project)
    secrets: dict[str, str] = {}
    for role in roles:
        owner = None if role == "admin" else project
        secret = known.get(role)
        if secret:
            found = await keys.lookup_key(conn, secret)
            if found is not None and found.project_id == owner and found.role == role:
                secrets[role] = secret
                continue
        _, secrets[role] = await keys.create_key(conn, owner, role, name="strata up")
    return secrets


async def ensure_dashboard_admin(
    conn: asyncpg.Connection, projects: tuple[str, ...], known_password: str
) -> str:
    """The password of the local stack's dashboard admin (admin of `projects`): created on
    the first start, kept while it still signs in, reset when the data dir lost it."""
    user = await users.find_user(conn, DASHBOARD_EMAIL)
    if user is None:
        password = users.generate_password()
        user = await users.create_user(conn, DASHBOARD_EMAIL, password, name="Strata admin")
    else:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
        password = known_password
        if not password or not await asyncio.to_thread(
            users.verify_password, users.DEFAULT_HASHER, stored, password
        ):
            password = users.generate_password()
            await users.set_password(conn, user.id, password)
    for project in projects:
        await users.set_role(conn, user.id, project, users.ADMIN)
    return password


# --- child services -----------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """A process with this pid runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


class ServerWatch:
    """Keeps one embedded server running: polls `alive`, and when the server is gone calls
    `restart` (in a thread) after a backoff of 0.5 s doubling to `backoff_max_s` (back to 0.5 s
    once the server has run for a minute), announcing each step. `stop()` ends the watch after
    any restart under way, so shutdown never races a restart."""

    POLL_S = 0.2

    def __init__(
        self,
        name: str,
        alive: Callable[[], bool],
        restart: Callable[[], str],
        backoff_max_s: float,
    ) -> None:
        self.name = name
        self.alive = alive
        self.restart = restart  # returns where the server listens again, for the announcement
        self.backoff_max_s = backoff_max_s
        self.restarts = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless stopped meanwhile; False when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return not self._stopping.is_set()

    async def _watch(self) -> None:
        backoff = _FIRST_BACKOFF_S
        running_since = time.monotonic()
        while await self._pause(self.POLL_S):
            if self.alive():
                continue
            if time.monotonic() - running_since >= _STABLE_RUN_S:
                backoff = _FIRST_BACKOFF_S
            self.restarts += 1
            say(f"{self.name} died; restart #{self.restarts} in {backoff:.1f}s")
            while await self._pause(backoff):
                backoff = min(backoff * 2, self.backoff_max_s)
                try:
                    where = await asyncio.to_thread(self.restart)
                except (EmbeddedError, OSError) as exc:
                    say(f"{self.name} did not start: {exc}; next try in {backoff:.1f}s")
                    continue
                say(f"{self.name} is running again ({where}), restart #{self.restarts}")
                running_since = time.monotonic()
                break


def _die_with_parent() -> None:
    """Runs in the child before exec: if the supervisor is killed outright, the kernel sends
    the child SIGTERM so no service outlives it (Linux only; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ChildService:
    """One service process under supervision: started, its output prefixed and logged,
    restarted with exponential backoff when it dies, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        ready_url: str,
        log_dir: Path,
        backoff_max_s: float,
    ) -> None:
        self.name = name
        self.env = env
        self.ready_url = ready_url
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "ab")  # closed when the supervision loop ends
        self.backoff_max_s = backoff_max_s
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{self.name}",
            cwd=REPO_ROOT,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Own process group: a terminal's Ctrl-C reaches only the supervisor, which then
            # stops the services in order (they must flush before PostgreSQL goes away).
            start_new_session=True,
            preexec_fn=_die_with_parent,
            limit=1 << 20,
        )

    async def _supervise(self) -> None:
        try:
            await self._run_with_restarts()
        finally:
            self.log.close()

    async def _run_with_restarts(self) -> None:
        backoff = _FIRST_BACKOFF_S
        log = self.log
        while not self.stopping:
            started = time.monotonic()
            try:
                self.proc = await self._spawn()
            except OSError as exc:
                say(f"{self.name}: cannot start: {exc}")
                return
            if self.stopping:  # stop() came while this one was being spawned
                self.proc.send_signal(signal.SIGTERM)
            await self._pump_output(self.proc, log)
            code = await self.proc.wait()
            self._wake.clear()  # before the check: a stop() from here on cuts the backoff
            if self.stopping:
                return
            if time.monotonic() - started >= _STABLE_RUN_S:
                backoff = _FIRST_BACKOFF_S
            self.restarts += 1
            say(
                f"{self.name} (pid {self.proc.pid}) exited with code {code}; "
                f"restart #{self.restarts} in "
                f"{backoff:.1f}s (log: {self.log_path})"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            backoff = min(backoff * 2, self.backoff_max_s)
            if not self.stopping:
                task = asyncio.create_task(self._announce_ready_again())
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _pump_output(self, proc: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        """Copy the child's output line by line: to its log file, and prefixed to stderr."""
        assert proc.stdout is not None
        prefix = f"{self.name:>11} | ".encode()
        out = sys.stderr.buffer
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line longer than the buffer limit: pass it on in pieces
                line = await proc.stdout.read(1 << 16)
            if not line:
                return
            log.write(line)
            log.flush()
            out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
            out.flush()

    async def _announce_ready_again(self) -> None:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not self.stopping:
                if await is_ready(http, self.ready_url):
                    say(f"{self.name} is ready again")
                    return
                await asyncio.sleep(0.5)

    async def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; returns the exit code."""
        self.stopping = True
        self._wake.set()
        for task in self._background:
            task.cancel()
        self.signal(signal.SIGTERM)
        if self._supervisor is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._supervisor), timeout=timeout_s)
            except TimeoutError:
                say(f"{self.name} did not stop within {timeout_s:.0f}s; killing it")
                self.signal(signal.SIGKILL)
                await asyncio.gather(self._supervisor, return_exceptions=True)
        return self.proc.returncode if self.proc is not None else None

    def signal(self, signum: int) -> None:
        """Send `signum` to the running process, if any."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


async def is_ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def wait_all_ready(
    children: list[ChildService], timeout_s: float, stop: asyncio.Event
) -> None:
    """Block until every child answers /readyz, announcing each; StackError on timeout."""
    pending = {child.name: child for child in children}
    deadline = time.monotonic() + timeout_s
    last_note = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while pending:
            if stop.is_set():
                return
            results = await asyncio.gather(*(is_ready(http, c.ready_url) for c in pending.values()))
            for child, ready in zip(list(pending.values()), results, strict=True):
                if ready:
                    say(f"{child.name} is ready ({child.ready_url.removesuffix('/readyz')})")
                    del pending[child.name]
            if not pending:
                return
            now = time.monotonic()
            if now > deadline:
                names = ", ".join(sorted(pending))
                logs = ", ".join(str(pending[n].log_path) for n in sorted(pending))
                raise StackError(
                    f"not ready within {timeout_s:.0f}s: {names} (see {logs}; "
                    "STRATA_READY_TIMEOUT_S sets the limit)"
                )
            if now - last_note > 15:
                say(f"waiting for {', '.join(sorted(pending))} to become ready...")
                last_note = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.25)


# --- the stack ----------------------------------------------------------------------------


class Stack:
    """Everything one `strata up` started, so that it can be stopped in the right order."""

    def __init__(
        self, settings: StackSettings, base_env: Mapping[str, str], data_dir: Path
    ) -> None:
        self.settings = settings
        self.base_env = dict(base_env)
        self.data_dir = data_dir
        self.lock = DataDirLock(data_dir)
        self.state = StackState()
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: list[ChildService] = []
        self.watches: list[ServerWatch] = []
        self.demo_task: asyncio.Task[None] | None = None
        self.nats_url = settings.nats_url
        self.database_url = settings.database_url

    # start ---------------------------------------------------------------------------------

    async def start_servers(self) -> None:
        """Embedded NATS and PostgreSQL unless URLs were given; then schema, keys, streams."""
        settings = self.settings
        taken = {settings.ingest_port, settings.query_port}
        if not self.nats_url:
            nats_dir = self.data_dir / "nats"
            stop_orphaned_nats(self.state, nats_dir)
            port = stable_port(self.state.nats_port, taken)
            say(f"starting NATS JetStream on 127.0.0.1:{port} (store: {nats_dir})")
            self.nats = EmbeddedNats(nats_dir, port)
            await asyncio.to_thread(self.nats.start)
            assert self.nats.proc is not None
            self.state.nats_port, self.state.nats_pid = port, self.nats.proc.pid
            self.nats_url = self.nats.url
            save_state(self.data_dir, self.state)
        if not self.database_url:
            pg_dir = self.data_dir / "postgres"
            leftover = EmbeddedPostgres(pg_dir, self.state.postgres_port or None)
            if (leftover.pgdata / "postmaster.pid").exists():
                # Left by a run that was killed outright: stop it (if alive) first, which also
                # frees its port for reuse.
                say("stopping the PostgreSQL left running by a previous run (if any)")
                await asyncio.to_thread(leftover.stop)
            port = stable_port(self.state.postgres_port, taken)
            self.postgres = EmbeddedPostgres(pg_dir, port)
            say(f"starting PostgreSQL on 127.0.0.1:{port} (data: {self.postgres.pgdata})")
            await asyncio.to_thread(self.postgres.start)
            self.state.postgres_port = port
            self.database_url = with_database(self.postgres.url, "strata")
            save_state(self.data_dir, self.state)

        applied = await prepare_database(self.database_url)
        say(f"database {redact(self.database_url)}: {len(applied)} migration(s) applied")

        nc = await connect(self.nats_url, "strata-up")
        try:
            await ensure_streams(
                nc.jetstream(), Subjects(settings.nats_prefix), settings.stream_replicas
            )
        finally:
            await nc.close()

    async def ensure_keys(self, projects: tuple[str, ...]) -> None:
        """Keys for the default project (all roles) and write keys for the demo's others."""
        conn = await asyncpg.connect(self.database_url)
        try:
            for project in projects:
                roles = ROLES if project == DEFAULT_PROJECT else ("write",)
                known = self.state.keys.get(project, {})
                self.state.keys[project] = {
                    **known,
                    **await ensure_project_keys(conn, project, roles, known),
                }
            self.state.dashboard_password = await ensure_dashboard_admin(
                conn, projects, self.state.dashboard_password
            )
        finally:
            await conn.close()
        save_state(self.data_dir, self.state)

    def child_env(self, name: str, health_port: int | None) -> dict[str, str]:
        settings = self.settings
        env = dict(self.base_env)
        env.update(
            DATABASE_URL=self.database_url,
            NATS_URL=self.nats_url,
            STRATA_NATS_PREFIX=settings.nats_prefix,
            STRATA_PARTITIONS=str(settings.partitions),
            STRATA_INGEST_PORT=str(settings.ingest_port),
            STRATA_QUERY_PORT=str(settings.query_port),
            STRATA_DATA_DIR=str(self.data_dir),
            PYTHONUNBUFFERED="1",
        )
        # A developer's terminal: readable logs and loopback-only listeners unless asked.
        env.setdefault("STRATA_LOG_FORMAT", "console")
        env.setdefault("STRATA_HOST", "127.0.0.1")
        # The setup page's tracking snippet points at this stack's ingest.
        env.setdefault("STRATA_PUBLIC_INGEST_URL", f"http://127.0.0.1:{settings.ingest_port}")
        env.pop("STRATA_HEALTH_PORT", None)
        if health_port is not None:
            env["STRATA_HEALTH_PORT"] = str(health_port)
        return env

    def start_children(self) -> None:
        settings = self.settings
        for port, variable in ((settings.ingest_port, "INGEST"), (settings.query_port, "QUERY")):
            if not port_is_free(port):
                raise StackError(
                    f"port {port} is in use: set STRATA_{variable}_PORT to a free port"
                )
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        taken = {settings.ingest_port, settings.query_port, self.state.nats_port}
        taken.add(self.state.postgres_port)
        for name in SERVICES:
            if name == "ingest":
                port, health = settings.ingest_port, None
            elif name == "query":
                port, health = settings.query_port, None
            else:
                port = stable_port(self.state.health_ports.get(name, 0), taken)
                health = self.state.health_ports[name] = port
            child = ChildService(
                name,
                self.child_env(name, health),
                f"http://127.0.0.1:{port}/readyz",
                log_dir,
                settings.restart_backoff_max_s,
            )
            self.children.append(child)
            child.start()
        save_state(self.data_dir, self.state)
        say(f"started {', '.join(SERVICES)} (logs: {log_dir})")

    def watch_servers(self) -> None:
        """Restart the embedded NATS or PostgreSQL when it dies (servers given by URL are the
        user's to run)."""
        backoff_max_s = self.settings.restart_backoff_max_s
        nats, postgres = self.nats, self.postgres
        if nats is not None:

            def nats_alive() -> bool:
                return nats.proc is not None and nats.proc.poll() is None

            def restart_nats() -> str:
                nats.start()
                assert nats.proc is not None
                self.state.nats_pid = nats.proc.pid
                save_state(self.data_dir, self.state)
                return f"pid {nats.proc.pid}, {nats.url}"

            self.watches.append(ServerWatch("NATS", nats_alive, restart_nats, backoff_max_s))
        if postgres is not None:

            def postgres_alive() -> bool:
                pid = postgres.postmaster_pid()
                return pid is not None and process_alive(pid)

            def restart_postgres() -> str:
                postgres.start()  # pg_ctl runs crash recovery and replaces a stale pid file
                return f"pid {postgres.postmaster_pid()}, 127.0.0.1:{postgres.port}"

            self.watches.append(
                ServerWatch("PostgreSQL", postgres_alive, restart_postgres, backoff_max_s)
            )
        for watch in self.watches:
            watch.start()

    def dev_info(self) -> dict[str, str]:
        project_keys = self.state.keys[DEFAULT_PROJECT]
        return {
            "ingest_url": f"http://127.0.0.1:{self.settings.ingest_port}",
            "query_url": f"http://127.0.0.1:{self.settings.query_port}",
            "project": DEFAULT_PROJECT,
            "write_key": project_keys["write"],
            "read_key": project_keys["read"],
            # Admin of every project: add ?project=<one of projects> to each request.
            "admin_key": project_keys["admin"],
            # Every project this data directory's stack has keys for (the demo's, once run).
            "projects": ",".join(self.state.keys),
            "database_url": self.database_url,
            "nats_url": self.nats_url,
            "dashboard_url": f"http://127.0.0.1:{self.settings.query_port}/",
            "dashboard_email": DASHBOARD_EMAIL,
            "dashboard_password": self.state.dashboard_password,
        }

    # demo ----------------------------------------------------------------------------------

    def start_demo(self, ingest_url: str) -> None:
        self.demo_task = asyncio.create_task(self._run_demo(ingest_url), name="demo")

    async def _run_demo(self, ingest_url: str) -> None:
        settings = self.settings
        targets = {
            project: IngestTarget(ingest_url, self.state.keys[project]["write"])
            for project in DEMO_PROJECTS
        }
        now = datetime.now(UTC)
        days = backfill_window(self.state, settings.demo_days, now)
        try:
            async with aiohttp.ClientSession() as http:
                client = IngestClient(http, targets, SendStats())
                if days > 0:
                    plan = DemoPlan(
                        days=days,
                        visitors_per_day=settings.demo_visitors,
                        seed=settings.demo_seed,
                        end=now,
                    )
                    say(
                        f"demo: backfilling {days} day(s) of {', '.join(DEMO_PROJECTS)} "
                        f"(~{settings.demo_visitors} visitors/day each)"
                    )
                    await send_backfill(iter_backfill(plan), client, progress=say, total_days=days)
                    self.state.demo_backfilled_until = now
                    save_state(self.data_dir, self.state)
                else:
                    say("demo: history was backfilled by an earlier run")
                if settings.demo_live:
                    say(
                        f"demo: live traffic, ~{settings.demo_live_sessions_per_minute:g} "
                        "sessions/minute"
                    )
                    await send_live(
                        client,
                        DEMO_PROJECTS,
                        sessions_per_minute=settings.demo_live_sessions_per_minute,
                        seed=settings.demo_seed,
                        progress=say,
                    )
        except DemoError as exc:
            say(f"demo stopped: {exc}")

    # stop ----------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Children first (they flush and ack into PostgreSQL/NATS), then the servers."""
        # No server restarts from here on (one under way completes first).
        await asyncio.gather(*(watch.stop() for watch in self.watches))
        if self.demo_task is not None:
            self.demo_task.cancel()
            await asyncio.gather(self.demo_task, return_exceptions=True)
        if self.children:
            say("stopping services...")
            codes = await asyncio.gather(
                *(c.stop(self.settings.stop_timeout_s) for c in self.children)
            )
            summary = ", ".join(
                f"{c.name}={code}" for c, code in zip(self.children, codes, strict=True)
            )
            say(f"services stopped (exit codes: {summary})")
        if self.postgres is not None:
            say("stopping PostgreSQL...")
            await asyncio.to_thread(self.postgres.stop)
            if (self.postgres.pgdata / "postmaster.pid").exists():
                say(
                    f"warning: PostgreSQL may still be running (see "
                    f"{self.postgres.data_dir / 'postgres.log'}); the next `up` stops it"
                )
        if self.nats is not None:
            say("stopping NATS...")
            await asyncio.to_thread(self.nats.stop)
            self.state.nats_pid = 0
            save_state(self.data_dir, self.state)
        self.lock.release()


def prepare_data_dir(settings: StackSettings) -> Path:
    """The data directory as an absolute path (children get it too), created if missing."""
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


async def run_stack(
    settings: StackSettings,
    base_env: Mapping[str, str],
    data_dir: Path,
    *,
    demo: bool,
    output: Callable[[str], None] | None = None,
) -> int:
    """Run the stack until SIGINT/SIGTERM; returns the process exit code."""
    stack = Stack(settings, base_env, data_dir)
    stack.lock.acquire()
    stack.state = load_state(data_dir)
    dev_json_path(data_dir).unlink(missing_ok=True)  # written again once all is ready

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            say(f"{signal.Signals(signum).name} received: stopping (again to kill the services)")
        else:
            for child in stack.children:
                child.signal(signal.SIGKILL)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    code = 0
    try:
        await _until_stopped(stack.start_servers(), stop)
        if not stop.is_set():
            await stack.ensure_keys(DEMO_PROJECTS if demo else (DEFAULT_PROJECT,))
            stack.watch_servers()
            stack.start_children()
            await wait_all_ready(stack.children, settings.ready_timeout_s, stop)
        if not stop.is_set():
            info = stack.dev_info()
            encoded = msgspec.json.format(msgspec.json.encode(info), indent=2)
            save_private_json(dev_json_path(data_dir), encoded + b"\n")
            (output or _print)(encoded.decode())
            say(
                f"dashboard: {info['dashboard_url']} (sign in as {info['dashboard_email']}, "
                f"password {info['dashboard_password']})"
            )
            say(f"ready: wrote {dev_json_path(data_dir)}; Ctrl-C stops the stack")
            if demo:
                stack.start_demo(info["ingest_url"])
            await stop.wait()
    except (StackError, EmbeddedError) as exc:
        say(f"error: {exc}")
        code = 1
    except (OSError, asyncpg.PostgresError) as exc:
        say(f"error: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        await stack.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    say("stopped")
    return code


async def _until_stopped(step: Any, stop: asyncio.Event) -> None:
    """Run a start-up step, abandoning it when a stop signal arrives meanwhile."""
    task = asyncio.ensure_future(step)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        task.result()
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _print(text: str) -> None:
    print(text, flush=True)


def backfill_window(state: StackState, days: int, now: datetime) -> int:
    """Days of demo history still to send: an earlier run's backfill is not sent twice, only
    the days since it."""
    if state.demo_backfilled_until is None:
        return days
    return max(0, min(days, (now.date() - state.demo_backfilled_until.date()).days))
