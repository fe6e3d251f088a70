"""`api.header_timeout` on a real uvicorn server (both of its HTTP/1.1 protocols), run in a
child process so the patch never touches this one: slow headers are answered 408 and
closed once the deadline passes — on a fresh connection and on a kept-alive one — while a
request whose headers arrived in time may send its body slowly, and an idle WebSocket is
left alone."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from websockets.sync.client import connect

from ops.processes import free_port

DEADLINE_S = 1.0
SERVER = """
import sys, uvicorn
from api.header_timeout import patch_protocols

async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text")})
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"got " + body})

print(patch_protocols(float(sys.argv[2])), flush=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), http=sys.argv[1], log_level="error")
"""


@pytest.fixture(params=["h11", "httptools"])
def server(request):
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, request.param, str(DEADLINE_S), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert "Protocol" in child.stdout.readline()
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
    yield port
    child.kill()
    child.wait()


def drip(sock: socket.socket, data: bytes, every_s: float) -> float:
    """Send `data` a byte every `every_s` until the server closes; the seconds it took."""
    started = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(every_s)
    return time.monotonic() - started


def read_all(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    sock.settimeout(timeout_s)
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def test_slow_headers_on_a_new_connection_get_408_and_a_close(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        took = drip(sock, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40, 0.1)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in answer and b'"field": "headers"' in answer
    assert DEADLINE_S * 0.9 < took < DEADLINE_S + 2, f"closed after {took:.1f} s"


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        started = time.monotonic()
        answer = read_all(sock)
        took = time.monotonic() - started
    assert answer == b""
    assert DEADLINE_S * 0.9 < took < DEADLINE_S + 2, f"closed after {took:.1f} s"


def test_a_kept_alive_connection_gets_the_deadline_again_after_each_answer(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        first = b""
        while not first.endswith(b"0\r\n\r\n"):  # the whole first (chunked) answer
            first += sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        drip(sock, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40, 0.1)
        assert read_all(sock).startswith(b"HTTP/1.1 408")


def test_headers_in_time_then_a_slow_body_is_not_cut_by_the_header_deadline(server):
    """The body is `api.slow_clients`' business (its deadline is counted per request)."""
    with socket.create_connection(("127.0.0.1", server)) as sock:
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n"
        sock.sendall(head)
        took = drip(sock, b"12345678", 0.3)
        answer = read_all(sock)
    assert took > DEADLINE_S * 2
    assert answer.startswith(b"HTTP/1.1 200") and b"got 12345678" in answer, answer


def test_an_idle_websocket_is_left_open(server):
    with connect(f"ws://127.0.0.1:{server}/ws", ping_interval=None) as ws:
        time.sleep(DEADLINE_S * 2.5)
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
