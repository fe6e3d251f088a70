"""Device tokens at rest: after registrations, order updates, a retry, a dead letter and
its replay, a device unregistered while its push waited to be retried, and a campaign
whose sends and feedback reach the Parquet log, no registered token's bytes are anywhere
in Redis (every key, every type), its AOF, or the feedback log — while every push still
reaches the emulators with the right token. Then a key rotation on the running stack, the
way an operator does it (`ops.cli.keys`): add a key last, restart, `rotate`, remove the
old key, restart — pushes keep arriving throughout."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import ray

from cluster.names import shard_name
from cluster.sharding import shard_of
from cluster.state import keys
from cluster.state.clients import sync_client
from cluster.state.dead_letters import list_dead_letters, replay_dead_letters
from cluster.state.sealing import KEY_FILE, kid_of
from ops.cli.keys import rotate
from ops.demo import apns_token, fcm_token, wait_final
from pipelines import feedback_log
from tests.cluster.test_dead_letters import wait_for
from tests.cluster.test_e2e import register

pytestmark = pytest.mark.slow


# --- where tokens could be ---------------------------------------------------------------
def redis_blobs(client) -> dict[bytes, bytes]:
    """Every key of the Redis, of every type, with all it holds as one byte string."""
    found: dict[bytes, bytes] = {}
    batch: list[bytes] = []
    for key in client.scan_iter(count=1_000):
        batch.append(key)
        if len(batch) == 500:
            found.update(_read_keys(client, batch))
            batch = []
    found.update(_read_keys(client, batch))
    return found


def _read_keys(client, batch: list[bytes]) -> dict[bytes, bytes]:
    pipe = client.pipeline(transaction=False)
    for key in batch:
        pipe.type(key)
    kinds = pipe.execute()
    read = {
        b"string": lambda p, k: p.get(k),
        b"hash": lambda p, k: p.hgetall(k),
        b"zset": lambda p, k: p.zrange(k, 0, -1),
        b"list": lambda p, k: p.lrange(k, 0, -1),
        b"set": lambda p, k: p.smembers(k),
        b"stream": lambda p, k: p.xrange(k),
    }
    pipe = client.pipeline(transaction=False)
    kept = [(key, kind) for key, kind in zip(batch, kinds, strict=True) if kind in read]
    assert {kind for kind in kinds} <= {*read, b"none"}, kinds  # no type left unread
    for key, kind in kept:
        read[kind](pipe, key)
    values = pipe.execute()
    return {key: key + b"\n" + _flat(v) for (key, _), v in zip(kept, values, strict=True)}


def _flat(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict):
        return b"\n".join(_flat(k) + b"=" + _flat(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return b"\n".join(_flat(v) for v in value)
    return str(value).encode()


def parquet_cells(root: Path) -> dict[Path, str]:
    """Every feedback-log file's string cells, decoded (compression hides no byte)."""
    out = {}
    for path in sorted(root.rglob("*.parquet")):
        frame = pl.read_parquet(path)
        strings = frame.select(pl.col(pl.String)).rows()
        out[path] = "\n".join("\t".join(v or "" for v in row) for row in strings)
        out[path] += "\n" + path.read_bytes().decode("latin-1")
    return out


def aof_bytes(stack) -> dict[Path, bytes]:
    """The embedded Redis' files: the AOF (base and increments) and any RDB."""
    if stack.redis is None:
        pytest.skip("the stack's Redis is not its own (no AOF to read)")
    return {p: p.read_bytes() for p in Path(stack.redis.data_dir).rglob("*") if p.is_file()}


def hits(places: dict, tokens: dict[str, str]) -> list[tuple[str, str]]:
    """(place, whose token) for every token found in a place."""
    found = []
    for where, blob in places.items():
        for who, token in tokens.items():
            needle = token.encode() if isinstance(blob, bytes) else token
            if needle in blob:
                found.append((str(where)[:120], who))
    return found


# --- pushes ------------------------------------------------------------------------------
def order(event_id: str, user: str) -> dict:
    """An order update of an order of its own (no update of another overtakes it)."""
    return {"event_id": event_id, "type": "order.updated", "user_id": user,
            "order_id": f"o-{event_id}", "status": "packed"}  # fmt: skip


def pushes(emulator, token: str) -> list[int]:
    got = emulator.get("/_emulator/received").json()
    items = got["received"] if isinstance(got, dict) else got
    return [i["status"] for i in items if i.get("token") == token]


def device_status(api, nid: str, channel: str) -> dict | None:
    status = api.get(f"/v1/notifications/{nid}").json()
    found = [d for d in status.get("deliveries", []) if d["channel"] == channel]
    return found[0] if found else None


def retry_members(stack) -> list[bytes]:
    client = sync_client(stack.settings)
    return [m for lane in ("transactional", "marketing") for m in
            client.zrange(keys.retries(stack.settings, lane), 0, -1)]  # fmt: skip


