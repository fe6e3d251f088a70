"""A small HTTP/2-over-TLS server on the `h2` library, shared by both provider emulators.

Why not an ASGI server: APNs answers success with HEADERS only (`:status 200`, END_STREAM)
and no DATA frame, and aioapns fails on the empty DATA frame ASGI servers send. Here a
response with `body=None` is exactly one HEADERS frame with END_STREAM, like Apple's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes | None = None  # None: HEADERS frame only, with END_STREAM
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, Request] = {}
        self.window_open = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            # google-auth fetches OAuth tokens with `requests`, which speaks HTTP/1.1 only.
            self.data_received = self._http1_received  # type: ignore[method-assign]
            self.http1_buffer = b""
            return
        self.conn.initiate_connection()
        self.conn.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: 1000, SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}
        )
        self.conn.increment_flow_control_window(1 << 24)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                headers = dict(event.headers)
                target = urlsplit(headers.get(":path", "/"))
                self.requests[event.stream_id] = Request(
                    method=headers.get(":method", "GET"),
                    path=target.path,
                    query=parse_qs(target.query),
                    headers=headers,
                )
            elif isinstance(event, DataReceived):
                request = self.requests.get(event.stream_id)
                if request is not None:
                    request.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                request = self.requests.pop(event.stream_id, None)
                if request is not None:
                    asyncio.ensure_future(self._respond(event.stream_id, request))
            elif isinstance(event, StreamReset):
                self.requests.pop(event.stream_id, None)
            elif isinstance(event, WindowUpdated):
                self.window_open.set()
            elif isinstance(event, ConnectionTerminated):
                self.transport.close()
        self._flush()

    def _http1_received(self, data: bytes) -> None:
        """One request per connection, answered with `Connection: close`: enough for tokens."""
        self.http1_buffer += data
        head, sep, body = self.http1_buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        if len(body) < int(headers.get("content-length", "0")):
            return
        url = urlsplit(target)
        request = Request(method, url.path, parse_qs(url.query), headers, body)
        asyncio.ensure_future(self._respond_http1(request))

    async def _respond_http1(self, request: Request) -> None:
        response = await self.handler(request)
        body = response.body or b""
        head = [f"HTTP/1.1 {response.status} X", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in response.headers] + ["connection: close", "", ""]
        self.transport.write("\r\n".join(head).encode("latin-1") + body)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.window_open.set()

    async def _respond(self, stream_id: int, request: Request) -> None:
        try:
            response = await self.handler(request)
        except Exception as exc:  # noqa: BLE001 - an emulator bug must not kill the connection
            response = Response(500, f'{{"reason": "EmulatorError: {exc}"}}'.encode())
        headers = [(":status", str(response.status)), *response.headers]
        if response.body is not None:
            headers.append(("content-length", str(len(response.body))))
        try:
            self.conn.send_headers(stream_id, headers, end_stream=response.body is None)
            self._flush()
            if response.body is not None:
                await self._send_body(stream_id, response.body)
        except (StreamClosedError, ProtocolError):
            pass

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            if self.transport.is_closing():
                return
            window = self.conn.local_flow_control_window(stream_id)
            if window <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                continue
            size = min(window, self.conn.max_outbound_frame_size, len(view))
            # END_STREAM rides on the last DATA frame, as Apple's servers do: aioapns parses
            # every DATA frame as JSON and breaks the connection on an empty one.
            self.conn.send_data(stream_id, bytes(view[:size]), end_stream=size == len(view))
            view = view[size:]
            self._flush()
        if not body:
            self.conn.end_stream(stream_id)
            self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_file), str(key_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def serve(
    handler: Handler, host: str, port: int, cert_file: Path, key_file: Path
) -> asyncio.base_events.Server:
    """Listen for HTTP/2 over TLS; the server's actual port is in `.sockets[0]`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Connection(handler), host, port, ssl=tls_context(cert_file, key_file)
    )
