"""`/v1/me/…`: the signed-in end user's own inbox, preferences, devices, feedback and live
stream, for a shop's app or web page. Every route takes a user token only (`RequireUser`)
and acts for the token's `sub`, never for an id in the path or body: a token for user A
cannot read, change or learn of anything of user B — another user's notification or device
id is answered 404, exactly like one that does not exist.

The routes are an `APIRouter` built by `me_router`, given two lookups (the replica's
services and its token verifier) the same way `api.auth.require` is given the key map,
because the routes exist before any replica does (see `api.auth`).

The stream (`WS /v1/me/stream`, served by each node's stream gateway: `api.stream_app`) is
a browser's: the token comes in the
`Sec-WebSocket-Protocol` header, offered as `["herald.v1", "bearer.<token>"]` (the server
answers `herald.v1`, never echoing the token), or as a first message `{"type": "auth",
"token": …}` within `AUTH_WAIT_S` — never in the URL, which proxies and servers log. The
page's `Origin` must be one of `HERALD_ALLOWED_ORIGINS` or Herald's own (the demo page);
a client without `Origin` is no browser (a native app) and is not checked. Refusals come
after the accept, as close codes a page can read: 4401 (no or a bad token), 4403 (origin).
"""

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response, WebSocket

from api.auth import RequireUser, TokenLookup
from api.errors import ApiError, not_found
from api.live import close
from api.rows import preferences_row
from api.schemas import (
    ID_PATTERN,
    NOTIFICATION_ID_PATTERN,
    DeviceIn,
    DeviceOut,
    FeedbackAccepted,
    MyDeviceIn,
    MyFeedbackIn,
    MyInbox,
    PreferencesIn,
    Unread,
)
from api.user_actions import (
    Users,
    device_heartbeat,
    preferences_of,
    record_feedback,
    register_device,
    unregister_device,
)
from api.user_tokens import TokenRefused
from cluster.state.inbox import Cursor, InboxStore

PROTOCOL = "herald.v1"
TOKEN_PROTOCOL_PREFIX = "bearer."
AUTH_WAIT_S = 10.0
NotificationId = Annotated[str, Path(pattern=NOTIFICATION_ID_PATTERN)]
DeviceId = Annotated[str, Path(pattern=ID_PATTERN)]


@dataclass
class Me:
    """What the `/v1/me` routes of one replica use."""

    users: Users
    inbox: InboxStore