def test_no_device_token_is_stored_anywhere(stack, api, emulators, uid):
    apns, fcm = emulators["apns"], emulators["fcm"]
    users = {who: f"rest-{who}-{uid}" for who in ("ios", "android", "dead", "gone", "camp")}
    tokens = {"ios": apns_token(), "android": fcm_token(), "dead": apns_token(),
              "gone": apns_token(), "camp": fcm_token()}  # fmt: skip
    platform = {"ios": "ios", "android": "android", "dead": "ios", "gone": "ios", "camp": "web"}
    devices = {who: register(api, users[who], platform[who], tokens[who]) for who in users}
    cohort = f"rest{uid}"
    api.put(
        f"/v1/users/{users['camp']}", json={"attributes": {"cohort": cohort}}
    ).raise_for_status()

    # Order updates reach the phones with their own tokens.
    sent = [order(f"rest-{who}-{uid}", users[who]) for who in ("ios", "android")]
    api.post("/v1/events", json={"events": sent}).raise_for_status()
    final = wait_final(api, [e["event_id"] for e in sent], timeout_s=60)
    assert {s["state"] for s in final.values()} == {"delivered"}, final
    assert pushes(apns, tokens["ios"]) == [200]
    assert pushes(fcm, tokens["android"]) == [200]

    # APNs failing: one push retried until it is dead-lettered, one whose device is
    # unregistered while it waits in the retry set.
    apns.post("/_emulator/faults", json={"error_rate": {"500": 1.0}}).raise_for_status()
    try:
        failing = [order(f"rest-{who}-{uid}", users[who]) for who in ("dead", "gone")]
        api.post("/v1/events", json={"events": failing}).raise_for_status()
        gone_nid, dead_nid = f"rest-gone-{uid}", f"rest-dead-{uid}"
        wait_for(lambda: (device_status(api, gone_nid, "apns") or {}).get("status") == "retrying")
        waiting = [m for m in retry_members(stack) if devices["gone"].encode() in m]
        assert waiting, "the push waits in the retry set, by device id"
        assert all("token" not in json.loads(m) for m in waiting)
        assert api.delete(f"/v1/devices/{devices['gone']}").status_code == 204
        wait_for(
            lambda: (device_status(api, dead_nid, "apns") or {}).get("status") == "dead_lettered",
            timeout_s=120,
        )
    finally:
        apns.post("/_emulator/faults", json={}).raise_for_status()
    gone = wait_for(
        lambda: (s := device_status(api, gone_nid, "apns") or {}).get("status") == "dead" and s
    )
    assert "device gone" in gone["last_error"]
    assert 200 not in pushes(apns, tokens["gone"])

    # The dead letter names the device, not the token; replayed, it reaches the phone.
    [dead] = [d for d in list_dead_letters(stack.settings, 10_000)
              if d["body"].get("device_id") == devices["dead"]]  # fmt: skip
    assert "token" not in dead["body"] and dead["kind"] == "delivery"
    assert replay_dead_letters(stack.settings, [dead["id"]]) == 1
    assert wait_final(api, [dead_nid], timeout_s=60)[dead_nid]["state"] == "delivered"
    assert pushes(apns, tokens["dead"])[-1] == 200

    # A campaign: its sends and an open land in the Parquet feedback log.
    cid = f"rest{uid}"
    campaign = {"campaign_id": cid, "category": "fashion", "exploration": 0.0,
                "segment": {"attr": {"name": "cohort", "op": "eq", "value": cohort}},
                "variants": [{"variant_id": "v1", "title": "Sale", "body": "Now"}]}  # fmt: skip
    assert api.post("/v1/campaigns", json=campaign).status_code == 202
    wait_for(lambda: api.get(f"/v1/campaigns/{cid}").json()["state"] == "done", timeout_s=120)
    wait_for(lambda: 200 in pushes(fcm, tokens["camp"]))
    feedback = {"notification_id": f"{cid}~{users['camp']}", "user_id": users["camp"],
                "action": "opened"}  # fmt: skip
    api.post("/v1/feedback", json=feedback).raise_for_status()
    root = stack.settings.feedback_root

    def logged() -> bool:
        actions = feedback_log.read(root, "actions")
        sends = feedback_log.read(root, "sends")
        return bool(
            actions.height
            and (actions["notification_id"] == feedback["notification_id"]).any()
            and sends.height
            and (sends["campaign_id"] == cid).any()
        )

    wait_for(logged, timeout_s=30)

    # The shard still holds the token (memory is not sealed), Redis only its sealed form.
    owner = int(shard_of([users["ios"]], stack.settings.topology.shards)[0])
    shard = ray.get_actor(shard_name(owner), namespace=stack.settings.topology.namespace)
    held = ray.get(shard.tokens_for.remote([devices["ios"]])).to_pylist()
    assert held == [{"device_id": devices["ios"], "user_id": users["ios"], "token": tokens["ios"]}]

    # Now look everywhere. A plaintext canary proves each scan sees what it should.
    client = sync_client(stack.settings)
    canary = apns_token()
    client.set(stack.settings.state.key_prefix + f"rest-canary:{uid}", canary)
    in_redis, in_aof, in_log = redis_blobs(client), aof_bytes(stack), parquet_cells(root)
    assert hits(in_redis, {"canary": canary}) and hits(in_aof, {"canary": canary})
    assert hits(in_aof, {"user": devices["camp"]}), "the AOF holds the device rows"
    assert hits(in_log, {"user": users["camp"]}), "the log files hold the campaign's rows"
    assert hits(in_redis, tokens) == []
    assert hits(in_aof, tokens) == []
    assert hits(in_log, tokens) == []
    client.delete(stack.settings.state.key_prefix + f"rest-canary:{uid}")


