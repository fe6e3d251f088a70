"""Test credentials for the local stack: a CA and server certificate for loopback (trustme),
an APNs auth key (.p8, ES256) and the names that go with it. The FCM service account is
written by the FCM emulator itself once it knows its port (its token_uri points there).

Private keys are written 0600 (`write_private`): the TLS server key, every APNs key and
every FCM service account. Public halves (`apns-public*.pem`, `fcm-public-*.pem`) are what
the emulators trust; `add_apns_key` and `emulators.fcm.write_service_account` add a key the
running emulators accept too (they re-read the directory), so a test can rotate Herald's
push credentials without restarting anything."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

APNS_KEY_ID = "HERALDKEY1"
APNS_TEAM_ID = "HERALDTEAM"
FCM_SERVICE_ACCOUNT = "fcm-service-account.json"
PRIVATE_MODE = 0o600


def write_private(path: Path, data: bytes | str) -> Path:
    """Write a secret readable by its owner only: created 0600 (never briefly wider) under
    a temporary name, then renamed over `path`, so a reader (a credentials watcher) sees
    the old file or the new one, never half of one; a symlink at `path` is replaced."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, PRIVATE_MODE)  # O_CREAT's mode applies only to a new file
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class TestPki:
    directory: Path
    ca_file: Path
    server_cert: Path
    server_key: Path
    apns_key_file: Path  # private key, PKCS#8 PEM — what Apple hands out as AuthKey_<id>.p8
    apns_public_key: Path  # what the APNs emulator verifies provider tokens with
    fcm_credentials_file: Path  # written by `python -m emulators fcm`
    apns_key_id: str = APNS_KEY_ID
    apns_team_id: str = APNS_TEAM_ID


def make_test_pki(directory: Path) -> TestPki:
    """Create (or reuse) every credential the emulators and Herald's clients need."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPki(
        directory=directory,
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        apns_key_file=directory / f"AuthKey_{APNS_KEY_ID}.p8",
        apns_public_key=directory / "apns-public.pem",
        fcm_credentials_file=directory / FCM_SERVICE_ACCOUNT,
    )
    if not pki.server_key.exists():
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost", "::1")
        ca.cert_pem.write_to_path(str(pki.ca_file))
        server.cert_chain_pems[0].write_to_path(str(pki.server_cert))
        for extra in server.cert_chain_pems[1:]:
            extra.write_to_path(str(pki.server_cert), append=True)
        write_private(pki.server_key, server.private_key_pem.bytes())
    if not pki.apns_public_key.exists():
        _write_apns_key(pki.apns_key_file, pki.apns_public_key)
    for secret in (pki.server_key, pki.apns_key_file):  # a data dir from before 0600
        if secret.exists() and not secret.is_symlink():
            os.chmod(secret, PRIVATE_MODE)
    return pki


def add_apns_key(directory: Path, key_id: str) -> Path:
    """A further APNs auth key, `AuthKey_<key_id>.p8` (0600), and its public half
    `apns-public-<key_id>.pem`, which a running APNs emulator trusts from then on: the
    key a test rotates Herald to. Returns the private key's path."""
    directory = Path(directory)
    private = directory / f"AuthKey_{key_id}.p8"
    _write_apns_key(private, directory / f"apns-public-{key_id}.pem")
    return private


def _write_apns_key(private: Path, public: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
