"""A retry comes back from Redis without its token (`actors.flows.tokens`): the token is
looked up again in the owning shard, matched on device and user, and a device that is no
more is left out as gone — no cluster needed, a stand-in for the shard calls."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import polars as pl
import pyarrow as pa

from actors.flows.tokens import with_tokens
from cluster.settings import HeraldSettings


class FakeShards:
    """Every shard answers from one table of active devices, as `UserShard.tokens_for`."""

    def __init__(self, active: list[tuple[str, str, str]]) -> None:
        self.settings = HeraldSettings(shards=2)
        self.active = active
        self.asked: list[list[str]] = []

    def shard(self, index: int):
        async def answer(device_ids: list[str]) -> pa.Table:
            self.asked.append(device_ids)
            rows = [r for r in self.active if r[0] in device_ids]
            names = ["device_id", "user_id", "token"]
            return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})

        return SimpleNamespace(tokens_for=SimpleNamespace(remote=answer))


def retry_rows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "delivery_id": ["n1|d1", "n1|inbox", "n2|d2", "n3|d3"],
            "user_id": ["u1", "u1", "u2", "u3"],
            "device_id": ["d1", "inbox", "d2", "d3"],
            "channel": ["apns", "inbox", "fcm", "apns"],
            "attempt": [1, 1, 2, 1],
        }
    )


def test_tokens_are_looked_up_again_and_a_gone_device_is_left_out():
    # d2 now belongs to another user (the phone changed hands); d3 was unregistered.
    shards = FakeShards([("d1", "u1", "tok-1"), ("d2", "someone-else", "tok-2")])
    sent, gone = asyncio.run(with_tokens(shards, retry_rows()))
    assert dict(sent.select("delivery_id", "token").iter_rows()) == {
        "n1|d1": "tok-1",
        "n1|inbox": "",
    }
    assert sorted(gone["delivery_id"]) == ["n2|d2", "n3|d3"]
    assert sorted(d for ids in shards.asked for d in ids) == ["d1", "d2", "d3"]


def test_rows_that_carry_a_token_are_not_looked_up():
    shards = FakeShards([])
    rows = retry_rows().with_columns(token=pl.lit("kept"))
    sent, gone = asyncio.run(with_tokens(shards, rows))
    assert set(sent["token"]) == {"kept"} and sent.height == 4 and gone.height == 0
    assert shards.asked == []
