"""Push credentials rotate under a steady stream of order updates, without a restart: a new
APNs key and FCM service account written over the configured paths are picked up within
HERALD_CREDENTIALS_CHECK_S; a third pair is taken at once by `POST
/v1/admin/credentials/reload`; then the old keys are revoked at the providers (the
emulators), so a send still signed with one would fail. None fails: every notification of
the stream is delivered, and after the revocation the providers saw only the newest keys."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from emulators.fcm import write_service_account
from emulators.pki import add_apns_key
from ops.demo import apns_token, fcm_token, wait_final

pytestmark = pytest.mark.timeout(240)


class Stream:
    """Order updates for one user, one every `interval_s`, each its own order (so none is
    superseded by a later status), until `stop()`."""

    def __init__(self, api_url: str, user: str, interval_s: float = 0.2) -> None:
        self.api_url, self.user, self.interval_s = api_url, user, interval_s
        self.ids: list[str] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        headers = {"Authorization": "Bearer test-admin"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30) as api:
            n = 0
            while not self._stop.wait(self.interval_s):
                event_id = f"{self.user}-e{n}"
                event = {"event_id": event_id, "type": "order.updated", "user_id": self.user,
                         "order_id": f"{self.user}-o{n}", "status": "shipped"}  # fmt: skip
                answer = api.post("/v1/events", json={"events": [event]})
                (self.ids if answer.status_code == 202 else self.refused).append(event_id)
                n += 1

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _received(emulator: httpx.Client, since: int, tokens: set[str]) -> tuple[list[dict], int]:
    body = emulator.get("/_emulator/received", params={"since": since}).json()
    return [i for i in body["received"] if i.get("token") in tokens], body["next"]


def _wait_signed_by(emulators, since: dict, tokens: set[str], keys: dict, count: int = 3):
    """Until each emulator accepted `count` pushes to `tokens` signed by `keys[channel]`
    after `since[channel]`; the seconds it took."""
    started = time.monotonic()
    deadline = started + 30
    while True:
        done = all(
            sum(
                1
                for i in _received(emulators[channel], since[channel], tokens)[0]
                if i.get("key_id") == keys[channel] and i["status"] == 200
            )
            >= count
            for channel in ("apns", "fcm")
        )
        if done:
            return time.monotonic() - started
        assert time.monotonic() < deadline, f"no push signed by {keys} within 30 s"
        time.sleep(0.2)


def _next(emulators) -> dict[str, int]:
    return {c: _received(emulators[c], 0, set())[1] for c in ("apns", "fcm")}


def _rotate(stack, key_id: str) -> dict[str, str]:
    """A new APNs key (the configured path re-pointed at `AuthKey_<key_id>.p8`, as an
    operator would) and a new FCM service account written over the configured file;
    the key ids the providers will see."""
    configured = Path(stack.settings.apns.key_file)
    new_key = add_apns_key(configured.parent, key_id)
    link = configured.with_name(f".{configured.name}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(new_key.name)
    os.replace(link, configured)
    account = Path(stack.settings.fcm.credentials_file)
    write_service_account(account, stack.settings.fcm.project_id, f"{stack.fcm.url}/token")
    return {"apns": key_id, "fcm": json.loads(account.read_text())["private_key_id"]}


def test_credentials_rotate_under_a_stream_without_a_failed_send(stack, api, emulators, uid):
    user = f"rot-{uid}"
    tokens = {apns_token(), fcm_token()}
    for token in tokens:
        platform = "android" if ":" in token else "ios"
        answer = api.post(
            "/v1/devices", json={"user_id": user, "platform": platform, "token": token}
        )
        assert answer.status_code in (200, 201), answer.text
    account = Path(stack.settings.fcm.credentials_file)
    first = {
        "apns": stack.settings.apns.key_id,
        "fcm": json.loads(account.read_text())["private_key_id"],
    }
    try:
        with Stream(stack.api_url, user) as stream:
            _wait_signed_by(emulators, _next(emulators), tokens, first)

            # 1. The files change; senders notice within credentials_check_s (+ a send).
            mark = _next(emulators)
            second = _rotate(stack, f"ROTA{uid.upper()}")
            noticed_s = _wait_signed_by(emulators, mark, tokens, second)
            assert noticed_s < stack.settings.protection.credentials_check_s + 5

            # 2. Again, and the reload route takes the new files at once.
            mark = _next(emulators)
            third = _rotate(stack, f"ROTB{uid.upper()}")
            answer = api.post("/v1/admin/credentials/reload")
            assert answer.status_code == 200, answer.text
            senders = answer.json()["senders"]
            assert {s["channel"] for s in senders} == {"apns", "fcm"}, senders
            for sender in senders:
                assert sender["error"] is None, sender
                assert sender["credential"] == third[sender["channel"]], sender
            _wait_signed_by(emulators, mark, tokens, third)

            # 3. The old keys are revoked at the providers: only the newest work now.
            for channel in ("apns", "fcm"):
                revoked = [first[channel], second[channel]]
                answer = emulators[channel].post("/_emulator/revoked", json={"key_ids": revoked})
                assert answer.json() == {"key_ids": sorted(revoked)}
            mark = _next(emulators)
            _wait_signed_by(emulators, mark, tokens, third, count=10)
        assert not stream.refused

        statuses = wait_final(api, stream.ids, timeout_s=60)
        states = {nid: s.get("state") for nid, s in statuses.items()}
        assert len(stream.ids) >= 20  # a stream across both rotations, not a handful
        assert set(states.values()) == {"delivered"}, {
            k: v for k, v in states.items() if v != "delivered"
        }
        for channel in ("apns", "fcm"):
            after, _ = _received(emulators[channel], mark[channel], tokens)
            assert after and all(i["key_id"] == third[channel] for i in after), after[:3]
            assert all(i["status"] == 200 for i in after), [i for i in after if i["status"] != 200][
                :3
            ]
    finally:
        for channel in ("apns", "fcm"):
            emulators[channel].post("/_emulator/revoked", json={"key_ids": []})
