"""Per-user order across router crashes and partition handovers: 500 users, each with one
iPhone, get their order's 6 statuses posted in order through the HTTP API, while a second
router joins (partitions are handed over to it), is kill -9'd (Ray restarts it; it re-takes
its partitions and their pending entries) and is then removed for good (its partitions
come back once their leases run out). Every phone must receive its 6 statuses in the
order they were accepted — read from the APNs emulator's arrival order per token — with
no gap and no status shown twice.

A kill -9 between a provider's acknowledgement and its recording re-sends those pushes
(the delivery guarantee's one duplicate window): the same `apns-id` and collapse id
straight after the original, which the phone shows once. Such a repeat is allowed only
right behind its original; the same status arriving again after a later one would put an
old status back on the phone, and fails."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pyarrow as pa
import pytest
import ray
import redis

from actors.router import EventRouter
from cluster.names import router_name
from cluster.placement import actor_options
from cluster.state import keys
from cluster.state.clients import sync_client
from ops.demo import apns_token, wait_final
from ops.importer import import_devices
from tests.cluster.test_e2e import received_for
from tests.fault.test_faults import _kill9, _pid, post_until_logged

pytestmark = [pytest.mark.eventlog, pytest.mark.slow]

USERS = 500
STATUSES = ["placed", "confirmed", "packed", "shipped", "out_for_delivery", "delivered"]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


def settled(client: redis.Redis, settings, ids: list[str]) -> bool:
    """Every notification's push recorded final (delivered, or given up) in Redis."""
    pipe = client.pipeline(transaction=False)
    for nid in ids:
        pipe.hgetall(keys.notification(settings, nid))
    for fields in pipe.execute():
        pushes = [
            json.loads(v) for k, v in fields.items() if k.startswith(b"d:") and k != b"d:inbox"
        ]
        if not pushes or any(p["status"] in ("queued", "retrying") for p in pushes):
            return False
    return True


def second_router(settings) -> ray.actor.ActorHandle:
    """Router 1 next to the session's router 0, created as `actors.bootstrap` creates them."""
    options = actor_options(settings, router_name(1), max_concurrency=1000)
    router = ray.remote(EventRouter).options(**options).remote(settings, 1)
    ray.get(router.start.remote(), timeout=120)
    return router


def pid_when_back(namespace: str, name: str) -> int | None:
    """The actor's pid once Ray has restarted it; None while it is still coming back."""
    try:
        return _pid(namespace, name)
    except ray.exceptions.RayError:
        return None


def reading(index: int, settings) -> dict[str, list[int]]:
    actor = ray.get_actor(router_name(index), namespace=settings.topology.namespace)
    return ray.get(actor.reading.remote(), timeout=60)


def test_each_phone_gets_its_statuses_in_accepted_order(stack, api, emulators, uid):
    settings = stack.settings
    ns = settings.topology.namespace
    redis_log = settings.eventlog.event_log == "redis"
    users = [f"ord-{uid}-{i}" for i in range(USERS)]
    tokens = {u: apns_token() for u in users}
    import_devices(
        settings,
        pa.table({"user_id": users, "platform": ["ios"] * USERS, "token": list(tokens.values())}),
    )
    everyone = list(range(settings.eventlog.log_partitions))
    router = second_router(settings)
    try:
        if redis_log:  # router 0 hands half the partitions over, after its batch in hand
            wait_for(lambda: reading(1, settings)["transactional"], 30, "router 1's share")
            wait_for(
                lambda: len(reading(0, settings)["transactional"]) < len(everyone),
                30,
                "router 0 to give partitions up",
            )
        accepted: list[str] = []

        def post(status_index: int) -> None:
            status = STATUSES[status_index]
            events = [
                {"event_id": f"{u}-{status_index}", "type": "order.updated", "user_id": u,
                 "order_id": f"o-{u}", "status": status}
                for u in users
            ]  # fmt: skip
            for start in range(0, len(events), 250):
                accepted.extend(post_until_logged(api, events[start : start + 250])[0])

        post(0)
        post(1)
        old_pid = _kill9(ns, router_name(1))  # mid-stream; Ray brings it back
        post(2)
        post(3)
        assert wait_for(lambda: pid_when_back(ns, router_name(1)), 60, "router 1 back") != old_pid
        ray.kill(router, no_restart=True)  # gone for good: its leases run out
        post(4)
        post(5)
        assert len(set(accepted)) == USERS * len(STATUSES)

        client = sync_client(settings)
        wait_for(lambda: settled(client, settings, accepted), 240, "every push to settle")
        if redis_log:  # every partition came back to router 0
            wait_for(
                lambda: all(
                    reading(0, settings)[lane] == everyone for lane in reading(0, settings)
                ),
                60,
                "router 0 to read every partition again",
            )
    finally:
        try:
            ray.kill(ray.get_actor(router_name(1), namespace=ns), no_restart=True)
        except ValueError:
            pass

    arrivals: dict[str, list[str]] = defaultdict(list)
    for item in received_for(emulators["apns"], set(tokens.values())):
        arrivals[item["token"]].append(item["payload"]["notification_id"])
    wrong, resent = {}, 0
    for u in users:
        got = arrivals[tokens[u]]
        shown = [n for i, n in enumerate(got) if i == 0 or n != got[i - 1]]
        resent += len(got) - len(shown)
        if shown != [f"{u}-{k}" for k in range(len(STATUSES))]:
            wrong[u] = got
    assert not wrong, f"{len(wrong)} phones out of order, with a gap or a duplicate: " + str(
        list(wrong.items())[:3]
    )
    # re-sends come only from the batches in flight when the router was killed
    in_flight = settings.topology.router_loops * settings.topology.batch_max_rows
    assert resent <= 2 * in_flight, f"{resent} pushes re-sent"


