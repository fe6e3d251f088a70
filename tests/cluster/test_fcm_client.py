"""The FCM client against the emulator over real HTTP/2 and TLS: proxy variables of the
environment do not reroute it around the extra CA, a certificate that does not verify is
a failure (not ten retries), and the CA bundle it writes goes away with it."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from pathlib import Path

import pytest
from firebase_admin import exceptions

from actors.sender import provider_client
from actors.senders.fcm import outcome_of, tls_refused
from tests.cluster.test_provider_limits import arrivals, batch


def _bundles() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("herald-fcm-ca-*.pem"))


def test_proxy_variables_do_not_reroute_the_fcm_client(stack, emulators, uid, monkeypatch):
    """NO_PROXY naming the FCM host and a proxy that does not exist for everything else:
    the sends still go straight to the endpoint, trusting the configured CA."""
    host = stack.settings.fcm.endpoint.split("//", 1)[1].split(":")[0]
    monkeypatch.setenv("NO_PROXY", host)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    emulators["fcm"].post("/_emulator/reset").raise_for_status()
    before = _bundles()

    async def send():
        client = provider_client(stack.settings, "fcm", "transactional")
        await client.start()
        written = _bundles() - before
        try:
            return await client.send(batch(uid, "fcm", 5, "transactional")), written
        finally:
            await client.close()

    results, written = asyncio.run(send())
    assert results["outcome"].to_pylist() == ["delivered"] * 5
    assert len(arrivals(emulators["fcm"], uid)) == 5
    assert len(written) == 1, "the extra CA is handed over in one bundle"
    assert not any(p.exists() for p in written), "the CA bundle outlived its sender"


@pytest.mark.parametrize(
    "error",
    [
        exceptions.UnavailableError(
            "connect failed", cause=ssl.SSLCertVerificationError("CERTIFICATE_VERIFY_FAILED")
        ),
        exceptions.UnknownError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
    ],
)
def test_a_certificate_that_does_not_verify_is_not_retried(error):
    assert tls_refused(error)
    assert outcome_of(error) == "failed"


def test_an_unavailable_provider_is_still_retried():
    error = exceptions.UnavailableError("503", cause=ConnectionResetError("reset"))
    assert not tls_refused(error)
    assert outcome_of(error) == "retry"
