"""Herald on a three-node Ray cluster loses a worker node while order updates flow and a
campaign fans out: its actors come back on the nodes left, every accepted update still
reaches its device and its inbox, and the campaign resumes and reaches every selected user.

`ray.cluster_utils.Cluster` runs a head and two worker raylets on this machine (2 CPUs and
200 MB of object store each); Redis, the APNs and FCM emulators and Serve come from
`LocalStack`, which joins that cluster instead of starting its own Ray. The bootstrap's
SPREAD strategy puts shards, routers, senders and fan-out workers on all three nodes; the
worker node holding most of them is removed (every process on it killed) while updates
are being posted. Checked as an operator would: `/readyz` green again, every actor on a
live node, each notification accepted by a provider for its device, each inbox complete.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import ray
import redis
from ray.cluster_utils import Cluster

from cluster.names import fanout_name, router_name, sender_name, senders, shard_name
from cluster.state import keys
from ops.demo import apns_token, fcm_token
from ops.importer import import_devices
from ops.local import LocalStack
from tests.cluster.test_autoscaling import (
    ray_address_file_restored,
    rerun_in_fresh_process,
    wait_for,
)
from tests.cluster.test_campaigns import campaign_body, import_cohort
from tests.fault.test_faults import accepted_pushes, order_events, post_until_logged

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NODE_CPUS = 2
OBJECT_STORE = 200 * 1024**2
USERS = 200
CAMPAIGN_USERS = 3_000  # a flash sale to a synthetic cohort, running when the node goes
UPDATES_PER_USER = 2  # 400 order updates, each one push and one inbox item
BATCH = 20
REMOVE_AFTER = 0.4  # share of the batches posted before the node goes


@contextmanager
def multinode_stack(tmp_path: Path) -> Iterator[tuple[Cluster, LocalStack]]:
    """A head and two worker nodes, and Herald's stack on them; all of it stopped after."""
    # What LocalStack sets before its own ray.init; here the nodes' processes inherit it.
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    with ray_address_file_restored() as ours:
        cluster = Cluster()
        stack: LocalStack | None = None
        try:
            head = {"num_cpus": NODE_CPUS, "object_store_memory": OBJECT_STORE}
            cluster.add_node(**head, include_dashboard=False)
            ours.append(cluster.address)
            for _ in range(2):
                cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE)
            cluster.wait_for_nodes()
            stack = LocalStack(
                data_dir=tmp_path / "herald",
                http_port=None,
                ray_address=cluster.address,
                shards=3,
                routers=2,
                # Short retry and reclaim times: work a dead actor held comes back in the test.
                retry_base_s=0.2,
                retry_max_s=3.0,
                retry_lease_s=5.0,
                claim_idle_ms=5000,
                # A campaign whose router or worker was on the lost node resumes soon.
                campaign_lease_s=6.0,
                # Slow enough that the campaign is still sending when the node goes.
                marketing_apns_rate_per_s=200,
                marketing_fcm_rate_per_s=200,
            )
            stack.start()
            wait_for(lambda: ready(stack), 120, "Herald never became ready")
            yield cluster, stack
        finally:
            if stack is not None:
                stack.stop()
            cluster.shutdown()


def ready(stack: LocalStack) -> bool:
    try:
        return httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def actor_names(stack: LocalStack) -> list[str]:
    s = stack.settings
    names = [shard_name(i) for i in range(s.topology.shards)] + [
        router_name(i) for i in range(s.topology.routers)
    ]
    names += [fanout_name(i) for i in range(s.fanout.workers)]
    return names + [sender_name(c, lane) for c, lane in senders(s)]


def _node_id(_actor: object) -> str:
    return ray.get_runtime_context().get_node_id()


def placement(stack: LocalStack) -> dict[str, str]:
    """Herald actor name → id of the node its process runs on."""
    names = actor_names(stack)
    ns = stack.settings.topology.namespace
    calls = [ray.get_actor(n, namespace=ns).__ray_call__.remote(_node_id) for n in names]
    return dict(zip(names, ray.get(calls, timeout=120), strict=True))


