"""Device lifecycle on the running stack: a deleted device leaves nothing behind, a token
that changed hands lives in one shard only, heartbeats move `last_seen_at`, stale devices
get no pushes (and the skip is counted), dead tokens go after their keep days."""

from __future__ import annotations

import json
import time

import httpx
import polars as pl
import pyarrow as pa
import ray

from cluster.names import shard_name
from cluster.sharding import shard_of
from cluster.state import keys
from cluster.state.clients import sync_client
from cluster.tables.devices import device_id_for
from ops.demo import apns_token, wait_final
from ops.importer import import_devices
from tests.cluster.test_e2e import register
from tests.cluster.test_me import me
from tests.cluster.test_metrics import scrape
from tests.cluster.user_tokens import user_token

DAY_S = 86_400.0
SKIPPED = "ray_herald_devices_skipped_total{reason=stale}"


def shard_index(stack, user: str) -> int:
    return int(shard_of([user], stack.settings.topology.shards)[0])


def shard(stack, user: str):
    name = shard_name(shard_index(stack, user))
    return ray.get_actor(name, namespace=stack.settings.topology.namespace)


def devices_hash(stack, user: str) -> dict[str, dict]:
    """The user's shard's devices hash in Redis: device id → stored row."""
    key = keys.shard_table(stack.settings, shard_index(stack, user), "devices")
    stored = sync_client(stack.settings).hgetall(key)
    return {k.decode(): json.loads(v) for k, v in stored.items()}


def owner_of(stack, device_id: str) -> str | None:
    value = sync_client(stack.settings).hget(keys.device_owners(stack.settings), device_id)
    return value.decode() if value is not None else None


def hashes_holding(stack, needle: str) -> list[str]:
    """Every hash of the stack's Redis with `needle` in a field or a value."""
    client, found = sync_client(stack.settings), []
    raw = needle.encode()
    for key in client.scan_iter(count=1000, _type="hash"):
        for field, value in client.hscan_iter(key, count=1000):
            if raw in field or raw in value:
                found.append(key.decode())
                break
    return found


def order_update(api: httpx.Client, uid: str, user: str, n: int = 0) -> dict:
    event_id = f"hy-{uid}-{user}-{n}"
    event = {"event_id": event_id, "type": "order.updated", "user_id": user,
             "order_id": f"o-{event_id}", "status": "shipped"}  # fmt: skip
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    return wait_final(api, [event_id], timeout_s=60)[event_id]


def pushed_to(status: dict) -> set[str]:
    """The devices a notification was pushed to (APNs, FCM; not the inbox or webhook)."""
    return {d["device_id"] for d in status["deliveries"] if d["channel"] in ("apns", "fcm")}


def test_a_deleted_device_leaves_no_token_and_gets_no_push(stack, api, uid):
    user, token = f"hy-del-{uid}", apns_token()
    device = register(api, user, "ios", token)
    assert device in devices_hash(stack, user) and owner_of(stack, device) == user
    assert api.delete(f"/v1/devices/{device}").status_code == 204
    assert device not in devices_hash(stack, user)
    assert owner_of(stack, device) is None
    assert ray.get(shard(stack, user).device.remote(device)) is None
    assert hashes_holding(stack, token) == []
    status = order_update(api, uid, user)
    assert pushed_to(status) == set() and status["deliveries"]  # the inbox only
    assert api.delete(f"/v1/devices/{device}").status_code == 404


def test_a_user_deleting_their_device_through_me_removes_it(stack, api, uid):
    user, token = f"hy-me-{uid}", apns_token()
    with me(stack, user_token(stack, user)) as mine:
        answer = mine.post("/devices", json={"platform": "ios", "token": token})
        device = answer.json()["device_id"]
        with me(stack, user_token(stack, f"hy-other-{uid}")) as other:
            assert other.delete(f"/devices/{device}").status_code == 404  # not theirs
        assert device in devices_hash(stack, user)
        assert mine.delete(f"/devices/{device}").status_code == 204
    assert device not in devices_hash(stack, user) and owner_of(stack, device) is None
    assert hashes_holding(stack, token) == []


