"""The Ray autoscaler adds a worker node when a campaign's fan-out asks for more CPUs than
the cluster has, and removes it once the fan-out pool has shrunk back.

A fake multi-node cluster on this machine (Ray's `fake_multinode` provider) with the node
types of `cluster/local-cluster.yaml`: the head advertises 2 CPUs, each fake worker 2.
Herald's fan-out pool (`actors.fanout_pool`) has one fixed worker and grows to one worker
per shard plan, 1 CPU each: a 4-shard campaign wants 4 CPUs, 2 are there, so the grown
workers wait until the autoscaler adds a `ray.worker.cpu` node. Once the pool is idle, its
grown workers are removed; with `idle_timeout_minutes` at 0.1 the node must go away too.
What is asserted is what an operator reads in `ray status`: live nodes and total CPUs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import yaml
from ray._common.network_utils import build_address
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID
from ray.cluster_utils import AutoscalingCluster, Cluster

from actors.bootstrap import kill_actors, start_fanout_workers
from actors.fanout_pool import FanoutPool, running_fanout_workers
from actors.sender_pool import SenderPool, running_sender_replicas, start_sender
from cluster.eventlog import RedisEventLog
from cluster.names import fanout_name, sender_name
from cluster.settings import HeraldSettings
from cluster.state.clients import async_client
from cluster.vocabulary import PUSH_CHANNELS
from ops.embedded_redis import EmbeddedRedis, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = ROOT / "cluster" / "local-cluster.yaml"
WORKER_TYPE = "ray.worker.cpu"
# What `AutoscalingCluster.start` sets for the head: the fake provider refuses to run
# without the first; the second makes the monitor decide every second instead of every 5.
FAKE_CLUSTER_ENV = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}


class HeraldAutoscalingCluster(AutoscalingCluster):
    """`AutoscalingCluster` on `cluster/local-cluster.yaml`, started as a cluster this test
    owns. The stock class reads `fake_multi_node/example.yaml` (not in the 2.60 wheel) and
    its start()/shutdown() run `ray stop --force`, which would kill every Ray on this
    machine, other sessions' included. So: our file as the base config, the head started
    with `ray.cluster_utils.Cluster` on a free GCS port the fake provider is told about,
    and only our own processes stopped."""

    def __init__(self, head_resources: dict, worker_node_types: dict, **config: Any) -> None:
        self.gcs_address = build_address(ray.util.get_node_ip_address(), free_port())
        self.cluster: Cluster | None = None
        self._environ: dict[str, str | None] = {}
        super().__init__(head_resources, worker_node_types, **config)

    def _generate_config(
        self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs
    ) -> dict:
        config = yaml.safe_load(LOCAL_CLUSTER.read_text())
        config["available_node_types"] = {
            **worker_node_types,
            "ray.head.default": {
                "resources": dict(head_resources),
                "node_config": {},
                "max_workers": 0,
            },
        }
        # Without it the fake provider joins its workers to port 6379, whoever runs there.
        config["provider"]["gcs_address"] = self.gcs_address
        config.update(config_kwargs)
        return config

    def start(self, config_dir: Path) -> None:  # type: ignore[override]
        """What `ray start --head --autoscaling-config=...` does with RAY_FAKE_CLUSTER=1:
        the head reports the fake head node id and the monitor checks every second."""
        path = config_dir / "autoscaling.json"
        path.write_text(json.dumps(self._config))
        self._environ = {k: os.environ.get(k) for k in FAKE_CLUSTER_ENV}
        os.environ.update(FAKE_CLUSTER_ENV)
        resources = dict(self._head_resources)
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": resources.pop("CPU"),
                "object_store_memory": resources.pop("object_store_memory", 200 * 1024**2),
                "resources": resources,
                "gcs_server_port": int(self.gcs_address.rsplit(":", 1)[1]),
                "autoscaling_config": str(path),
                "include_dashboard": False,
                "env_vars": {"RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID},
            },
        )

    def shutdown(self) -> None:
        """Stop our head (monitor included), then any fake worker raylet the monitor started
        and had not removed yet: found by the GCS address on its command line, ended by pid."""
        if self.cluster is not None:
            self.cluster.shutdown()
        port_flag = f"--gcs-address={self.gcs_address}"
        for process in psutil.process_iter(["pid", "cmdline"]):
            if port_flag in (process.info["cmdline"] or []):
                process.kill()
        for name, value in self._environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_node_types() -> dict:
    """The worker types of `cluster/local-cluster.yaml`, as ops would run them."""
    config = yaml.safe_load(LOCAL_CLUSTER.read_text())
    return {n: t for n, t in config["available_node_types"].items() if n == WORKER_TYPE}


def _node_id(_actor: object) -> str:
    return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until `condition()`; the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.5)
    return time.monotonic() - start


@contextmanager
def ray_address_file_restored() -> Iterator[list[str]]:
    """`Cluster` writes its address where `ray.init("auto")` and `ray status` on this machine
    look (/tmp/ray/ray_current_cluster). Afterwards, if the file still names a cluster of
    ours (the caller adds their addresses to the list), put back what was there before, so
    no one is sent to a cluster this test has stopped."""
    path = Path(ray._private.utils.get_ray_address_file(None))
    before = path.read_text() if path.exists() else None
    ours: list[str] = []
    try:
        yield ours
    finally:
        if path.exists() and path.read_text().strip() in ours:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(before)


def rerun_in_fresh_process(nodeid: str) -> None:
    """A driver joins one Ray cluster. When this process already has one (the session stack
    of conftest.py, or another module's), the test runs in a fresh interpreter instead."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@contextmanager
def autoscaling_cluster(tmp_path: Path) -> Iterator[HeraldAutoscalingCluster]:
    cluster = HeraldAutoscalingCluster(
        head_resources={"CPU": 2},
        worker_node_types=worker_node_types(),
        # Fast to watch: an idle fake worker goes after 6 s instead of a minute.
        idle_timeout_minutes=0.1,
    )
    with ray_address_file_restored() as ours:
        ours.append(cluster.gcs_address)
        try:
            cluster.start(tmp_path)
            ray.init(address=cluster.gcs_address, log_to_driver=False)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def test_autoscaler_adds_a_worker_for_fanout_and_removes_it_when_idle(request, tmp_path):
    if ray.is_initialized():
        return rerun_in_fresh_process(request.node.nodeid)
    redis = EmbeddedRedis(tmp_path / "redis").start()
    settings = HeraldSettings(
        data_dir=tmp_path / "herald",
        redis_url=redis.url,
        namespace=f"test-autoscale-{os.getpid()}",
        # One fixed worker; a campaign over 4 shards grows the pool to 4, 1 CPU each.
        fanout_workers=1,
        fanout_workers_max=4,
        fanout_num_cpus=1,
        fanout_grow_wait_s=60,
        fanout_idle_s=1,
    )
    try:
        with autoscaling_cluster(tmp_path):
            assert len(alive_nodes()) == 1
            assert ray.cluster_resources()["CPU"] == 2
            ray.get(start_fanout_workers(settings)[0].ping.remote(), timeout=60)

            async def grow() -> tuple[list[dict], float]:
                pool = FanoutPool(settings, async_client(settings))
                started = time.monotonic()
                workers = await pool.workers_for(4)  # the demand of a 4-shard campaign
                took = time.monotonic() - started
                return await asyncio.gather(*[w.ping.remote() for w in workers]), took, workers

            answers, grow_s, workers = asyncio.run(grow())
            # 4 CPUs wanted, 2 on the head: the pool waited for the node the autoscaler added
            assert sorted(a["worker"] for a in answers) == [0, 1, 2, 3]
            assert len(alive_nodes()) == 2
            assert ray.cluster_resources()["CPU"] == 4
            (worker_node,) = [n for n in alive_nodes() if n["NodeID"] != FAKE_HEAD_NODE_ID]
            # The node type of cluster/local-cluster.yaml, as the autoscaler launched it.
            (worker_type,) = worker_node_types().values()
            assert worker_node["Resources"]["CPU"] == worker_type["resources"]["CPU"]
            assert (
                worker_node["Resources"]["object_store_memory"]
                == worker_type["resources"]["object_store_memory"]
            )
            placed = set(ray.get([w.__ray_call__.remote(_node_id) for w in workers], timeout=60))
            assert placed == {FAKE_HEAD_NODE_ID, worker_node["NodeID"]}

            # No campaign for fanout_idle_s: the grown workers go, then their node.
            time.sleep(settings.fanout.idle_s + 0.5)

            async def shrink() -> int:
                return await FanoutPool(settings, async_client(settings)).shrink_if_idle()

            assert asyncio.run(shrink()) == 3
            removed_s = wait_for(lambda: len(alive_nodes()) == 1, 60, "the idle worker stayed")
            assert ray.cluster_resources()["CPU"] == 2
            assert running_fanout_workers(settings) == [fanout_name(0)]
            print(f"\nworker node added within {grow_s:.1f} s, removed {removed_s:.1f} s after "
                  "the pool shrank")  # fmt: skip
            kill_actors(settings)
    finally:
        redis.stop()


def test_autoscaler_adds_a_worker_for_senders_and_removes_it_when_idle(request, tmp_path):
    """The marketing lane's backlog (log entries no router has taken) asks for a second
    replica of its APNs and FCM senders, 1 CPU each; with the fixed senders on the 2-CPU
    head only one fits, so the autoscaler adds a node. Once the backlog is gone the lane
    shrinks back to one sender per channel and the node goes."""
    if ray.is_initialized():
        return rerun_in_fresh_process(request.node.nodeid)
    redis = EmbeddedRedis(tmp_path / "redis").start()
    settings = HeraldSettings(
        data_dir=tmp_path / "herald",
        redis_url=redis.url,
        namespace=f"test-autoscale-senders-{os.getpid()}",
        sender_replicas_max=2,
        sender_backlog_per_replica=100,
        sender_fcm_capacity_per_s=250,  # the marketing lane's 500 FCM/s: room for 2
        sender_num_cpus=1,
        sender_grow_wait_s=60,
        sender_idle_s=1,
    )
    lane = "marketing"
    try:
        with autoscaling_cluster(tmp_path):
            fixed = [start_sender(settings, channel, lane) for channel in PUSH_CHANNELS]
            ray.get([s.ping.remote() for s in fixed], timeout=60)
            log = RedisEventLog(settings)
            events = [
                (f"e{i}", lane, {"event_id": f"e{i}", "type": "price.dropped"}) for i in range(500)
            ]

            async def scale(backlog: bool) -> tuple[dict[str, int], float]:
                log.redis = async_client(settings)  # one client per event loop
                pool = SenderPool(settings, log.redis, log)
                if backlog:
                    await log.ensure_groups()
                    await log.append(events)  # 500 entries, no router: wants 5 → 2 replicas
                else:
                    await log.redis.delete(*log.streams(lane))  # every partition's
                started = time.monotonic()
                return await pool.scale(), time.monotonic() - started

            sizes, grow_s = asyncio.run(scale(backlog=True))
            assert sizes == {"transactional": 1, lane: 2}
            assert len(alive_nodes()) == 2
            assert ray.cluster_resources()["CPU"] == 4
            grown = [
                ray.get_actor(sender_name(c, lane, 1), namespace=settings.topology.namespace)
                for c in PUSH_CHANNELS
            ]
            placed = set(ray.get([s.__ray_call__.remote(_node_id) for s in grown], timeout=60))
            assert len(placed) == 2, "one grown sender fits the head, the other the new node"

            # Backlog gone: after sender_idle_s the size drops, then the replicas go.
            time.sleep(settings.senders.idle_s + 0.5)
            assert asyncio.run(scale(backlog=False))[0][lane] == 1
            time.sleep(3.5)  # routers see the new size before a replica is removed
            asyncio.run(scale(backlog=False))
            assert running_sender_replicas(settings, "apns", lane) == [0]
            assert running_sender_replicas(settings, "fcm", lane) == [0]
            removed_s = wait_for(lambda: len(alive_nodes()) == 1, 60, "the idle worker stayed")
            assert ray.cluster_resources()["CPU"] == 2
            print(f"\nsender node added within {grow_s:.1f} s, removed {removed_s:.1f} s after "
                  "the senders shrank")  # fmt: skip
            kill_actors(settings)
    finally:
        redis.stop()
