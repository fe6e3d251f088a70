"""How a sender notices a new credentials file (`actors.senders.credentials`), which key id
an APNs key file carries, and the body read timeout in front of the routes."""

from __future__ import annotations

import asyncio
import json
import os

from actors.senders.apns import key_id_of
from actors.senders.credentials import CredentialFile, Generations
from api.slow_clients import BodyReadTimeout
from emulators.pki import add_apns_key, write_private


def test_a_changed_file_is_noticed_once_and_a_touch_is_no_change(tmp_path):
    path = write_private(tmp_path / "key.p8", b"one")
    watched = CredentialFile(path, check_s=0.0)
    assert watched.read() == b"one"
    assert watched.changed() is None
    os.utime(path, ns=(1, 1))  # touched, same bytes
    assert watched.changed() is None
    write_private(path, b"two")
    assert watched.changed() == b"two"
    watched.accept(b"two")
    assert watched.changed() is None


def test_checks_wait_for_the_interval_unless_forced(tmp_path):
    path = write_private(tmp_path / "key.p8", b"one")
    watched = CredentialFile(path, check_s=3600)
    watched.read()
    write_private(path, b"two")
    assert watched.changed() is None  # not looked at again yet
    assert watched.changed(force=True) == b"two"


def test_apns_key_id_follows_apples_file_name(tmp_path):
    first = add_apns_key(tmp_path, "KEYONE")
    second = add_apns_key(tmp_path, "KEYTWO")
    configured = tmp_path / "apns.p8"
    configured.symlink_to(first.name)
    assert key_id_of(configured, "CONFIGURED") == "KEYONE"
    configured.unlink()
    configured.symlink_to(second.name)
    assert key_id_of(configured, "CONFIGURED") == "KEYTWO"
    write_private(tmp_path / "plain.p8", first.read_bytes())
    assert key_id_of(tmp_path / "plain.p8", "CONFIGURED") == "CONFIGURED"


async def test_a_replaced_client_closes_after_its_last_request():
    closed: list[str] = []

    async def close(client: str) -> None:
        closed.append(client)

    generations = Generations("old", close, grace_s=5)
    with generations.use() as client:
        assert client == "old"
        generations.replace("new")
        with generations.use() as newer:
            assert newer == "new"
        await asyncio.sleep(0.2)
        assert closed == []  # "old" still has a request in flight
    await asyncio.sleep(0.2)
    assert closed == ["old"]
    await generations.close_all()
    assert closed == ["old", "new"]


async def test_a_body_that_does_not_arrive_is_answered_408_with_close():
    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def receive():
        if not chunks:
            await asyncio.sleep(3600)  # the client sends nothing more
        return {"type": "http.request", "body": chunks.pop(0), "more_body": True}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    chunks = [b'{"ev']
    guarded = BodyReadTimeout(app, BodyReadTimeout.Limit(seconds=0.3))
    started = asyncio.get_running_loop().time()
    await guarded({"type": "http", "headers": []}, receive, send)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


async def test_a_timely_body_passes():
    async def app(scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await BodyReadTimeout(app, BodyReadTimeout.Limit(seconds=5))({"type": "http"}, receive, send)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"{}"
