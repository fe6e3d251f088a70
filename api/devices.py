"""Service routes of a device's life after registration: the app's heartbeat.

`POST /v1/devices/{device_id}/heartbeat` (ingest scope, no body): the shop's backend says
the app on this device is alive, so its `last_seen_at` moves to now and a device that was
skipped as stale (`settings.protection.device_stale_days`) gets pushes again. 204; 404 for
an unknown device. The signed-in user's app has its own door,
`POST /v1/me/devices/{device_id}/heartbeat` (`api.me`); both go through
`api.user_actions.device_heartbeat`.

An `APIRouter` built by `devices_router`, given the replica's `Users` and key lookups the
way `api.me.me_router` is, because routes exist before any replica does.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at
# definition time, and a string one inside `devices_router` would not resolve.
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Response

from api.auth import KeyLookup, require
from api.schemas import ID_PATTERN
from api.user_actions import Users, device_heartbeat

DeviceId = Annotated[str, Path(pattern=ID_PATTERN)]


def devices_router(users: Callable[[], Users], keys: KeyLookup) -> APIRouter:
    """The heartbeat route (see the module docstring)."""
    router = APIRouter(prefix="/v1/devices", tags=["devices"])

    @router.post("/{device_id}/heartbeat", status_code=204, dependencies=[require("ingest", keys)])
    async def heartbeat(device_id: DeviceId) -> Response:
        """The app on this device is alive: `last_seen_at` becomes now (204; 404 unknown)."""
        await device_heartbeat(users(), device_id)
        return Response(status_code=204)

    return router