def test_a_token_that_changed_hands_is_gone_from_the_old_owner(stack, api, uid):
    a, b, token = f"hy-a-{uid}", f"hy-b-{uid}", apns_token()
    device = register(api, a, "ios", token)
    assert register(api, b, "ios", token) == device
    row = devices_hash(stack, a).get(device)
    assert row is None or row["user_id"] == b  # A's shard holds no row of A for it
    assert device not in pl.from_arrow(ray.get(shard(stack, a).lookup.remote([a])))["device_id"]
    assert owner_of(stack, device) == b
    assert pushed_to(order_update(api, uid, a)) == set()
    assert pushed_to(order_update(api, uid, b)) == {device}


def test_heartbeats_move_last_seen_at(stack, api, uid):
    user = f"hy-hb-{uid}"
    device = register(api, user, "ios", apns_token())
    actor = shard(stack, user)
    registered = ray.get(actor.device.remote(device))["last_seen_at"]
    assert registered > time.time() - 60  # set on registration
    back_date(actor, device, time.time() - 10 * DAY_S)
    before = time.time()
    assert api.post(f"/v1/devices/{device}/heartbeat").status_code == 204
    assert ray.get(actor.device.remote(device))["last_seen_at"] >= before
    assert devices_hash(stack, user)[device]["last_seen_at"] >= before  # written through
    assert api.post("/v1/devices/dev_unknown0000/heartbeat").status_code == 404
    back_date(actor, device, time.time() - 10 * DAY_S)
    before = time.time()
    with me(stack, user_token(stack, user)) as mine:
        assert mine.post(f"/devices/{device}/heartbeat").status_code == 204
    assert ray.get(actor.device.remote(device))["last_seen_at"] >= before
    with me(stack, user_token(stack, f"hy-hb-other-{uid}")) as other:
        assert other.post(f"/devices/{device}/heartbeat").status_code == 404


def back_date(actor, device_id: str, seen: float) -> None:
    row = ray.get(actor.device.remote(device_id))
    row["last_seen_at"] = seen
    assert ray.get(actor.upsert_devices.remote(pa.Table.from_pylist([row]))) == 1


def test_stale_devices_get_no_push_and_are_counted(stack, api, uid):
    user, lonely = f"hy-st-{uid}", f"hy-st-lonely-{uid}"
    fresh = register(api, user, "ios", apns_token())
    long_ago = time.time() - 300 * DAY_S  # past the 270-day default
    stale_tokens = [apns_token(), apns_token()]
    imported = pa.table(
        {
            "user_id": [user, lonely],
            "platform": ["ios", "ios"],
            "token": stale_tokens,
            "last_seen_at": [long_ago, long_ago],
        }
    )
    assert import_devices(stack.settings, imported) == 2
    stale = device_id_for("ios", "default", stale_tokens[0])
    assert devices_hash(stack, user)[stale]["last_seen_at"] == long_ago  # the import's own
    prefs = {"channels": {"push": True, "inbox": False, "email": False}}
    assert api.put(f"/v1/users/{lonely}/preferences", json=prefs).status_code == 200
    before = scrape(stack.metrics_url).get(SKIPPED, 0)

    status = order_update(api, uid, user)
    assert pushed_to(status) == {fresh}  # the fresh device still gets it, not `stale`
    assert status["state"] == "delivered"
    lonely_status = order_update(api, uid, lonely)
    assert lonely_status["state"] == "suppressed"
    assert lonely_status["suppressed_reason"] == "stale_device"
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    while scrape(stack.metrics_url).get(SKIPPED, 0) < before + 2:
        assert time.monotonic() < deadline, "the stale skips were never counted"
        time.sleep(2)