def origin_allowed(websocket: WebSocket, allowed: list[str]) -> bool:
    """No Origin (not a browser), one of `allowed`, or the origin Herald itself serves."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    scheme = "https" if websocket.url.scheme in ("wss", "https") else "http"
    return origin in allowed or origin == f"{scheme}://{websocket.headers.get('host', '')}"


def offered_token(websocket: WebSocket) -> str | None:
    """The token offered as a `bearer.<token>` subprotocol, if any."""
    offered = websocket.scope.get("subprotocols") or []
    prefix = TOKEN_PROTOCOL_PREFIX
    return next((p[len(prefix) :] for p in offered if p.startswith(prefix)), None)


async def first_message_token(websocket: WebSocket) -> str | None:
    """The token of a first `{"type": "auth", "token": …}` message, None if none in time."""
    try:
        first = json.loads(await asyncio.wait_for(websocket.receive_text(), AUTH_WAIT_S))
    except (TimeoutError, ValueError, KeyError, RuntimeError):
        return None
    token = first.get("token") if isinstance(first, dict) and first.get("type") == "auth" else None
    return token if isinstance(token, str) else None


async def admit_user(websocket: WebSocket, origins: list[str], tokens: TokenLookup) -> str | None:
    """Accept, then check the origin (4403) and the token (4401); the user id, or None
    once the socket is closed."""
    token = offered_token(websocket)
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    if not origin_allowed(websocket, origins):
        await close(websocket, 4403, "origin not allowed")
        return None
    if token is None:
        token = await first_message_token(websocket)
    if token is None:
        await close(websocket, 4401, "send the user token (subprotocol or first message)")
        return None
    try:
        return tokens().verify(token)
    except TokenRefused as refused:
        await close(websocket, 4401, f"user token refused: {refused}"[:120])
        return None


def me_router(services: Callable[[], Me], tokens: TokenLookup) -> APIRouter:
    """The `/v1/me` HTTP routes (see the module docstring)."""
    user = Annotated[str, Depends(RequireUser(tokens))]
    router = APIRouter(prefix="/v1/me", tags=["me"])
    _inbox_routes(router, user, services)
    _account_routes(router, user, services)
    return router


def _inbox_routes(router: APIRouter, User: Any, services: Callable[[], Me]) -> None:
    """The inbox: pages, unread count, read, read-all, delete."""

    @router.get("/inbox")
    async def my_inbox(
        user: User,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=300)] = None,
    ) -> MyInbox:
        """The newest items first, `limit` per page, each with its read flag; `cursor`
        (the last page's `next_cursor`) continues after that page."""
        try:
            after = Cursor.decode(cursor) if cursor else None
        except ValueError:
            raise ApiError(
                422, "validation_error", "bad cursor",
                fields=[{"field": "cursor", "reason": "not a next_cursor of this inbox"}],
            ) from None  # fmt: skip
        page = await services().inbox.page(user, limit, after)
        return MyInbox(items=page.items, next_cursor=page.next_cursor, unread=page.unread)

    @router.get("/inbox/unread")
    async def my_unread(user: User) -> Unread:
        return Unread(unread=await services().inbox.unread(user))

    async def change(user: str, action: str, notification_id: str = "") -> Unread:
        unread = await services().inbox.change(user, action, notification_id)
        if unread is None:
            raise not_found("notification", notification_id, "notification_id", "not in inbox")
        return Unread(unread=unread)

    @router.post("/inbox/read-all")
    async def my_read_all(user: User) -> Unread:
        """Mark every item read; the user's open streams get `read_all`."""
        return await change(user, "read_all")

    @router.post("/inbox/{notification_id}/read")
    async def my_read(user: User, notification_id: NotificationId) -> Unread:
        """Mark one item read; the user's open streams (other tabs, devices) get `read`."""
        return await change(user, "read", notification_id)

    @router.delete("/inbox/{notification_id}")
    async def my_delete(user: User, notification_id: NotificationId) -> Unread:
        """Remove one item; the user's open streams get `deleted`."""
        return await change(user, "delete", notification_id)


def _account_routes(router: APIRouter, User: Any, services: Callable[[], Me]) -> None:
    """Preferences, the app's own devices, feedback on the user's own notifications."""

    @router.get("/preferences")
    async def my_preferences(user: User) -> PreferencesIn:
        """The preference center: channels, categories, quiet hours, daily marketing cap."""
        lookup = await services().users.fleet.shard(user).lookup.remote([user])
        return preferences_of(lookup)

    @router.put("/preferences")
    async def my_put_preferences(user: User, prefs: PreferencesIn) -> PreferencesIn:
        shard = services().users.fleet.shard(user)
        await shard.upsert_preferences.remote(preferences_row(user, prefs))
        return prefs

    @router.post("/devices", status_code=201)
    async def my_device(user: User, device: MyDeviceIn, response: Response) -> DeviceOut:
        """The app registers its own push token (201; the same token again: 200)."""
        full = DeviceIn(user_id=user, **device.model_dump())
        device_id, created = await register_device(services().users, full)
        if not created:
            response.status_code = 200
        return DeviceOut(device_id=device_id, created=created)

    @router.delete("/devices/{device_id}", status_code=204)
    async def my_device_gone(user: User, device_id: DeviceId) -> Response:
        """Delete the device and its token (404 when it is not the user's)."""
        await unregister_device(services().users, device_id, user)
        return Response(status_code=204)

    @router.post("/devices/{device_id}/heartbeat", status_code=204)
    async def my_device_heartbeat(user: User, device_id: DeviceId) -> Response:
        """The app is alive on this device of the user's: `last_seen_at` becomes now, so a
        stale device gets pushes again (204; 404 when it is not the user's)."""
        await device_heartbeat(services().users, device_id, user)
        return Response(status_code=204)

    @router.post("/feedback")
    async def my_feedback(user: User, feedback: MyFeedbackIn) -> FeedbackAccepted:
        """Opened / clicked / dismissed, of the user's own notifications only (else 404)."""
        return await record_feedback(
            services().users, feedback.notification_id, user, feedback.action, hide_others=True
        )
