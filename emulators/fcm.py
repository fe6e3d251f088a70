"""FCM emulator: Google's FCM HTTP v1 API and the OAuth2 token endpoint in front of it.

`POST /token` takes the JWT-bearer grant google-auth sends for a service account (signature
checked against the account this emulator wrote) and issues access tokens;
`POST /v1/projects/{project}/messages:send` checks the bearer token and answers like
Google: 200 `{"name": ...}`, or the google.rpc error JSON with an FcmError `errorCode`
(UNREGISTERED 404, INVALID_ARGUMENT 400, QUOTA_EXCEEDED 429, UNAVAILABLE 503, INTERNAL 500,
UNAUTHENTICATED 401, SENDER_ID_MISMATCH 403).

What Google refuses in a message, and in which words, is `emulators.fcm_message`. Checks
run in one fixed order: the bearer token, the project, the body's fields as Google's parser
sees them, the registration token, the message's content, then the device's state (dead
tokens) and the fault plan. A `validate_only` request is checked like any other and, when
good, answered with Google's dry-run name (`.../messages/fake_message_id`).

Every send is logged whole: the project, every header (the bearer token reduced to its
scheme, see `recorded_headers`), the `message` object as sent, its `token`, whether it was
`validate_only`, and for a refusal its `reason` (the error's message).
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from pathlib import Path
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulators.common import (
    ProviderEmulator,
    TrustedKeys,
    json_response,
    recorded_headers,
    retry_after_header,
)
from emulators.fcm_message import InvalidArgument, check_content, check_fields, fcm_error
from emulators.h2server import Request, Response
from emulators.pki import write_private

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{8,}:[A-Za-z0-9_\-]{20,4000}$")
_SEND = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
# status → (google.rpc status, FcmError errorCode, message)
ERRORS = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Request had invalid credentials."),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    404: ("NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded for quota metric."),
    500: ("INTERNAL", "INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
}


GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
# Herald's FCM sender tells a dead token from other bad arguments by "registration token".
TOKEN_REFUSED = "The registration token is not a valid FCM registration token"


class FcmEmulator(ProviderEmulator):
    """Takes assertions signed by `public_key_pem` (any key id) and, given `key_dir`, by
    every `fcm-public-<private_key_id>.pem` there (re-read on change). A key id revoked
    through `/_emulator/revoked` gets no new access token, and the tokens already minted
    from it stop working (stricter than Google, whose tokens live out their hour: a test
    of rotation must see the old key fail at once)."""

    def __init__(
        self, project_id: str, public_key_pem: bytes, token_uri: str, key_dir: Path | None = None
    ) -> None:
        super().__init__()
        self.project_id = project_id
        self.public_key = public_key_pem
        self.keys = TrustedKeys({}, key_dir, prefix="fcm-public-")
        self.token_uri = token_uri
        self.access_tokens: dict[str, str | None] = {}  # access token → the key id it came from

    def route(self, request: Request) -> Response:
        if request.path == "/token" and request.method == "POST":
            return self._token(request)
        match = _SEND.match(request.path)
        if not match or request.method != "POST":
            return self._error(404, "Not found", code="NOT_FOUND")
        item: dict = {"project": match.group(1), "headers": recorded_headers(request)}
        status, message, details = self._judge(request, match.group(1), item)
        if status != 200:
            item["reason"] = message
            self.state.record(item, status)
            return self._error(status, message, details=details)
        self.state.record(item, status)
        message_id = "fake_message_id" if item.get("validate_only") else uuid.uuid4().int >> 64
        return json_response(200, {"name": f"projects/{self.project_id}/messages/{message_id}"})

    def _judge(
        self, request: Request, project: str, item: dict
    ) -> tuple[int, str, list[dict] | None]:
        """(200, "", None) when Google would take the message, else (status, message,
        details) of its error; logs the message into `item` as soon as there is one."""
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return 401, ERRORS[401][2], None
        item["key_id"] = self.access_tokens[auth[7:]]
        if item["key_id"] in self.state.revoked:
            return 401, ERRORS[401][2], None
        if project != self.project_id:
            return 403, ERRORS[403][2], None
        try:
            body = json.loads(request.body)
        except ValueError:
            return 400, "Invalid JSON payload received.", None
        message = body.get("message") if isinstance(body, dict) else None
        item["message"] = message
        item["token"] = message.get("token") if isinstance(message, dict) else None
        if isinstance(body, dict) and body.get("validate_only", body.get("validateOnly")):
            item["validate_only"] = True
        try:
            check_fields(body)
            if message is None:
                raise InvalidArgument("Invalid JSON payload received.")
            if not item["token"] or not _TOKEN.match(str(item["token"])):
                raise InvalidArgument(TOKEN_REFUSED)
            check_content(message)
        except InvalidArgument as refused:
            return 400, refused.message, refused.details
        if item["token"] in self.state.dead:
            return 404, ERRORS[404][2], None
        fault = self.state.draw_fault()
        if fault is not None:
            return fault, ERRORS.get(fault, ERRORS[500])[2], None
        return 200, "", None

    def _token(self, request: Request) -> Response:
        form = parse_qs(request.body.decode())
        assertion = (form.get("assertion") or [""])[0]
        try:
            key_id = jwt.get_unverified_header(assertion).get("kid")
            if key_id in self.state.revoked:
                raise jwt.InvalidKeyError(f"key {key_id} is revoked")
            public = self.keys.get(key_id) or self.public_key
            # google-auth signs for Google's endpoint whatever token_uri says; accept both.
            audience = [self.token_uri, GOOGLE_TOKEN_URI]
            jwt.decode(assertion, public, algorithms=["RS256"], audience=audience)
        except jwt.PyJWTError as exc:
            return json_response(400, {"error": "invalid_grant", "error_description": str(exc)})
        token = "ya29.emulator-" + secrets.token_urlsafe(24)
        self.access_tokens[token] = key_id
        return json_response(
            200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        )

    def _error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        details: list[dict] | None = None,
    ) -> Response:
        """The google.rpc error JSON; `details` default to the FcmError of the status."""
        rpc_status, error_code, _ = ERRORS.get(status, ERRORS[500])
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": code or rpc_status,
                "details": details if details is not None else [fcm_error(error_code)],
            }
        }
        return json_response(status, body, retry_after_header(self.state, status))


def write_service_account(path: Path, project_id: str, token_uri: str) -> bytes:
    """A fresh service account (0600) for this emulator; returns its public key (PEM),
    also written beside it as `fcm-public-<private_key_id>.pem`, which an emulator given
    that directory trusts: called again, it is a second account to rotate Herald to."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key_id = secrets.token_hex(20)
    account = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": key_id,
        "private_key": private_pem,
        "client_email": f"herald@{project_id}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbits(64)),
        "token_uri": token_uri,
    }
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Trusted before Herald can read the account: a watcher never sees an unknown key.
    (Path(path).parent / f"fcm-public-{key_id}.pem").write_bytes(public)
    write_private(Path(path), json.dumps(account, indent=2))
    return public