def test_a_dead_token_is_kept_then_deleted_after_its_keep_days(stack, api, uid):
    user, token = f"hy-dead-{uid}", apns_token()
    device = register(api, user, "ios", token)
    actor = shard(stack, user)
    assert ray.get(actor.deactivate_devices.remote([device])) == 1
    dead_at = ray.get(actor.device.remote(device))["updated_at"]
    keep = stack.settings.protection.dead_token_keep_days * DAY_S
    ray.get(actor.sweep_dead_devices.remote(dead_at + keep - 60))
    assert devices_hash(stack, user)[device]["active"] is False  # kept, recognizable
    assert owner_of(stack, device) == user
    assert ray.get(actor.sweep_dead_devices.remote(dead_at + keep)) >= 1
    assert device not in devices_hash(stack, user) and owner_of(stack, device) is None
    assert hashes_holding(stack, token) == []
    created = api.post("/v1/devices", json={"user_id": user, "platform": "ios", "token": token})
    assert created.status_code == 201 and created.json()["device_id"] == device


def test_a_campaign_skips_stale_devices_and_counts_them(stack, api, uid):
    """Campaigns leave stale devices out like transactional sends, and count them too."""
    from tests.cluster.test_campaigns import wait_campaign

    user, cohort = f"hy-cs-{uid}", f"stale-{uid}"
    register(api, user, "ios", apns_token())
    long_ago = time.time() - 300 * DAY_S
    imported = pa.table(
        {"user_id": [user], "platform": ["ios"], "token": [apns_token()],
         "last_seen_at": [long_ago]}
    )  # fmt: skip
    assert import_devices(stack.settings, imported) == 1
    profile = {"attributes": {"cohort": cohort}}
    assert api.put(f"/v1/users/{user}", json=profile).status_code == 200
    before = scrape(stack.metrics_url).get(SKIPPED, 0)
    campaign = {
        "campaign_id": f"hy-cs-{uid}",
        "segment": {"attr": {"name": "cohort", "op": "eq", "value": cohort}},
        "variants": [{"variant_id": "a", "title": "Sale", "body": "Today only"}],
        "exploration": 0.0,
    }
    assert api.post("/v1/campaigns", json=campaign).status_code == 202
    done = wait_campaign(api, campaign["campaign_id"])
    assert done["targeted"] == 1 and done["selected"] == 1, done
    deadline = time.monotonic() + 60
    while scrape(stack.metrics_url).get(SKIPPED, 0) < before + 1:
        assert time.monotonic() < deadline, "the campaign's stale skip was never counted"
        time.sleep(2)


def test_a_corrupt_stored_row_is_skipped_when_a_shard_rebuilds(stack, api, uid):
    """A shard restarted while its Redis copy holds a row that does not decode (truncated,
    or of another shape) skips that row, counts it, and serves its other users."""
    user = f"hy-cr-{uid}"
    device = register(api, user, "ios", apns_token())
    client, index = sync_client(stack.settings), shard_index(stack, user)
    bad = {
        keys.shard_table(stack.settings, index, "profiles"): (f"hy-cr-bad-{uid}", b'{"user_id'),
        keys.shard_table(stack.settings, index, "devices"): (
            f"hy-cr-bad-{uid}",
            json.dumps({"device_id": f"hy-cr-bad-{uid}", "active": "yes"}).encode(),
        ),
    }
    for key, (field, value) in bad.items():
        client.hset(key, field, value)
    skipped = {t: f"ray_herald_rows_skipped_total{{table={t}}}" for t in ("profiles", "devices")}
    before = scrape(stack.metrics_url)
    try:
        old_pid = pid_of(shard(stack, user))
        ray.kill(shard(stack, user), no_restart=False)  # it restarts and rebuilds from Redis
        deadline = time.monotonic() + 120
        while pid_of(shard(stack, user)) in (None, old_pid):
            assert time.monotonic() < deadline, "the shard did not come back"
            time.sleep(1)
        status = order_update(api, uid, user)
        assert pushed_to(status) == {device}, status
        deadline = time.monotonic() + 60
        while True:
            now = scrape(stack.metrics_url)
            if all(now.get(m, 0) >= before.get(m, 0) + 1 for m in skipped.values()):
                break
            assert time.monotonic() < deadline, f"the skipped rows were never counted: {now}"
            time.sleep(2)
    finally:
        for key, (field, _) in bad.items():
            client.hdel(key, field)


def pid_of(actor) -> int | None:
    """The actor's process id; None while it is restarting."""
    try:
        return ray.get(
            actor.__ray_call__.remote(lambda _self: __import__("os").getpid()), timeout=10
        )
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
