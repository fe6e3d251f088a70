"""Test credentials for the local stack: a CA and server certificate for loopback (trustme),
an APNs auth key (.p8, ES256) and the names that go with it. The FCM service account is
written by the FCM emulator itself once it knows its port (its token_uri points there)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

APNS_KEY_ID = "HERALDKEY1"
APNS_TEAM_ID = "HERALDTEAM"
FCM_SERVICE_ACCOUNT = "fcm-service-account.json"


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
        server.private_key_pem.write_to_path(str(pki.server_key))
    if not pki.apns_public_key.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pki.apns_key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pki.apns_public_key.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pki
