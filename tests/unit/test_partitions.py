"""The partitioned log's choices, without Redis: an event's partition is stable (the same
in every process and Python) and per user (or product); a batch's waves keep each user's
events in the order they were accepted; the lease share gives every partition exactly one
router."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl

from cluster.eventlog.base import partition_key, partition_of
from cluster.state.leases import share
from pipelines.log_entries import decode, entry_keys, waves

ROOT = Path(__file__).resolve().parents[2]
PINNED = [7, 0, 4]  # crc32 of "alice", "bob", "u-1", mod 8


def order(event_id: str, user: str, status: str = "shipped") -> dict:
    return {"event_id": event_id, "type": "order.updated", "user_id": user,
            "order_id": f"o-{user}", "status": status}  # fmt: skip


def entries(events: list) -> pl.DataFrame:
    bodies = [e if isinstance(e, str) else json.dumps(e) for e in events]
    return pl.DataFrame(
        {
            "entry_id": [f"{i}-0" for i in range(len(bodies))],
            "body": bodies,
            "accepted_at": [1.0] * len(bodies),
        }  # fmt: skip
    )


def test_partition_keys_follow_the_user_or_the_product():
    assert partition_key(order("e1", "u7")) == "u7"
    one = {"event_id": "r1", "type": "notification.requested", "user_ids": ["u7"]}
    many = {"event_id": "r2", "type": "notification.requested", "user_ids": ["u7", "u8"]}
    drop = {"event_id": "d1", "type": "price.dropped", "product_id": "sku-1"}
    assert [partition_key(e) for e in (one, many, drop)] == ["u7", "r2", "sku-1"]
    # Every event of a user lands in one partition, whatever else differs.
    n = 16
    assert {
        partition_of(partition_key(order(f"e{i}", "u7", s)), n)
        for i, s in enumerate(["packed", "shipped", "delivered"])
    } == {  # fmt: skip
        partition_of(partition_key(one), n)
    }


def test_partition_choice_is_stable_across_processes():
    """`hash()` is salted per process; the partition must not be (ingress replicas and
    routers in other processes agree). Another interpreter with another hash seed."""
    users = [f"user-{i}" for i in range(200)]
    here = [partition_of(u, 8) for u in users]
    code = (
        "from cluster.eventlog.base import partition_of;"
        "print([partition_of(f'user-{i}', 8) for i in range(200)])"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT
    )
    assert json.loads(there.stdout) == here
    # Pinned: a change of function would move a running deployment's users mid-stream.
    assert [partition_of(u, 8) for u in ("alice", "bob", "u-1")] == PINNED
    assert len(set(here)) == 8  # and it spreads


def test_waves_keep_each_users_order_and_leave_distinct_users_in_one_wave():
    statuses = ["placed", "packed", "shipped", "out_for_delivery", "delivered"]
    # Three users interleaved as the log accepted them; u3 has one event.
    log = [order(f"{u}-{s}", u, s) for s in statuses for u in ("u1", "u2")]
    log.insert(3, order("u3-placed", "u3", "placed"))
    parts = waves(decode(entries(log), "transactional"))
    assert len(parts) == len(statuses)
    for n, part in enumerate(parts):
        # wave n holds each user's n-th event, and only that
        assert part["user_id"].n_unique() == part.height
        assert set(part["status"]) == {statuses[n]}
    assert parts[0]["user_id"].to_list() == ["u1", "u2", "u3"]
    # Routed wave after wave, each user's events come out in accepted order.
    routed = pl.concat(parts)
    for user in ("u1", "u2"):
        assert routed.filter(pl.col("user_id") == user)["status"].to_list() == statuses


def test_a_batch_of_distinct_users_is_one_wave():
    parts = waves(decode(entries([order(f"e{i}", f"u{i}") for i in range(50)]), "t"))
    assert [p.height for p in parts] == [50]


def test_the_frame_key_agrees_with_the_event_key():
    events = [
        order("e1", "u1"),
        {"event_id": "r1", "type": "notification.requested", "user_ids": ["u1"]},
        {"event_id": "r2", "type": "notification.requested", "user_ids": ["u1", "u2"]},
        {"event_id": "d1", "type": "price.dropped", "product_id": "sku-1"},
        {"event_id": "x1", "type": "something.else", "user_id": "u1"},
    ]
    keyed = waves(decode(entries(events), "transactional"))
    frame_keys = pl.concat(keyed).sort("entry_id")["partition_key"].to_list()
    assert frame_keys == [partition_key(e) for e in events]
    # A body that is no event at all is its own key: it holds back no one.
    assert entry_keys(entries(["{not json", order("e9", "u9")])) == ["0-0", "u9"]


def test_every_partition_has_exactly_one_router():
    for live in ([0], [0, 1], [0, 2, 5], list(range(7))):
        shares = [share(live, i, 16) for i in live]
        assert sorted(p for s in shares for p in s) == list(range(16))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    # A router counts itself even before its own heartbeat is seen.
    assert share([1], 0, 4) == {0, 2}
