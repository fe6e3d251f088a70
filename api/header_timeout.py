"""A header read timeout in Serve's HTTP proxy: a connection that has not sent a complete
request line and headers within `HERALD_HTTP_READ_TIMEOUT_S` (of opening, or of its last
response) is answered 408 and closed; one that sent nothing at all is just closed.

Why it is done this way. Serve's proxy (Ray 2.60) runs uvicorn, whose HTTP protocols
(`httptools`, or `h11` without it) arm no timer before a request's headers are complete:
a slowloris client that drips a header byte at a time holds a connection for as long as it
likes, and enough of them exhaust the proxy's file descriptors. Serve has no setting for
it and no hook into the proxy process any more (`HTTPOptions.middlewares` was removed), and
the body timeout (`api.slow_clients`) only starts once the proxy has routed a request.

So each ingress replica, when it starts and every `RECHECK_S` after (a node added by the
autoscaler brings a proxy of its own), runs `patch_protocols` inside every Serve proxy
actor through Ray's `__ray_call__`. The patch wraps four methods of uvicorn's protocol
classes — connection made, data received, response complete, connection lost — to keep
one deadline per connection while no request is in progress; it is idempotent, and a
second call only updates the seconds. A request whose headers arrived (or a WebSocket
upgrade) clears the deadline: from there the body timeout and the stream's own heartbeat
take over. A load balancer's header timeout in front (nginx `client_header_timeout`,
Envoy `request_headers_timeout`) remains the first line; this is the one behind it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

PROXY_NAMESPACE, PROXY_PREFIX = "serve", "SERVE_PROXY_ACTOR"
RECHECK_S = 60.0
_BODY = json.dumps(
    {
        "error": {
            "code": "request_timeout",
            "message": "the request headers did not arrive within HERALD_HTTP_READ_TIMEOUT_S",
            "fields": [{"field": "headers", "reason": "not received in time"}],
        }
    }
).encode()
TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY
)


def _protocol_classes() -> list[type]:
    """uvicorn's HTTP/1.1 protocols present in this process (httptools is optional)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    classes: list[type] = [H11Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return classes
    return [*classes, HttpToolsProtocol]


def _in_request(protocol: Any) -> bool:
    """Headers of a request arrived (its cycle is under way) or the connection became a
    WebSocket (the transport now feeds another protocol)."""
    if protocol.transport.get_protocol() is not protocol:
        return True
    cycle = protocol.cycle
    return cycle is not None and not cycle.response_complete


def _disarm(protocol: Any) -> None:
    timer = protocol.__dict__.pop("_herald_header_timer", None)
    if timer is not None:
        timer.cancel()


def _arm(protocol: Any) -> None:
    _disarm(protocol)
    protocol._herald_partial = False
    seconds = type(protocol)._herald_header_timeout
    protocol._herald_header_timer = protocol.loop.call_later(seconds, _expire, protocol)


def _expire(protocol: Any) -> None:
    protocol.__dict__.pop("_herald_header_timer", None)
    transport = protocol.transport
    if transport.is_closing() or _in_request(protocol):
        return
    if protocol.__dict__.get("_herald_partial"):  # part of a request came: say why
        transport.write(TIMEOUT_ANSWER)
    transport.close()  # an idle connection is closed silently, as a keep-alive timeout


def _wrap(cls: type) -> None:
    made, received = cls.connection_made, cls.data_received
    complete, lost = cls.on_response_complete, cls.connection_lost

    def connection_made(self, transport):
        made(self, transport)
        _arm(self)

    def data_received(self, data):
        received(self, data)
        if _in_request(self) or self.transport.is_closing():
            _disarm(self)
        else:
            self._herald_partial = True

    def on_response_complete(self):
        complete(self)
        if not self.transport.is_closing() and not _in_request(self):
            _arm(self)  # the next request's headers are due in time as well

    def connection_lost(self, exc):
        _disarm(self)
        lost(self, exc)

    cls.connection_made, cls.data_received = connection_made, data_received
    cls.on_response_complete, cls.connection_lost = on_response_complete, connection_lost


def patch_protocols(seconds: float) -> list[str]:
    """Give this process's uvicorn protocols the header deadline (see the module docstring);
    the names of the classes patched."""
    names = []
    for cls in _protocol_classes():
        if "_herald_header_timeout" not in cls.__dict__:
            _wrap(cls)
        cls._herald_header_timeout = seconds
        names.append(cls.__name__)
    return names


def _patch_actor(_actor: Any, seconds: float) -> list[str]:
    return patch_protocols(seconds)


def install_in_proxies(seconds: float, timeout_s: float = 10.0) -> int:
    """Patch every Serve proxy running now; how many answered. A proxy that is starting
    or gone is skipped: the next round gets it."""
    import ray

    done = 0
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != PROXY_NAMESPACE or not entry["name"].startswith(PROXY_PREFIX):
            continue
        try:
            proxy = ray.get_actor(entry["name"], namespace=PROXY_NAMESPACE)
            ray.get(proxy.__ray_call__.remote(_patch_actor, seconds), timeout=timeout_s)
            done += 1
        except Exception as exc:  # noqa: BLE001 - one proxy failing must not stop the rest
            log.warning("header timeout not installed in %s: %r", entry["name"], exc)
    return done


def keep_installed(seconds: float) -> threading.Thread:
    """`install_in_proxies` now and every `RECHECK_S`, on a daemon thread of the replica."""

    def run() -> None:
        while True:
            try:
                install_in_proxies(seconds)
            except Exception as exc:  # noqa: BLE001 - a GCS hiccup: try again next round
                log.warning("header timeout round failed: %r", exc)
            time.sleep(RECHECK_S)

    thread = threading.Thread(target=run, name="herald-header-timeout", daemon=True)
    thread.start()
    return thread
