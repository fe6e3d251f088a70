"""Device tokens sealed at rest (`cluster.state.sealing`): what opens, what refuses, where
the keys come from."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import redis

from cluster.settings import HeraldSettings
from cluster.state.sealing import (
    KEY_FILE,
    DataKeys,
    DataKeysMissing,
    InvalidDataKeys,
    TokenNotOpened,
    dev_key_file,
    is_sealed,
    kid_of,
    new_key_entry,
)
from cluster.state.shards import RESEAL_IF_UNCHANGED, ShardTables
from ops.embedded_redis import EmbeddedRedis

TOKEN = "a1" * 32
FCM = "cXyZ123:APA91b" + "q" * 100


def keys(*kids: str) -> dict[str, str]:
    return {kid: base64.b64encode(os.urandom(32)).decode() for kid in kids}


def test_round_trip_of_a_column_and_no_token_in_the_sealed_form():
    data = DataKeys(keys("k1"))
    tokens, devices, users = [TOKEN, FCM, TOKEN], ["d1", "d2", "d3"], ["u1", "u1", "u2"]
    sealed = data.seal_column(tokens, devices, users)
    assert all(s.startswith("v1.k1.") for s in sealed)
    assert not any(TOKEN in s or FCM in s for s in sealed)
    assert len(set(sealed)) == 3  # a fresh nonce each: the same token seals differently
    assert all(is_sealed(s) for s in sealed) and not is_sealed(TOKEN) and not is_sealed(FCM)
    assert data.open_column(sealed, devices, users) == tokens
    # the form: v1.<kid>.<base64url, unpadded, of nonce ‖ ciphertext ‖ 16-byte tag>
    body = sealed[1].split(".")[2]
    assert "=" not in body
    assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == 12 + len(FCM) + 16


def test_a_sealed_token_moved_to_another_row_does_not_open():
    data = DataKeys(keys("k1"))
    sealed = data.seal(TOKEN, "d1", "u1")
    with pytest.raises(TokenNotOpened, match="d2"):
        data.open(sealed, "d2", "u1")
    with pytest.raises(TokenNotOpened):
        data.open(sealed, "d1", "u2")
    # the (device, user) encoding is unambiguous: no shifting of the separator
    with pytest.raises(TokenNotOpened):
        DataKeys(keys("k1")).open(data.seal(TOKEN, "a|b", "c"), "a", "b|c")


def test_an_altered_sealed_token_does_not_open():
    data = DataKeys(keys("k1"))
    sealed = data.seal(TOKEN, "d1", "u1")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(TokenNotOpened):
        data.open(flipped, "d1", "u1")


def test_rotation_the_last_key_seals_and_every_key_opens():
    old = keys("old")
    sealed_old = DataKeys(old).seal(TOKEN, "d1", "u1")
    both = DataKeys({**old, **keys("new")})
    assert both.current == "new"
    assert kid_of(both.seal(TOKEN, "d1", "u1")) == "new"
    assert both.open(sealed_old, "d1", "u1") == TOKEN
    # the old key removed before its rows were re-sealed: refused, naming the key
    with pytest.raises(TokenNotOpened, match="'old'"):
        DataKeys(keys("new")).open(sealed_old, "d1", "u1")
    # the same kid with a different key is no key of this data
    with pytest.raises(TokenNotOpened):
        DataKeys(keys("old")).open(sealed_old, "d1", "u1")


def test_a_token_stored_before_sealing_opens_as_itself():
    assert DataKeys(keys("k1")).open_column([TOKEN, FCM], ["d1", "d2"], ["u", "u"]) == [
        TOKEN,
        FCM,
    ]


def test_missing_keys_outside_dev_mode_refuse_with_how_to_fix(tmp_path):
    settings = HeraldSettings(data_dir=tmp_path, dev_mode=False)
    with pytest.raises(DataKeysMissing, match="HERALD_DATA_KEYS"):
        DataKeys.from_settings(settings)
    assert not (tmp_path / KEY_FILE).exists()


@pytest.mark.parametrize(
    "entries, reason",
    [
        ({"k1": "not base64!"}, "not base64"),
        ({"k1": base64.b64encode(b"short").decode()}, "5 bytes"),
        ({"a.b": base64.b64encode(os.urandom(32)).decode()}, "key id"),
    ],
)
def test_malformed_keys_are_refused(entries, reason):
    with pytest.raises(InvalidDataKeys, match=reason):
        DataKeys(entries)


def test_configured_keys_win_over_the_dev_file(tmp_path):
    given = keys("prod1")
    settings = HeraldSettings(data_dir=tmp_path, dev_mode=True, data_keys=given)
    assert DataKeys.from_settings(settings).current == "prod1"
    assert not (tmp_path / KEY_FILE).exists()


def test_dev_mode_key_file_is_0600_and_reused(tmp_path):
    settings = HeraldSettings(data_dir=tmp_path / "data", dev_mode=True)
    first = DataKeys.from_settings(settings)
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealed = first.seal(TOKEN, "d1", "u1")
    again = DataKeys.from_settings(settings)  # a restart
    assert again.current == first.current
    assert again.open(sealed, "d1", "u1") == TOKEN
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no temp file left


def test_a_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / KEY_FILE
    kid, key = new_key_entry()
    path.write_text(json.dumps({kid: key}))
    path.chmod(0o644)
    with pytest.raises(InvalidDataKeys, match="chmod 600"):
        dev_key_file(path)


def _create(path: str, out) -> None:
    out.put(dev_key_file(Path(path)))


def test_processes_racing_to_create_the_key_file_all_get_the_same_key(tmp_path):
    path = str(tmp_path / KEY_FILE)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [context.Process(target=_create, args=(path, out)) for _ in range(6)]
    for worker in workers:
        worker.start()
    got = [out.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert all(entries == got[0] for entries in got) and len(got[0]) == 1
    assert json.loads((tmp_path / KEY_FILE).read_text()) == got[0]


# --- the shard's write-through hash (a real Redis) ----------------------------------------
DEVICE_SCHEMA = {"device_id": pl.String, "user_id": pl.String, "token": pl.String,
                 "active": pl.Boolean}  # fmt: skip


@pytest.fixture
def redis_server(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def tables(client, tmp_path, **given) -> ShardTables:
    settings = HeraldSettings(key_prefix="t:", data_dir=tmp_path / "data", dev_mode=True, **given)
    return ShardTables(settings, 0, client)


def device_rows(*tokens: str) -> pl.DataFrame:
    n = len(tokens)
    return pl.DataFrame({"device_id": [f"d{i}" for i in range(n)],
                         "user_id": [f"u{i}" for i in range(n)],
                         "token": list(tokens), "active": [True] * n})  # fmt: skip


def test_shard_tables_store_sealed_and_load_opened(redis_client, tmp_path):
    shard = tables(redis_client, tmp_path)
    shard.write({"devices": ("device_id", device_rows(TOKEN, FCM))})
    stored = redis_client.hgetall(shard.key("devices"))
    assert not any(TOKEN.encode() in v or FCM.encode() in v for v in stored.values())
    assert {kid_of(json.loads(v)["token"]) for v in stored.values()} == {shard.sealing.current}
    loaded = tables(redis_client, tmp_path).load("devices", DEVICE_SCHEMA)  # a restart
    assert dict(loaded.select("device_id", "token").iter_rows()) == {"d0": TOKEN, "d1": FCM}
    # other tables are stored as they were
    profile = pl.DataFrame({"user_id": ["u0"], "locale": ["de"]})
    shard.write({"profiles": ("user_id", profile)})
    assert json.loads(redis_client.hget(shard.key("profiles"), "u0")) == {
        "user_id": "u0",
        "locale": "de",
    }


def test_reseal_moves_every_row_to_the_newest_key_and_seals_old_plaintext(redis_client, tmp_path):
    old, new = keys("old"), keys("new")
    tables(redis_client, tmp_path, data_keys=old).write(
        {"devices": ("device_id", device_rows(TOKEN, FCM, "c" * 64))}
    )
    legacy = json.dumps({"device_id": "d9", "user_id": "u9", "token": "d" * 64, "active": True})
    redis_client.hset("t:{shard:0}:devices", "d9", legacy)  # stored before sealing existed
    both = tables(redis_client, tmp_path, data_keys={**old, **new})
    done = both.reseal("devices", batch=2)
    assert (done.resealed, done.plaintext, done.current, done.changed) == (4, 1, 0, 0)
    assert both.reseal("devices").current == 4  # a second run finds nothing to do
    stored = redis_client.hgetall(both.key("devices"))
    assert {kid_of(json.loads(v)["token"]) for v in stored.values()} == {"new"}
    opened = tables(redis_client, tmp_path, data_keys=new).load("devices", DEVICE_SCHEMA)
    assert sorted(opened["token"]) == sorted([TOKEN, FCM, "c" * 64, "d" * 64])


def test_reseal_leaves_a_row_rewritten_meanwhile_alone(redis_client, tmp_path):
    """The compare-and-set: a shard's write between rotate's read and its write wins."""
    old, new = keys("old"), keys("new")
    rows = device_rows("t1", "t2", "t3")
    tables(redis_client, tmp_path, data_keys=old).write({"devices": ("device_id", rows)})
    rotating = tables(redis_client, tmp_path, data_keys={**old, **new})
    shard = tables(redis_client, tmp_path, data_keys={**old, **new})
    scan = redis_client.hscan

    def scan_then_write(*args, **kwargs):
        found = scan(*args, **kwargs)
        rewritten = rows.filter(pl.col("device_id") == "d1").with_columns(token=pl.lit("t2-new"))
        shard.write({"devices": ("device_id", rewritten)})
        return found

    rotating.redis = SimpleNamespace(
        hscan=scan_then_write, register_script=redis_client.register_script
    )
    done = rotating.reseal("devices")
    assert (done.resealed, done.changed, done.current) == (2, 1, 0)
    opened = shard.load("devices", DEVICE_SCHEMA)
    assert dict(opened.select("device_id", "token").iter_rows()) == {
        "d0": "t1",
        "d1": "t2-new",
        "d2": "t3",
    }
    stored = redis_client.hgetall(shard.key("devices"))
    assert {kid_of(json.loads(v)["token"]) for v in stored.values()} == {"new"}
    # one key: one Redis Cluster slot
    assert set(re.findall(r"KEYS\[(\d+)\]", RESEAL_IF_UNCHANGED)) == {"1"}


def test_a_shard_refuses_to_load_tokens_no_key_opens(redis_client, tmp_path):
    tables(redis_client, tmp_path, data_keys=keys("gone")).write(
        {"devices": ("device_id", device_rows(TOKEN))}
    )
    with pytest.raises(TokenNotOpened, match="'gone'"):
        tables(redis_client, tmp_path, data_keys=keys("other")).load("devices", DEVICE_SCHEMA)


def test_keys_from_the_environment_keep_their_order(monkeypatch):
    given = keys("zz", "aa")  # the last is newest, whatever its name sorts as
    monkeypatch.setenv("HERALD_DATA_KEYS", json.dumps(given))
    assert DataKeys.from_settings(HeraldSettings()).current == "aa"


def test_keys_cli_new_then_rotate(redis_server, redis_client, tmp_path):
    from typer.testing import CliRunner

    from ops.cli import app

    made = CliRunner().invoke(app, ["keys", "new"])
    assert made.exit_code == 0, made.output
    entry = json.loads(made.stdout.splitlines()[0])
    assert DataKeys(entry).current in entry  # a valid key, ready to be added last
    old = keys("old")
    tables(redis_client, tmp_path, data_keys=old).write(
        {"devices": ("device_id", device_rows(TOKEN, FCM))}
    )
    env = {
        "HERALD_REDIS_URL": redis_server.url,
        "HERALD_KEY_PREFIX": "t:",
        "HERALD_DATA_KEYS": json.dumps({**old, **entry}),
    }
    args = ["keys", "rotate", "--data-dir", str(tmp_path / "none")]
    rotated = CliRunner().invoke(app, args, env=env)
    assert rotated.exit_code == 0, rotated.output
    assert f"re-sealed 2 token(s) under key {DataKeys(entry).current}" in rotated.stdout
    again = CliRunner().invoke(app, args, env=env)
    assert "re-sealed 0 token(s)" in again.stdout and "2 already on it" in again.stdout
