"""What Google's FCM HTTP v1 refuses in a send request's body, and how it says so.

Google reads the body as a protobuf before anything else, so these are refused first, as
400 INVALID_ARGUMENT with the parser's own message and a google.rpc.BadRequest detail that
names the field (`check_fields`):

- a name Google does not know, at the top, in `message`, `message.notification`,
  `message.android` or `message.android.notification` — "Invalid JSON payload received.
  Unknown name "x" at 'message.android.notification': Cannot find field.";
- a `data` (or `android.data`) value that is not a string — "Invalid value at
  'message.data[0].value' (TYPE_STRING), 1";
- an `android.priority` outside its enum (`normal`/`high`, any case, as Google's parser
  takes it) and an `android.ttl` that is not a Duration string such as "3600s".

Proto3 JSON takes field names in snake_case and lowerCamelCase alike, and so do these
checks. The `apns` and `webpush` blocks are passed through unchecked: Herald sends neither.

Then the checks on meaning (`check_content`): notification and data over 4,096 bytes are
"Android message is too big" (Google's words, with an empty BadRequest and the FcmError
INVALID_ARGUMENT detail). One check is the emulator's own, stricter than Google's: an
`image` (the notification's or android.notification's) must be an http(s) URL. Google
documents the field as a URL but not its answer to anything else; refusing here turns a
Herald bug into a failing test instead of a push that arrives without its picture.

What is not checked: reserved `data` keys (`from`, `google.*`, `gcm.*`), the 4-week TTL
ceiling, topics and conditions.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

MAX_PAYLOAD = 4096  # bytes of notification and data, Google's limit for both message kinds
_TYPES = "type.googleapis.com/google.firebase.fcm.v1."
_DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")
# Each object Google parses: its path → (proto type, field names in snake_case). Parents
# come before their children: a child is only looked at once its parent is an object.
OBJECTS: dict[str, tuple[str, frozenset[str]]] = {
    "": ("SendMessageRequest", frozenset({"message", "validate_only"})),
    "message": ("Message", frozenset({
        "name", "data", "notification", "android", "webpush", "apns", "fcm_options",
        "token", "topic", "condition", "fid"})),
    "message.notification": ("Notification", frozenset({"title", "body", "image"})),
    "message.android": ("AndroidConfig", frozenset({
        "collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification",
        "fcm_options", "direct_boot_ok", "bandwidth_constrained_ok",
        "restricted_satellite_ok"})),
    "message.android.notification": ("AndroidNotification", frozenset({
        "title", "body", "icon", "color", "sound", "tag", "click_action", "body_loc_key",
        "body_loc_args", "title_loc_key", "title_loc_args", "channel_id", "ticker", "sticky",
        "event_time", "local_only", "notification_priority", "default_sound",
        "default_vibrate_timings", "default_light_settings", "vibrate_timings", "visibility",
        "notification_count", "light_settings", "image", "bypass_proxy_notification",
        "proxy"})),
}  # fmt: skip
STRING_MAPS = ("message.data", "message.android.data")
IMAGES = ("notification.image", "android.notification.image")  # in the message
ANDROID_PRIORITIES = frozenset({"normal", "high"})


class InvalidArgument(Exception):
    """A 400 INVALID_ARGUMENT: Google's message and the error's `details` list."""

    def __init__(self, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details if details is not None else [fcm_error("INVALID_ARGUMENT")]


def fcm_error(code: str) -> dict:
    """The FcmError detail, where firebase-admin reads its `errorCode` from."""
    return {"@type": f"{_TYPES}FcmError", "errorCode": code}


def bad_request(field: str | None = None, description: str = "") -> dict:
    """google.rpc.BadRequest: naming the field for a parse error, bare for a size error."""
    detail: dict[str, Any] = {"@type": "type.googleapis.com/google.rpc.BadRequest"}
    if field is not None:
        detail["fieldViolations"] = [{"field": field, "description": description}]
    return detail


def _parse_error(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, [bad_request(field, message)])


def _invalid_value(field: str, type_name: str, value: Any) -> InvalidArgument:
    shown = json.dumps(value, ensure_ascii=False)
    return _parse_error(field, f"Invalid value at '{field}' ({type_name}), {shown}")


def _snake(name: str) -> str:
    """The snake_case field a JSON name stands for: `clickAction` is `click_action`, while
    `Data` stands for none (proto3 JSON takes the field's name or its lowerCamelCase)."""
    return _CAMEL_HUMP.sub(r"_\1", name).lower() if name[:1].islower() else name


def at(body: Any, path: str) -> Any:
    """The value at a dotted path of the body, None when any step is missing or not an
    object; a field spelled in lowerCamelCase is found under its snake_case path."""
    value = body
    for step in path.split(".") if path else ():
        if not isinstance(value, dict):
            return None
        value = next((v for k, v in value.items() if _snake(k) == step), None)
    return value


def check_fields(body: Any) -> None:
    """Raise `InvalidArgument` for what Google's parser refuses (see the module)."""
    for path, (type_name, names) in OBJECTS.items():
        value = at(body, path)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _invalid_value(path or "body", _TYPES + type_name, value)
        for name in value:
            if _snake(name) not in names:
                where = f" at '{path}'" if path else ""
                message = f'Invalid JSON payload received. Unknown name "{name}"{where}'
                raise _parse_error(path, message + ": Cannot find field.")
    for path in STRING_MAPS:
        mapping = at(body, path)
        if mapping is not None and not isinstance(mapping, dict):
            raise _invalid_value(path, "map<string, string>", mapping)
        for i, value in enumerate((mapping or {}).values()):
            if not isinstance(value, str):
                raise _invalid_value(f"{path}[{i}].value", "TYPE_STRING", value)
    priority = at(body, "message.android.priority")
    if priority is not None and str(priority).lower() not in ANDROID_PRIORITIES:
        raise _invalid_value(
            "message.android.priority", _TYPES + "AndroidMessagePriority", priority
        )
    ttl = at(body, "message.android.ttl")
    if ttl is not None and not (isinstance(ttl, str) and _DURATION.match(ttl)):
        raise _invalid_value(
            "message.android.ttl", "type.googleapis.com/google.protobuf.Duration", ttl
        )


def payload_bytes(message: dict) -> int:
    """Bytes of what reaches the device and counts against Google's 4 KB: the message's
    notification and data, and android's own, as compact UTF-8 JSON."""
    parts = ("notification", "data", "android.notification", "android.data")
    return sum(
        len(json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode())
        for part in (at(message, p) for p in parts)
        if part
    )


def check_content(message: dict) -> None:
    """Raise `InvalidArgument` for what Google refuses once the message parsed: its size,
    and (the emulator's stricter check) an image that is not an http(s) URL."""
    for path in IMAGES:
        image = at(message, path)
        if image is not None and not _is_web_url(image):
            field, shown = f"message.{path}", json.dumps(image, ensure_ascii=False)
            raise _parse_error(field, f"Invalid value at '{field}': not an http(s) URL, {shown}")
    if payload_bytes(message) > MAX_PAYLOAD:
        raise InvalidArgument(
            "Android message is too big", [bad_request(), fcm_error("INVALID_ARGUMENT")]
        )


def _is_web_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
