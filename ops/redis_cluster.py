"""A real Redis Cluster on loopback: three masters (no replicas) from the system's
`redis-server`, for the tests' cluster pass (`HERALD_TEST_REDIS=cluster`) and the benchmark.

Each master is an `EmbeddedRedis` node with AOF and its own cluster config in its own
directory, so `kill(i)` then `restart(i)` is a crashed master coming back with its data
and its slots, as in production without replicas. `redis-cli --cluster create` assigns the
16,384 slots; `start()` returns once every node reports `cluster_state:ok` and agrees on
the slot map, so the first command of a test is never answered `CLUSTERDOWN`.

Every node asks for one shared password (`requirepass`, and `masterauth` for the nodes'
own links; `ops.embedded_redis`), generated once into `<data_dir>/redis.password`;
`url` carries it, and `redis-cli` gets it through `REDISCLI_AUTH`, not its command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from ops.embedded_redis import EmbeddedRedis, redis_password
from ops.processes import free_port

SLOTS = 16_384


class LocalRedisCluster:
    """`with LocalRedisCluster(dir) as cluster:`; `cluster.url` names one master, which is
    all a cluster client needs to discover the others."""

    def __init__(self, data_dir: Path | str, masters: int = 3, appendfsync: str = "always") -> None:
        server, self.cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or self.cli is None:
            raise RuntimeError("a Redis Cluster needs redis-server and redis-cli on PATH")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.password = redis_password(self.data_dir)
        self.nodes = [
            EmbeddedRedis(
                self.data_dir / f"node{i}",
                appendfsync=appendfsync,
                executable=server,
                cluster_bus_port=free_port(),
                password=self.password,
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self, timeout_s: float = 60.0) -> LocalRedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *self.addresses,
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s,
            env={**os.environ, "REDISCLI_AUTH": self.password},
        )  # fmt: skip
        self.wait_ok(timeout_s)
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node says `cluster_state:ok`, knows every other node and sees all
        slots assigned (after a create, a restart or a reshard)."""
        deadline = time.monotonic() + timeout_s
        while not all(self._node_ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _node_ok(self, node: EmbeddedRedis) -> bool:
        try:
            client = node.client(socket_connect_timeout=0.5)
            info = client.cluster("info")
            client.close()
        except redis.exceptions.RedisError:
            return False
        return (
            info.get("cluster_state") == "ok"
            and int(info.get("cluster_slots_ok", 0)) == SLOTS
            and int(info.get("cluster_known_nodes", 0)) == len(self.nodes)
        )

    def kill(self, index: int) -> None:
        """SIGKILL one master, as a crash would (its slots fail until it is back)."""
        self.nodes[index].kill()

    def restart(self, index: int, timeout_s: float = 30.0) -> None:
        """Start a killed master again from its AOF and cluster config; wait for `ok`."""
        self.nodes[index].start()
        self.wait_ok(timeout_s)

    def node_of(self, key: str) -> int:
        """Index of the master serving `key`'s slot now (by CLUSTER SLOTS)."""
        client = self.nodes[0].client()
        slot = int(client.cluster("keyslot", key))
        for start, end, (_, port, *_), *_ in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return next(i for i, node in enumerate(self.nodes) if node.port == int(port))
        raise LookupError(f"slot {slot} is served by no node")

    def migrate_slot(self, key: str, to_index: int, batch: int = 10) -> None:
        """Move `key`'s slot to master `to_index` the way `redis-cli --cluster reshard`
        does: IMPORTING / MIGRATING, MIGRATE its keys `batch` at a time (clients meanwhile
        get ASK for keys already moved), then SETSLOT NODE on every master."""
        source_index = self.node_of(key)
        source, target = (self.nodes[i].client() for i in (source_index, to_index))
        slot = int(source.cluster("keyslot", key))
        source_id, target_id = source.cluster("myid"), target.cluster("myid")
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while moving := source.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
            source.execute_command(
                "MIGRATE", "127.0.0.1", self.nodes[to_index].port, "", 0, 5000,
                "AUTH", self.password, "KEYS", *moving,
            )  # fmt: skip
        for node in self.nodes:
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalRedisCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LocalRedisCluster", "free_port"]