class OrderUpdates:
    """USERS users with one phone each (iOS and Android alternating), two order updates
    per user, posted in batches and retried with the same event ids until accepted."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.users = [f"mn-{i}" for i in range(USERS)]
        self.tokens = {
            u: (apns_token(), "ios") if i % 2 else (fcm_token(), "android")
            for i, u in enumerate(self.users)
        }
        import_devices(
            stack.settings,
            pa.table(
                {
                    "user_id": self.users,
                    "platform": [self.tokens[u][1] for u in self.users],
                    "token": [self.tokens[u][0] for u in self.users],
                }
            ),
        )
        events = order_events(self.users, UPDATES_PER_USER)
        self.owner = {e["event_id"]: e["user_id"] for e in events}
        self.batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
        self.accepted: list[str] = []
        self.retried_posts = 0
        self.error: BaseException | None = None

    def post(self, batch: list[dict], client: httpx.Client) -> None:
        accepted, failed = post_until_logged(client, batch)
        self.accepted += accepted
        self.retried_posts += failed

    def post_all(self, pause_s: float = 0.1) -> None:
        """Every batch, paced so posting spans the node removal. Runs in a thread: a
        failure is kept for the test to raise, not lost with the thread."""
        headers = {"Authorization": f"Bearer {self.stack.api_key}"}
        try:
            with httpx.Client(base_url=self.stack.api_url, headers=headers, timeout=30) as c:
                for batch in self.batches:
                    self.post(batch, c)
                    time.sleep(pause_s)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc

    def received(self) -> Counter:
        """(notification_id, token) → times a provider accepted it (status 200)."""
        got: Counter = Counter()
        s = self.stack.settings
        for kind, url in (("apns", self.stack.apns.url), ("fcm", self.stack.fcm.url)):
            body = httpx.get(
                f"{url}/_emulator/received", verify=str(s.apns.ca_file), timeout=30
            ).json()
            got.update(accepted_pushes(kind, body))
        return got

    def inboxes(self) -> dict[str, list[bytes]]:
        r = redis.Redis.from_url(self.stack.settings.state.redis_url)
        pipe = r.pipeline(transaction=False)
        for user in self.users:
            pipe.zrange(keys.inbox(self.stack.settings, user), 0, -1)
        return dict(zip(self.users, pipe.execute(), strict=True))

    def missing(self) -> tuple[list[str], list[str]]:
        """Accepted updates no provider took for their device; users whose inbox is not
        exactly their updates (the inbox is a set of notification ids: none twice)."""
        received = self.received()
        pushes = [n for n in self.owner if received[(n, self.tokens[self.owner[n]][0])] == 0]
        wrong = [
            u
            for u, items in self.inboxes().items()
            if {m.decode() for m in items} != {f"{u}-{k}" for k in range(UPDATES_PER_USER)}
        ]
        return pushes, wrong


class Campaign:
    """A campaign to every non-VIP user of a synthetic cohort, pushes and inbox."""

    def __init__(self, stack: LocalStack, tmp_path: Path) -> None:
        self.stack = stack
        self.cohort = f"mn{int(time.time())}"
        self.users, devices = import_cohort(stack, self.cohort, CAMPAIGN_USERS, 3, tmp_path / "pop")
        vip = self.users["attributes"].str.contains('"tier":"vip"')
        self.expected_users = int((~vip).sum())
        self.tokens = devices.group_by("user_id").agg("token")
        self.campaign_id = f"sale-{self.cohort}"
        body = campaign_body(self.cohort, self.campaign_id, respect_quiet_hours=False)
        answer = httpx.post(f"{stack.api_url}/v1/campaigns", json=body, headers=self._auth())
        assert answer.status_code == 202, answer.text

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.api_key}"}

    def status(self) -> dict:
        url = f"{self.stack.api_url}/v1/campaigns/{self.campaign_id}"
        return httpx.get(url, headers=self._auth(), timeout=30).json()

    def missing(self, received: Counter) -> tuple[list[str], list[str]]:
        """Selected users with a device no provider took the campaign for; selected users
        whose inbox lacks it."""
        r = redis.Redis.from_url(self.stack.settings.state.redis_url)
        key = keys.campaign(self.stack.settings, self.campaign_id, "users")
        sent = sorted(m.decode() for m in r.smembers(key))
        assert len(sent) == self.expected_users
        tokens = dict(zip(self.tokens["user_id"], self.tokens["token"].to_list(), strict=True))
        pushes = [
            u for u in sent
            if any(received[(f"{self.campaign_id}~{u}", t)] == 0 for t in tokens.get(u, []))
        ]  # fmt: skip
        pipe = r.pipeline(transaction=False)
        for user in sent:
            pipe.zscore(keys.inbox(self.stack.settings, user), f"{self.campaign_id}~{user}")
        inbox = [u for u, score in zip(sent, pipe.execute(), strict=True) if score is None]
        return pushes, inbox


def test_worker_node_lost_mid_stream_actors_move_and_nothing_is_lost(request, tmp_path):
    if ray.is_initialized():
        return rerun_in_fresh_process(request.node.nodeid)
    with multinode_stack(tmp_path) as (cluster, stack):
        before = placement(stack)
        # SPREAD put Herald's actors on every node, worker nodes included.
        assert set(before.values()) == {n.node_id for n in cluster.list_all_nodes()}
        # The worker node holding most of Herald goes (the driver's head cannot).
        victim = max(
            cluster.worker_nodes, key=lambda n: sum(v == n.node_id for v in before.values())
        )
        moved = sorted(name for name, node in before.items() if node == victim.node_id)
        assert moved, "the removed node held no Herald actor"

        updates = OrderUpdates(stack)
        sale = Campaign(stack, tmp_path)
        wait_for(lambda: sale.status()["sent"] > 0, 60, "the campaign did not start sending")
        poster = threading.Thread(target=updates.post_all, daemon=True)
        poster.start()
        wait_for(
            lambda: len(updates.accepted) >= REMOVE_AFTER * len(updates.owner),
            60,
            "updates were not accepted before the node removal",
        )
        assert sale.status()["state"] == "running"
        accepted_before = len(updates.accepted)
        cluster.remove_node(victim)
        removed_at = time.monotonic()
        poster.join(timeout=150)
        assert not poster.is_alive(), "posting did not finish"
        if updates.error is not None:
            raise updates.error
        assert sorted(set(updates.accepted)) == sorted(updates.owner)

        # Operators' view: every Herald actor answers again, on a node that is alive.
        wait_for(lambda: ready(stack), 120, "Herald did not become ready again")
        ready_s = time.monotonic() - removed_at
        after = placement(stack)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert victim.node_id not in alive
        assert set(after.values()) <= alive
        assert all(after[name] != victim.node_id for name in moved)

        # Nothing lost: every update accepted by a provider for its device (at least once:
        # a sender lost mid-send is retried), and each inbox holds exactly its updates.
        wait_for(lambda: updates.missing() == ([], []), 150, "updates were lost")
        duplicates = sum(n - 1 for n in updates.received().values() if n > 1)
        # The campaign resumed elsewhere and reached every selected user's devices and inbox.
        wait_for(lambda: sale.status()["state"] == "done", 150, "the campaign did not finish")
        done = sale.status()
        assert done["selected"] == sale.expected_users and done["failed"] == 0
        assert sale.missing(updates.received()) == ([], [])
        print(
            f"\n{len(updates.owner)} updates, {accepted_before} accepted before the node went; "
            f"moved {moved}; ready again {ready_s:.1f} s after; all delivered "
            f"{time.monotonic() - removed_at:.1f} s after; {updates.retried_posts} posts "
            f"retried; {duplicates} provider duplicates; campaign: {done['selected']} users, "
            f"{done['failures']} fan-out runs failed and resumed"
        )
