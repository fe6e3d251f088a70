"""Herald's own secrets at the door: the settings it refuses to start with, and the route
that has every push sender take a new provider credential now.

**Insecure defaults.** Outside dev mode (`HERALD_DEV_MODE`, which only the local stack
sets) Herald does not start while `HERALD_API_KEYS` still holds the built-in
`dev-admin-key` — printed in the README, so anyone could administer the deployment — or
while `HERALD_DATA_KEYS` does not give the keys device tokens are sealed with
(`cluster.state.sealing`). `refuse_insecure_defaults` raises `InsecureSettings` naming the
variable to set; the Serve app builder and every ingress replica call it before anything
starts, so a misconfigured deployment fails at `serve run`/deploy, not at the first send.

**Credentials reload.** `POST /v1/admin/credentials/reload` (admin) has every running
APNs and FCM sender replica look at its key file now instead of within
`HERALD_CREDENTIALS_CHECK_S` (`actors.senders.credentials`), and answers, per replica,
the credential in use after (the APNs key id, the FCM service-account key id, a short
fingerprint of the file) and whether this call changed it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cluster.settings import ApiSettings, HeraldSettings
from cluster.state.sealing import DataKeys, DataKeysMissing, InvalidDataKeys

DEV_ADMIN_KEYS = frozenset(ApiSettings.model_fields["api_keys"].default_factory())


class InsecureSettings(RuntimeError):
    """Settings Herald must not run with outside dev mode; the message says what to set."""


def refuse_insecure_defaults(settings: HeraldSettings) -> None:
    """Raise `InsecureSettings` outside dev mode when the built-in admin key is still
    configured or no valid data key is (see the module docstring); dev mode allows both."""
    if settings.protection.dev_mode:
        return
    problems = []
    built_in = sorted(DEV_ADMIN_KEYS & set(settings.api.api_keys))
    if built_in:
        problems.append(
            f"HERALD_API_KEYS still holds the built-in key {', '.join(built_in)}: set "
            'HERALD_API_KEYS to keys of your own, as JSON {"<key>": ["ingest", "admin"]}'
        )
    try:
        DataKeys.from_settings(settings)
    except (DataKeysMissing, InvalidDataKeys) as error:
        problems.append(f"HERALD_DATA_KEYS: {error}")
    if problems:
        raise InsecureSettings(
            "Herald refuses to start outside dev mode (HERALD_DEV_MODE is off): "
            + "; ".join(problems)
        )


class SenderCredential(BaseModel):
    """One push sender replica's answer."""

    sender: str = Field(description="The sender actor, `sender-<channel>-<lane>[-<n>]`.")
    channel: str | None = None
    lane: str | None = None
    replica: int | None = None
    credential: str | None = Field(
        None, description="In use now: the APNs key id, the FCM service-account key id."
    )
    fingerprint: str | None = Field(
        None, description="Start of the SHA-256 of the credentials file in use."
    )
    reloaded: bool = Field(False, description="Whether this call switched to a new file.")
    error: str | None = Field(None, description="Why the replica did not answer.")


class CredentialsReloaded(BaseModel):
    senders: list[SenderCredential]


def credentials_router(
    reload: Callable[[], Awaitable[list[dict[str, Any]]]], admin: Sequence[Any]
) -> APIRouter:
    """The reload route; `reload` asks every push sender (`api.fleet.Fleet`), `admin` is
    the admin-scope dependency."""
    router = APIRouter(tags=["admin"])

    @router.post("/v1/admin/credentials/reload", dependencies=list(admin))
    async def reload_credentials() -> CredentialsReloaded:
        """Every APNs and FCM sender looks at its credentials file now: a new key is used
        for the sends that follow, those in flight finish on the old one (admin)."""
        return CredentialsReloaded(senders=await reload())

    return router
