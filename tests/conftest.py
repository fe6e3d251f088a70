"""Session fixtures: the real stack — Redis, the provider emulators, Ray and Serve — started
once. Tests isolate themselves with fresh ids (uuid), never by restarting the world.

`HERALD_TEST_REDIS=cluster` runs the stack on a real 3-master Redis Cluster (`make test`'s
third pass, over the `eventlog` tests) instead of the embedded single Redis."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from ops.local import LocalStack
from ops.redis_cluster import LocalRedisCluster
from tests.cluster.user_tokens import TEST_SECRET
from tests.netfaults import TansuBroker, WebhookSink


@pytest.fixture(scope="session")
def kafka() -> Iterator[TansuBroker]:
    broker = TansuBroker()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.stop()


ON_CLUSTER = os.environ.get("HERALD_TEST_REDIS", "single") == "cluster"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """Three masters from the system's redis-server, AOF with fsync always (as the single
    Redis of the local stack), created with `redis-cli --cluster create`. Outside the
    cluster pass a machine without them skips the tests that want one."""
    if not ON_CLUSTER and not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    with LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kafka: TansuBroker,
    webhook: WebhookSink,
) -> Iterator[LocalStack]:
    on_cluster = {}
    if ON_CLUSTER:
        cluster = request.getfixturevalue("redis_cluster")
        on_cluster = {"redis_url": cluster.url, "redis_cluster": True}
    with LocalStack(
        **on_cluster,
        data_dir=tmp_path_factory.mktemp("herald"),
        http_port=None,
        num_cpus=2,
        shards=2,
        routers=1,
        api_keys={"test-admin": ["ingest", "admin"], "test-ingest": ["ingest"]},
        # /v1/me is open from the start (tests/cluster/user_tokens.py mints with it).
        user_token_secret=TEST_SECRET,
        kafka_bootstrap=kafka.bootstrap,
        # `make test` runs the log-sensitive tests a second time on the Kafka event log.
        event_log=os.environ.get("HERALD_TEST_EVENT_LOG", "redis"),
        fallback_webhook_url=webhook.url,
        # Short backoff so a delivery that exhausts its attempts does so within a test.
        retry_base_s=0.2,
        retry_max_s=3.0,
        feedback_export_s=0.5,
        # A failed campaign fan-out comes back after its lease: short, so tests see it.
        campaign_lease_s=6.0,
        # One fixed fan-out worker; campaigns over the 2 shards grow the pool to 2.
        fanout_workers=1,
        fanout_workers_max=2,
        # Push senders grow to 2 replicas per lane once a lane's backlog passes 1,500 (the
        # campaign and fault tests cross it), and shrink 5 s after it is gone. An FCM replica
        # is counted as 250/s so that the marketing lane's 500/s ceiling lets it grow too.
        sender_replicas_max=2,
        sender_fcm_capacity_per_s=250,
        sender_backlog_per_replica=1_500,
        sender_idle_s=5.0,
        sender_scale_interval_s=1.0,
    ) as running:
        deadline = time.monotonic() + 60
        while httpx.get(f"{running.api_url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "Herald never became ready"
            time.sleep(0.5)
        yield running


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer test-admin"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def emulators(stack: LocalStack) -> Iterator[dict[str, httpx.Client]]:
    """HTTP/2 clients of the APNs and FCM emulators' control endpoints, trusting their CA."""
    ca = str(stack.settings.apns.ca_file)
    with (
        httpx.Client(base_url=stack.apns.url, verify=ca, http2=True, timeout=30) as apns,
        httpx.Client(base_url=stack.fcm.url, verify=ca, http2=True, timeout=30) as fcm,
    ):
        yield {"apns": apns, "fcm": fcm}


@pytest.fixture
def uid() -> str:
    """A fresh id prefix per test."""
    return uuid.uuid4().hex[:10]