def test_entries_an_older_deployment_left_unpartitioned_are_delivered(stack, api, emulators, uid):
    """Before partitions each lane's log was one stream `stream:<lane>`: what an older
    deployment accepted there (or an older ingress replica still appends there during a
    rolling upgrade) is read by router 0, not lost."""
    if stack.settings.eventlog.event_log != "redis":
        pytest.skip("the unpartitioned stream is the Redis log's")
    user, token = f"legacy-{uid}", apns_token()
    import_devices(
        stack.settings, pa.table({"user_id": [user], "platform": ["ios"], "token": [token]})
    )
    event = {"event_id": f"legacy-{uid}", "type": "order.updated", "user_id": user,
             "order_id": f"o-{uid}", "status": "shipped"}  # fmt: skip
    client = sync_client(stack.settings)
    old_stream = keys.stream(stack.settings, "transactional")
    client.xadd(old_stream, {"e": json.dumps(event), "at": repr(time.time())})
    status = wait_final(api, [f"legacy-{uid}"], timeout_s=60)[f"legacy-{uid}"]
    assert status["state"] == "delivered", status
    got = [i["payload"]["notification_id"] for i in received_for(emulators["apns"], {token})]
    assert got == [f"legacy-{uid}"]


def test_a_users_later_events_in_one_batch_lead_the_next_batch(stack, api, emulators, uid):
    """Three statuses of each of 40 users in one request land in one batch: the first of
    each user goes at once, the later ones stay pending and lead the next batches (the
    routers count them as `deferred` on the Redis log); every phone still gets its three
    statuses in accepted order, each once (a few may be read in another batch: the
    request's entries are appended in one pipeline, not atomically)."""
    settings = stack.settings
    users = [f"dfr-{uid}-{i}" for i in range(40)]
    tokens = {u: apns_token() for u in users}
    import_devices(
        settings,
        pa.table({"user_id": users, "platform": ["ios"] * 40, "token": list(tokens.values())}),
    )

    def deferred() -> int:
        return sum(r.get("deferred", 0) for r in api.get("/v1/admin/stats").json()["routers"])

    before = deferred()
    events = [
        {"event_id": f"{u}-{k}", "type": "order.updated", "user_id": u,
         "order_id": f"o-{u}", "status": STATUSES[k]}
        for u in users
        for k in range(3)
    ]  # fmt: skip
    accepted = post_until_logged(api, events)[0]
    assert len(accepted) == 120
    wait_for(lambda: settled(sync_client(settings), settings, accepted), 120, "pushes to settle")
    arrivals: dict[str, list[str]] = defaultdict(list)
    for item in received_for(emulators["apns"], set(tokens.values())):
        arrivals[item["token"]].append(item["payload"]["notification_id"])
    expected = {u: [f"{u}-{k}" for k in range(3)] for u in users}
    wrong = {u: arrivals[tokens[u]] for u in users if arrivals[tokens[u]] != expected[u]}
    assert not wrong, f"{len(wrong)} phones wrong: {list(wrong.items())[:3]}"
    if settings.eventlog.event_log == "redis":
        assert deferred() > before, "no user's later event was deferred"
