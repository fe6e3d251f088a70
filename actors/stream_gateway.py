"""The stream gateway: one actor per node address, serving the live streams
(`api.stream_app`) under its own uvicorn on `HERALD_STREAM_PORT`, off Serve's proxy.

Why an actor running a server rather than a Serve deployment: Serve answers a WebSocket
through its HTTP proxy, a Ray call per frame, and counts every open socket as one of a
replica's ongoing requests; past about 2,000 sockets on this box the proxy missed health
checks and Serve restarted it, dropping them all (`api.stream_app` says more). Here a socket
is a plain asyncio connection in the process that holds its hub subscription.

Why a thread: uvicorn runs its own event loop on a thread of the actor, so the actor's
`ping` (readiness, ops) answers on Ray's side even while the loop is busy with thousands of
sockets, and a server that could not bind its port is reported by `ping` instead of being
restarted by Ray in a loop.

Placement: one gateway per node *address* (named by it, `cluster.names.gateway_name`),
pinned to that node with a hard node affinity, because the port is per address (a test's
`ray.cluster_utils.Cluster` runs several nodes on 127.0.0.1). Ray restarts a crashed one
on its node (`max_restarts=-1`); a gateway of a node that is gone dies with it. Every
ingress replica calls `keep_gateways`, which looks for nodes without a gateway every
`RECHECK_S`, so a node the autoscaler adds gets its own within a minute.
"""

from __future__ import annotations

import logging
import threading
import time

import ray
import uvicorn
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from api.header_timeout import patch_protocols
from api.stream_app import reconfigure, stream_app
from cluster.logs import configure_logging
from cluster.names import gateway_name
from cluster.settings import HeraldSettings

log = logging.getLogger("herald.stream.gateway")

RECHECK_S = 60.0
START_WAIT_S = 30.0
CALL_S = START_WAIT_S + 30.0  # a gateway just created answers after its start
# A client only sends pongs and pings: a small frame limit keeps a hostile one cheap.
WS_MAX_BYTES = 64 * 1024


class StreamGateway:
    """uvicorn serving `api.stream_app` on `(stream_host, stream_port)` of its node."""

    def __init__(self, settings: HeraldSettings, generation: float) -> None:
        configure_logging(settings)
        self.generation = generation
        # The header read timeout the Serve proxies get (`api.header_timeout`), here too.
        patch_protocols(settings.protection.http_read_timeout_s)
        self.address = (settings.api.stream_host, settings.api.stream_port)
        self.app = stream_app(settings)
        config = uvicorn.Config(
            self.app,
            host=self.address[0],
            port=self.address[1],
            http="httptools",
            ws="websockets",
            ws_ping_interval=None,  # the stream's own ping/pong (`api.live`) keeps time
            ws_max_size=WS_MAX_BYTES,
            backlog=4096,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.error: str | None = None
        self.thread = threading.Thread(target=self._serve, name="stream-gateway", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_WAIT_S
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            self.error = self.error or f"not serving after {START_WAIT_S:.0f} s"
            log.error("stream gateway on %s:%d: %s", *self.address, self.error)

    def _serve(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # uvicorn exits (SystemExit) when it cannot bind
            self.error = f"{type(exc).__name__}: {exc}"
        if self.error is None:
            self.error = "the server stopped"

    def configure(self, settings: HeraldSettings, generation: float) -> str:
        """Settings of an ingress replica started at `generation` (its wall clock):
        "stale" (the gateway has a newer replica's), "same", "updated" (keys, tokens,
        origins: taken in place, sockets stay), or "restart" (anything else differs)."""
        if generation < self.generation:
            return "stale"
        if settings == self.app.state.checks.settings:
            return "same"
        if not reconfigure(self.app, settings):
            return "restart"
        self.generation = generation
        log.info("stream gateway took new keys, tokens or origins")
        return "updated"

    def ping(self) -> dict:
        """The gateway's address and open sockets; raises when it is not serving."""
        if self.error is not None or not self.server.started:
            raise RuntimeError(f"stream gateway {self.address}: {self.error or 'starting'}")
        live = getattr(self.app.state, "live", None)
        return {
            "host": self.address[0],
            "port": self.address[1],
            "sockets": live.hub.sockets() if live else 0,
        }


def gateway_nodes() -> dict[str, str]:
    """{node address: node id} of the alive nodes, one node per address."""
    nodes: dict[str, str] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            nodes.setdefault(node["NodeManagerAddress"], node["NodeID"])
    return nodes


def _gateway(settings: HeraldSettings, address: str, node_id: str, generation: float):
    return (
        ray.remote(StreamGateway)
        .options(
            name=gateway_name(address),
            namespace=settings.topology.namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_concurrency=4,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote(settings, generation)
    )


def _replace(settings: HeraldSettings, handle, address: str, node_id: str, generation: float):
    """Kill the gateway and start it again with `settings` once its name is free."""
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + CALL_S
    while time.monotonic() < deadline:
        try:
            ray.get_actor(gateway_name(address), namespace=settings.topology.namespace)
        except ValueError:
            break
        time.sleep(0.2)
    _gateway(settings, address, node_id, generation)


def ensure_gateways(settings: HeraldSettings, generation: float) -> dict[str, str]:
    """Create (or find) the gateway of every node address and hand it these settings (a
    redeploy's new keys reach running gateways); a gateway whose other settings changed
    is replaced. {address: what `configure` answered, or the error}."""
    answers: dict[str, str] = {}
    for address, node_id in gateway_nodes().items():
        handle = _gateway(settings, address, node_id, generation)
        try:
            answer = ray.get(handle.configure.remote(settings, generation), timeout=CALL_S)
            if answer == "restart":
                _replace(settings, handle, address, node_id, generation)
        except Exception as exc:  # one node's gateway must not stop the others'
            answer = f"{type(exc).__name__}: {exc}"
        answers[address] = answer
    return answers


def keep_gateways(settings: HeraldSettings) -> threading.Thread:
    """`ensure_gateways` now and every `RECHECK_S` on a daemon thread (see the docstring);
    this replica's start time orders its settings against other replicas'."""
    generation = time.time()

    def run() -> None:
        while True:
            try:
                ensure_gateways(settings, generation)
            except Exception:
                log.exception("could not ensure the stream gateways")
            time.sleep(RECHECK_S)

    thread = threading.Thread(target=run, name="herald-stream-gateways", daemon=True)
    thread.start()
    return thread
