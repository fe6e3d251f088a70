"""APNs emulator: Apple's HTTP/2 provider API as Herald's APNs client sees it.

`POST /3/device/{token}` with the `apns-*` headers and a provider token (ES256 JWT, `kid`
= key id, `iss` = team id); the answers and reasons are Apple's: 200 with `apns-id` and no
body, 400 BadDeviceToken / MissingTopic / PayloadEmpty, 403 InvalidProviderToken /
ExpiredProviderToken, 410 Unregistered, 413 PayloadTooLarge, 429 TooManyRequests,
500 InternalServerError, 503 ServiceUnavailable.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import jwt

from emulators.common import ProviderEmulator, json_response, retry_after_header
from emulators.h2server import Request, Response

_TOKEN = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_PAYLOAD = 4096
REASONS = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}
_KEPT_HEADERS = ("apns-id", "apns-topic", "apns-push-type", "apns-priority",
                 "apns-expiration", "apns-collapse-id")  # fmt: skip


class ApnsEmulator(ProviderEmulator):
    def __init__(self, public_key_pem: bytes, key_id: str, team_id: str) -> None:
        super().__init__()
        self.public_key = public_key_pem
        self.key_id, self.team_id = key_id, team_id
        self._valid_jwts: dict[str, float] = {}  # verified provider token → its iat

    def route(self, request: Request) -> Response:
        if request.method != "POST":
            return self._error(405, "MethodNotAllowed")
        if not request.path.startswith("/3/device/"):
            return self._error(404, "BadPath")
        token = request.path.removeprefix("/3/device/")
        item = {
            "token": token,
            "headers": {k: request.headers[k] for k in _KEPT_HEADERS if k in request.headers},
        }
        status, reason, extra = self._judge(request, token, item)
        self.state.record(item, status)
        # Apple answers every request with its apns-id, errors included (aioapns matches
        # error bodies to requests by it).
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4()).upper()
        if status == 200:
            return Response(
                200, None, [("apns-id", apns_id), ("apns-unique-id", str(uuid.uuid4()))]
            )
        return self._error(status, reason, extra, [("apns-id", apns_id)])

    def _judge(self, request: Request, token: str, item: dict) -> tuple[int, str, dict]:
        auth = self._check_auth(request.headers.get("authorization"))
        if auth:
            return 403, auth, {}
        if not request.headers.get("apns-topic"):
            return 400, "MissingTopic", {}
        if not _TOKEN.match(token):
            return 400, "BadDeviceToken", {}
        if not request.body:
            return 400, "PayloadEmpty", {}
        if len(request.body) > MAX_PAYLOAD:
            return 413, "PayloadTooLarge", {}
        try:
            payload = json.loads(request.body)
        except ValueError:
            return 400, "PayloadEmpty", {}
        item["payload"] = payload
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return 400, "PayloadEmpty", {}
        if token in self.state.dead:
            return 410, "Unregistered", {"timestamp": int(time.time() * 1000)}
        fault = self.state.draw_fault()
        if fault is not None:
            return fault, REASONS.get(fault, "InternalServerError"), {}
        return 200, "", {}

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
        """None when the provider token is good, else Apple's reason."""
        if not header or not header.lower().startswith("bearer "):
            return "MissingProviderToken"
        token = header[7:].strip()
        iat = self._valid_jwts.get(token)
        if iat is None:
            try:
                head = jwt.get_unverified_header(token)
                claims = jwt.decode(token, self.public_key, algorithms=["ES256"])
            except jwt.PyJWTError:
                return "InvalidProviderToken"
            if head.get("kid") != self.key_id or claims.get("iss") != self.team_id:
                return "InvalidProviderToken"
            iat = float(claims.get("iat", 0))
            self._valid_jwts[token] = iat
        if time.time() - iat > 3600:
            return "ExpiredProviderToken"
        return None