# --- rotation ----------------------------------------------------------------------------
def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def write_key_file(path: Path, entries: dict[str, str]) -> None:
    """What an operator does by hand: the dev key file rewritten whole, still 0600."""
    tmp = path.with_name(path.name + ".edit")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(entries, out)
    os.replace(tmp, path)


def restart_shards(stack) -> None:
    """Every shard killed and brought back by Ray (max_restarts): each reads its keys anew
    and rebuilds its memory from Redis, opening every sealed token."""
    namespace = stack.settings.topology.namespace
    handles = [ray.get_actor(shard_name(s), namespace=namespace)
               for s in range(stack.settings.topology.shards)]  # fmt: skip
    for handle in handles:
        ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + 90
    for handle in handles:
        while True:
            try:
                ray.get(handle.ping.remote(), timeout=10)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                assert time.monotonic() < deadline, "a shard did not come back"
                time.sleep(0.5)


def kids(stack) -> dict[str, set[str | None]]:
    """device id → the key id its stored token is sealed under, over every shard."""
    client = sync_client(stack.settings)
    out: dict[str, set[str | None]] = {}
    for s in range(stack.settings.topology.shards):
        for field, value in client.hscan_iter(keys.shard_table(stack.settings, s, "devices")):
            out[field.decode()] = kid_of(json.loads(value).get("token") or "")
    return out


class Traffic(threading.Thread):
    """Order updates to `users`, one every 0.3 s, until stopped: the stack keeps delivering
    while keys change under it."""

    def __init__(self, api, users: list[str], tag: str) -> None:
        super().__init__(daemon=True)
        self.api, self.users, self.tag = api, users, tag
        self.sent: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            nid = f"{self.tag}-{len(self.sent)}"
            user = self.users[len(self.sent) % len(self.users)]
            try:
                self.api.post("/v1/events", json={"events": [order(nid, user)]}).raise_for_status()
                self.sent.append(nid)
            except Exception:  # noqa: BLE001 - a restart may refuse one; the next goes
                pass
            self.stop.wait(0.3)


def test_rotate_reseals_under_the_new_key_while_the_stack_delivers(stack, api, emulators, uid):
    path = Path(stack.settings.local.data_dir) / KEY_FILE
    original = json.loads(path.read_text())
    old = list(original)[-1]
    users = [f"rot-{uid}-{i}" for i in range(6)]  # both shards, by their hashes
    tokens = {u: apns_token() for u in users}
    devices = {register(api, u, "ios", t): u for u, t in tokens.items()}
    assert {kids(stack)[d] for d in devices} == {old}

    traffic = Traffic(api, users, f"rot-{uid}")
    traffic.start()
    try:
        # 1. the new key added last, every shard restarted: new writes seal under it
        write_key_file(path, {**original, "next": new_key()})
        restart_shards(stack)
        late_user = f"rot-{uid}-late"
        late = register(api, late_user, "ios", (late_token := apns_token()))
        tokens[late_user] = late_token
        assert kids(stack)[late] == "next"
        assert {kids(stack)[d] for d in devices} == {old}
        # 2. rotate: every stored token re-sealed under the newest key
        done = rotate(stack.settings, batch=200)
        assert done.resealed >= len(devices) and done.changed == 0
        assert done.current >= 1
        assert set(kids(stack).values()) <= {"next", None}  # None: rows some test wrote raw
        assert rotate(stack.settings).resealed == 0  # nothing left on the old key
        # 3. the old key removed, shards restarted: every token still opens
        write_key_file(path, {"next": json.loads(path.read_text())["next"]})
        restart_shards(stack)
    finally:
        traffic.stop.set()
        traffic.join(timeout=10)
    after = f"rot-after-{uid}"
    api.post("/v1/events", json={"events": [order(after, late_user)]}).raise_for_status()
    final = wait_final(api, [*traffic.sent, after], timeout_s=120)
    assert {s["state"] for s in final.values()} == {"delivered"}, {
        n: s["state"] for n, s in final.items() if s["state"] != "delivered"
    }
    assert len(traffic.sent) >= 5
    for user, token in tokens.items():
        assert 200 in pushes(emulators["apns"], token), user
