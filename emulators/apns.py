"""APNs emulator: Apple's HTTP/2 provider API as Herald's APNs client sees it.

`POST /3/device/{token}` with the `apns-*` headers and a provider token (ES256 JWT, `kid`
= key id, `iss` = team id); the answers and reasons are Apple's: 200 with `apns-id` and no
body, else `{"reason": ...}` — 400 BadCollapseId / BadDeviceToken / BadExpirationDate /
BadMessageId / BadPriority / InvalidPushType / MissingTopic / PayloadEmpty, 403
InvalidProviderToken / ExpiredProviderToken / MissingProviderToken, 410 Unregistered, 413
PayloadTooLarge, 429 TooManyRequests, 500 InternalServerError, 503 ServiceUnavailable.

Checks run in one fixed order, so a request with several faults always gets the same
answer: the provider token, the headers (`header_refusal`), the device token, the payload
(`payload_refusal`), and only then the device's state (dead tokens) and the fault plan —
a malformed push is refused as malformed even to a dead token or under a fault plan.

Stricter than Apple, on purpose (reason `BadPayload`, a name Apple does not use, so a test
can tell the emulator's own refusals from Apple's): a background push with an `alert`, a
background push without `content-available: 1`, and an `aps.badge` that is not an integer.
Apple answers 200 to those and then drops the push, or shows no badge, on the device — a
bug no test would see. The log records what was wrong as the item's `detail`.

Every request is logged whole: the device token, every header (the provider token reduced
to its scheme, see `recorded_headers`), the body's size, the parsed payload when it is
JSON, the key id the provider token names (`key_id`), and for a refusal its `reason`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import jwt

from emulators.common import (
    ProviderEmulator,
    TrustedKeys,
    json_response,
    recorded_headers,
    retry_after_header,
)
from emulators.h2server import Request, Response

_TOKEN = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120  # Apple allows VoIP pushes 5 KB, every other kind 4 KB
MAX_COLLAPSE_ID = 64  # bytes
PUSH_TYPES = frozenset({"alert", "background", "location", "voip", "complication",
                        "fileprovider", "mdm", "liveactivity", "pushtotalk", "widgets",
                        "controls"})  # fmt: skip
PRIORITIES = frozenset({"10", "5", "1"})
DEFAULT_PRIORITY = "10"  # what Apple assumes when apns-priority is absent
REASONS = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}


class Refusal(NamedTuple):
    """The answer to a request Apple does not take: the status, the reason, and where the
    reason alone does not say what was wrong (the emulator's stricter checks above all) a
    sentence that does — logged, not sent: Apple's error body has the reason only."""

    status: int
    reason: str
    detail: str = ""


def header_refusal(headers: dict[str, str]) -> Refusal | None:
    """Apple's checks on the `apns-*` headers. Absent headers take Apple's defaults: no
    push type, priority 10 — which is why a background push must say priority 5."""
    if not headers.get("apns-topic"):
        return Refusal(400, "MissingTopic")
    apns_id = headers.get("apns-id")
    if apns_id is not None and not _UUID.match(apns_id):
        return Refusal(400, "BadMessageId")
    push_type = headers.get("apns-push-type")
    if push_type is not None and push_type not in PUSH_TYPES:
        return Refusal(400, "InvalidPushType")
    priority = headers.get("apns-priority", DEFAULT_PRIORITY)
    if priority not in PRIORITIES:
        return Refusal(400, "BadPriority")
    if push_type == "background" and priority != "5":
        return Refusal(400, "BadPriority", "a background push must have apns-priority 5")
    expiration = headers.get("apns-expiration")
    if expiration is not None and not expiration.isdigit():
        return Refusal(400, "BadExpirationDate")
    collapse_id = headers.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
        return Refusal(400, "BadCollapseId")
    return None


def payload_refusal(body: bytes, payload: Any, push_type: str | None) -> Refusal | None:
    """Apple's checks on the body (`payload` is it parsed, None when it is not JSON), then
    the emulator's stricter ones on `aps` (see the module's docstring)."""
    if not body:
        return Refusal(400, "PayloadEmpty")
    if len(body) > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
        return Refusal(413, "PayloadTooLarge")
    if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
        return Refusal(400, "PayloadEmpty", "the payload is not a JSON object with an aps object")
    aps = payload["aps"]
    if "badge" in aps and type(aps["badge"]) is not int:  # bool is an int subclass: not here
        return Refusal(400, "BadPayload", "aps.badge must be an integer")
    if push_type == "background":
        if "alert" in aps:
            return Refusal(400, "BadPayload", "a background push carries no aps.alert")
        available = aps.get("content-available")
        if type(available) is not int or available != 1:
            return Refusal(400, "BadPayload", "a background push needs aps.content-available 1")
    return None


def _parsed(body: bytes) -> tuple[bool, Any]:
    """(True, the body as JSON) or (False, None) when it is empty or not JSON."""
    try:
        return True, json.loads(body)
    except ValueError:  # includes an empty body and invalid UTF-8
        return False, None


class ApnsEmulator(ProviderEmulator):
    """Trusts `public_key_pem` as `key_id` and, given `key_dir`, every
    `apns-public-<key id>.pem` there (re-read on change), minus the key ids revoked through
    `/_emulator/revoked`; each logged request names the key id it was signed with."""

    def __init__(
        self, public_key_pem: bytes, key_id: str, team_id: str, key_dir: Path | None = None
    ) -> None:
        super().__init__()
        self.keys = TrustedKeys({key_id: public_key_pem}, key_dir, prefix="apns-public-")
        self.team_id = team_id
        # verified provider token → (its iat, its key id)
        self._valid_jwts: dict[str, tuple[float, str]] = {}

    def route(self, request: Request) -> Response:
        if request.method != "POST":
            return self._error(405, "MethodNotAllowed")
        if not request.path.startswith("/3/device/"):
            return self._error(404, "BadPath")
        token = request.path.removeprefix("/3/device/")
        item: dict[str, Any] = {
            "token": token,
            "headers": recorded_headers(request),
            "payload_bytes": len(request.body),
        }
        is_json, payload = _parsed(request.body)
        if is_json:
            item["payload"] = payload
        key_id = _key_id(request.headers.get("authorization"))
        if key_id is not None:
            item["key_id"] = key_id
        refusal = self._judge(request, token, payload)
        if refusal is not None:
            item["reason"] = refusal.reason
            if refusal.detail:
                item["detail"] = refusal.detail
        self.state.record(item, 200 if refusal is None else refusal.status)
        # Apple answers every request with its apns-id, errors included (aioapns matches
        # error bodies to requests by it).
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4()).upper()
        if refusal is None:
            return Response(
                200, None, [("apns-id", apns_id), ("apns-unique-id", str(uuid.uuid4()))]
            )
        extra = {"timestamp": int(time.time() * 1000)} if refusal.status == 410 else {}
        return self._error(refusal.status, refusal.reason, extra, [("apns-id", apns_id)])

    def _judge(self, request: Request, token: str, payload: Any) -> Refusal | None:
        """None when Apple would take the push, else its refusal (see the module's order)."""
        auth = self._check_auth(request.headers.get("authorization"))
        if auth:
            return Refusal(403, auth)
        refusal = header_refusal(request.headers)
        if refusal is not None:
            return refusal
        if not _TOKEN.match(token):
            return Refusal(400, "BadDeviceToken")
        push_type = request.headers.get("apns-push-type")
        refusal = payload_refusal(request.body, payload, push_type)
        if refusal is not None:
            return refusal
        if token in self.state.dead:
            return Refusal(410, "Unregistered")
        fault = self.state.draw_fault()
        if fault is not None:
            return Refusal(fault, REASONS.get(fault, "InternalServerError"))
        return None

    def _error(
        self,
        status: int,
        reason: str,
        extra: dict | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        headers = [*(headers or []), *retry_after_header(self.state, status)]
        return json_response(status, {"reason": reason, **(extra or {})}, headers)

    def _check_auth(self, header: str | None) -> str | None:
        """None when the provider token is good, else Apple's reason. A token signed with
        a key revoked since it was first verified is refused from then on."""
        if not header or not header.lower().startswith("bearer "):
            return "MissingProviderToken"
        token = header[7:].strip()
        known = self._valid_jwts.get(token)
        if known is None or known[1] in self.state.revoked:
            try:
                kid = jwt.get_unverified_header(token).get("kid")
                public = None if kid in self.state.revoked else self.keys.get(kid)
                if public is None:
                    return "InvalidProviderToken"
                claims = jwt.decode(token, public, algorithms=["ES256"])
            except jwt.PyJWTError:
                return "InvalidProviderToken"
            if claims.get("iss") != self.team_id:
                return "InvalidProviderToken"
            known = (float(claims.get("iat", 0)), kid)
            self._valid_jwts[token] = known
        if time.time() - known[0] > 3600:
            return "ExpiredProviderToken"
        return None


def _key_id(header: str | None) -> str | None:
    """The `kid` a provider token names (unverified: for the log only)."""
    if not header or not header.lower().startswith("bearer "):
        return None
    try:
        return jwt.get_unverified_header(header[7:].strip()).get("kid")
    except jwt.PyJWTError:
        return None
