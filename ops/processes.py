"""Child processes of the local stack (Redis, the provider emulators): free ports to give
them, and a stop that cannot hang."""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    """A loopback port nobody listens on now: tests and parallel stacks must not collide
    on fixed ports. (Another process may take it before ours binds; rare enough here.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`: a child that ignores SIGTERM must not keep
    `herald run` (or a test session) from exiting, nor be left behind."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
