"""Every file the local stack writes that holds a secret is its owner's alone (0600), and
the embedded Redis's directory is 0700 with its files unreadable by others: the test PKI's
TLS key, APNs keys and FCM service accounts, the Redis password, the Redis AOF, the
`stack.json` `herald run` writes (it holds the admin key)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from types import SimpleNamespace

from emulators.fcm import write_service_account
from emulators.pki import add_apns_key, make_test_pki
from ops.embedded_redis import EmbeddedRedis


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_test_pki_private_keys_are_0600(tmp_path):
    pki = make_test_pki(tmp_path / "pki")
    write_service_account(pki.fcm_credentials_file, "herald-demo", "https://127.0.0.1:1/token")
    second = add_apns_key(pki.directory, "HERALDKEY2")
    for secret in (pki.server_key, pki.apns_key_file, pki.fcm_credentials_file, second):
        assert _mode(secret) == 0o600, secret
    # The public halves are what the emulators read: those may be read by anyone.
    assert json.loads(pki.fcm_credentials_file.read_text())["private_key"].startswith("-----")
    assert (pki.directory / "apns-public-HERALDKEY2.pem").read_bytes().startswith(b"-----")


def test_a_data_dir_from_before_is_tightened(tmp_path):
    pki = make_test_pki(tmp_path / "pki")
    pki.apns_key_file.chmod(0o644)
    pki.server_key.chmod(0o644)
    make_test_pki(tmp_path / "pki")
    assert _mode(pki.apns_key_file) == 0o600 and _mode(pki.server_key) == 0o600


def test_embedded_redis_files_are_its_owners(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        client = server.client()
        client.set("k", "v")
        client.close()
    finally:
        server.stop()
    assert _mode(tmp_path / "redis") == 0o700
    files = [p for p in (tmp_path / "redis").rglob("*") if p.is_file()]
    assert {"redis.password", "auth.conf"} <= {p.name for p in files}
    assert any(p.name.startswith("appendonly") for p in files)
    for path in files:
        assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}"
    # The password is reused on restart: the same data dir, the same password.
    again = EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert again.password == server.password
        assert again.client().get("k") == b"v"
    finally:
        again.stop()


def test_stack_json_is_0600(tmp_path, monkeypatch):
    """`herald run` records the stack (admin key included) in `<data_dir>/stack.json`."""
    import ops.local
    from ops.cli import stack

    class FakeStack:
        def __init__(self, data_dir: Path, **_: object) -> None:
            self.data_dir = Path(data_dir)
            self.api_url, self.api_key = "http://127.0.0.1:1", "the-admin-key"
            self.stream_url = "ws://127.0.0.1:3"
            self.apns = self.fcm = SimpleNamespace(url="https://127.0.0.1:2")
            self.settings = SimpleNamespace(
                apns=SimpleNamespace(ca_file="ca.pem"), state=SimpleNamespace(redis_url="r")
            )

        def start(self) -> None:
            self.data_dir.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(ops.local, "LocalStack", FakeStack)
    monkeypatch.setenv("HERALD_USER_TOKEN_SECRET", "s")  # no token secret file needed
    stack._start_stack(tmp_path / "data", None, 1, False)
    recorded = tmp_path / "data" / "stack.json"
    assert json.loads(recorded.read_text())["api_key"] == "the-admin-key"
    assert _mode(recorded) == 0o600
