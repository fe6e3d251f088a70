"""The provider emulators take what Apple and Google take — Herald's pushes of today, rich
alerts, silent pushes, image and data-only messages — record each request whole, and refuse
what Apple and Google refuse, with their statuses and reasons.

The emulators run in-process: requests are `emulators.h2server.Request` objects handed to
`handle`, with real credentials (an ES256 provider token for APNs; for FCM an access token
the emulator issued for a JWT-bearer grant signed with the service account it wrote). FCM
messages that are valid are built with firebase-admin's own classes and encoder, so they
are byte for byte what Herald's sender puts on the wire.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from firebase_admin import messaging

from emulators.apns import ApnsEmulator
from emulators.fcm import TOKEN_REFUSED, FcmEmulator, write_service_account
from emulators.fcm_message import fcm_error
from emulators.h2server import Request, Response

KEY_ID, TEAM_ID, TOPIC = "KEYID12345", "TEAM123456", "com.example.herald"
DEVICE = "ab" * 32
PROJECT = "herald-test"
TOKEN_URI = "https://127.0.0.1:1/token"
FCM_DEVICE = "fcmdevice1:" + "x" * 140
IMAGE = "https://cdn.example.com/p/123.png"
SILENT = {"aps": {"content-available": 1}, "notification_id": "n-silent"}
AT_LIMIT = {"aps": {"alert": "x" * 4074}}  # 4,096 bytes as aioapns writes it
OVER_LIMIT = {"aps": {"alert": "x" * 4075}}
FCM_AT_LIMIT = {"blob": "x" * 4085}  # 4,096 bytes as compact JSON
SEND_PATH = f"/v1/projects/{PROJECT}/messages:send"
FCM_HEADERS = {"content-type": "application/json", "x-goog-api-client": "fire-admin/7.7.0"}


async def call(emulator, method: str, path: str, body: bytes = b"", **headers) -> Response:
    return await emulator.handle(Request(method, path, {}, headers, body))


async def received(emulator) -> list[dict]:
    """The log as a test reads it over HTTP: proves every item is JSON as well."""
    answer = await call(emulator, "GET", "/_emulator/received")
    return json.loads(answer.body)["received"]


# --- APNs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apns_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def apns(apns_key) -> tuple[ApnsEmulator, str]:
    """A fresh emulator and a provider token it accepts (what aioapns sends)."""
    public = apns_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"iss": TEAM_ID, "iat": int(time.time())}
    token = jwt.encode(claims, apns_key, algorithm="ES256", headers={"kid": KEY_ID})
    return ApnsEmulator(public, KEY_ID, TEAM_ID), token


# Headers and payload as Herald's APNs sender and aioapns make them today.
HERALD_HEADERS = {"apns-id": str(uuid.uuid5(uuid.NAMESPACE_URL, "d-1")), "apns-topic": TOPIC,
                  "apns-priority": "10", "apns-collapse-id": "order-A-1",
                  "apns-push-type": "alert"}  # fmt: skip
HERALD_PAYLOAD = {"aps": {"alert": {"title": "Order shipped", "body": "On its way."},
                          "sound": "default"},
                  "notification_id": "ev-1", "order_id": "A-1"}  # fmt: skip
REDACTED = {"authorization": "bearer <redacted>"}  # the provider token, as the log keeps it


async def push(apns, payload=None, **changes) -> tuple[Response, dict]:
    """Send one push: Herald's headers changed by `changes` (`_` stands for `-`, None drops
    one) and `payload` (bytes: the raw body). Returns the answer and its log item."""
    emulator, token = apns
    headers = {**HERALD_HEADERS, **{k.replace("_", "-"): v for k, v in changes.items()}}
    headers = {k: v for k, v in headers.items() if v is not None}
    headers["authorization"] = f"bearer {token}"
    if not isinstance(payload, bytes):
        payload = json.dumps(HERALD_PAYLOAD if payload is None else payload).encode()
    answer = await call(emulator, "POST", f"/3/device/{DEVICE}", payload, **headers)
    return answer, emulator.state.received[-1]


def test_the_payloads_at_the_limits_are_the_sizes_they_claim():
    assert len(json.dumps(AT_LIMIT).encode()) == 4096 == len(json.dumps(OVER_LIMIT)) - 1
    assert len(json.dumps(FCM_AT_LIMIT, separators=(",", ":"))) == 4096


def reason(answer: Response) -> str:
    return json.loads(answer.body)["reason"]


@pytest.mark.parametrize("priority", ["10", "5"])
async def test_herald_alerts_of_today_are_accepted_and_logged_whole(apns, priority):
    answer, item = await push(apns, apns_priority=priority)
    assert answer.status == 200 and answer.body is None
    assert dict(answer.headers)["apns-id"] == HERALD_HEADERS["apns-id"]
    [logged] = await received(apns[0])
    assert logged == item
    assert logged["token"] == DEVICE and logged["status"] == 200
    assert logged["payload"] == HERALD_PAYLOAD
    assert logged["headers"] == {**HERALD_HEADERS, "apns-priority": priority, **REDACTED}
    assert logged["payload_bytes"] == len(json.dumps(HERALD_PAYLOAD))
    assert apns[1] not in json.dumps(logged)  # the provider token never reaches the log


async def test_a_rich_alert_is_accepted_and_logged_whole(apns):
    payload = {
        "aps": {
            "alert": {"title": "Price drop", "subtitle": "Running shoes", "body": "Now 20% off"},
            "sound": "chime.caf",
            "badge": 3,
            "thread-id": "price-drops",
            "category": "PRICE_DROP",
            "mutable-content": 1,
        },
        "image_url": IMAGE,
        "notification_id": "pd-1",
    }
    expiration = str(int(time.time()) + 3600)
    answer, item = await push(apns, payload, apns_expiration=expiration)
    assert answer.status == 200, answer.body
    assert item["payload"] == payload
    assert item["headers"] == {**HERALD_HEADERS, "apns-expiration": expiration, **REDACTED}


async def test_a_silent_push_is_accepted_and_logged_whole(apns):
    answer, item = await push(apns, SILENT, apns_push_type="background", apns_priority="5")
    assert answer.status == 200, answer.body
    assert item["payload"] == SILENT and item["status"] == 200 and "reason" not in item
    silent = {"apns-push-type": "background", "apns-priority": "5"}
    assert item["headers"] == {**HERALD_HEADERS, **silent, **REDACTED}


@pytest.mark.parametrize(
    ("changes", "payload"),
    [
        pytest.param({"apns_priority": "1"}, None, id="priority-1"),
        pytest.param({"apns_priority": None, "apns_push_type": None}, None, id="no-headers"),
        pytest.param({"apns_collapse_id": "é" * 32}, None, id="collapse-id-of-64-bytes"),
        pytest.param({}, AT_LIMIT, id="payload-of-4096-bytes"),
        pytest.param({"apns_push_type": "voip"}, {"aps": {}, "call": "x" * 5000}, id="voip-5k"),
        pytest.param({}, {"aps": {"badge": 0}}, id="badge-0-clears"),
    ],
)
async def test_what_apple_takes_at_the_edges_is_accepted(apns, changes, payload):
    answer, _ = await push(apns, payload, **changes)
    assert answer.status == 200, answer.body


BACKGROUND = {"apns_push_type": "background", "apns_priority": "5"}


@pytest.mark.parametrize(
    ("changes", "payload", "status", "why"),
    [
        ({}, OVER_LIMIT, 413, "PayloadTooLarge"),
        ({"apns_push_type": "voip"}, {"aps": {}, "call": "x" * 5110}, 413, "PayloadTooLarge"),
        (BACKGROUND, {"aps": {"alert": "hi", "content-available": 1}}, 400, "BadPayload"),
        (BACKGROUND, {"aps": {}, "notification_id": "n"}, 400, "BadPayload"),
        (BACKGROUND, {"aps": {"content-available": True}}, 400, "BadPayload"),
        ({**BACKGROUND, "apns_priority": "10"}, SILENT, 400, "BadPriority"),
        ({**BACKGROUND, "apns_priority": "1"}, SILENT, 400, "BadPriority"),
        ({**BACKGROUND, "apns_priority": None}, SILENT, 400, "BadPriority"),  # absent is 10
        ({"apns_push_type": "banner"}, None, 400, "InvalidPushType"),
        ({"apns_push_type": ""}, None, 400, "InvalidPushType"),
        ({"apns_priority": "7"}, None, 400, "BadPriority"),
        ({"apns_priority": "high"}, None, 400, "BadPriority"),
        ({"apns_collapse_id": "c" * 65}, None, 400, "BadCollapseId"),
        ({"apns_collapse_id": "é" * 33}, None, 400, "BadCollapseId"),  # 66 bytes
        ({"apns_expiration": "tomorrow"}, None, 400, "BadExpirationDate"),
        ({"apns_id": "not-a-uuid"}, None, 400, "BadMessageId"),
        ({"apns_topic": None}, None, 400, "MissingTopic"),
        ({}, {"notification_id": "n"}, 400, "PayloadEmpty"),
        ({}, ["aps"], 400, "PayloadEmpty"),
        ({}, {"aps": {"badge": "3"}}, 400, "BadPayload"),
        ({}, {"aps": {"badge": 1.5}}, 400, "BadPayload"),
        ({}, {"aps": {"badge": True}}, 400, "BadPayload"),
        ({}, b"", 400, "PayloadEmpty"),
        ({}, b"{not json", 400, "PayloadEmpty"),
        ({}, b"null", 400, "PayloadEmpty"),
    ],
)
async def test_apple_refusals(apns, changes, payload, status, why):
    answer, item = await push(apns, payload, **changes)
    assert (answer.status, reason(answer)) == (status, why)
    assert item["status"] == status and item["reason"] == why
    if isinstance(payload, bytes):
        assert item["payload_bytes"] == len(payload)
    elif payload is not None:  # refused, yet logged whole
        assert item["payload"] == payload
    if why == "BadPayload":  # the emulator's own check says what was wrong
        assert item["detail"]


async def test_a_malformed_push_is_refused_before_the_device_state_is_looked_at(apns):
    emulator, _ = apns
    plan = json.dumps({"dead_tokens": [DEVICE]}).encode()
    assert (await call(emulator, "POST", "/_emulator/faults", plan)).status == 200
    answer, _ = await push(apns, {"aps": {"badge": "1"}})
    assert reason(answer) == "BadPayload"
    answer, _ = await push(apns)
    assert (answer.status, reason(answer)) == (410, "Unregistered")
    assert "timestamp" in json.loads(answer.body)


async def test_without_a_provider_token_nothing_else_is_looked_at(apns):
    emulator, _ = apns
    body = json.dumps({"aps": {"badge": "x"}}).encode()
    answer = await call(emulator, "POST", f"/3/device/{DEVICE}", body, **{"apns-topic": TOPIC})
    assert (answer.status, reason(answer)) == (403, "MissingProviderToken")
    assert emulator.state.received[-1]["headers"] == {"apns-topic": TOPIC}


# --- FCM -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_account(tmp_path_factory) -> tuple[bytes, dict]:
    path = tmp_path_factory.mktemp("fcm") / "account.json"
    public = write_service_account(path, PROJECT, TOKEN_URI)
    return public, json.loads(path.read_text())


@pytest.fixture
async def fcm(service_account) -> tuple[FcmEmulator, str]:
    """A fresh emulator and an access token it issued, the way google-auth gets one."""
    public, account = service_account
    emulator = FcmEmulator(PROJECT, public, TOKEN_URI)
    now = int(time.time())
    claims = {"iss": account["client_email"], "aud": TOKEN_URI, "iat": now, "exp": now + 3600,
              "scope": "https://www.googleapis.com/auth/firebase.messaging"}  # fmt: skip
    assertion = jwt.encode(claims, account["private_key"], algorithm="RS256")
    grant = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    answer = await call(emulator, "POST", "/token", urlencode(grant).encode())
    assert answer.status == 200, answer.body
    return emulator, json.loads(answer.body)["access_token"]


async def send(fcm, message, extra: dict | None = None) -> tuple[Response, dict, dict]:
    """Send one message (a firebase-admin `Message` is encoded as firebase-admin does);
    returns the answer, its JSON and the log item."""
    emulator, token = fcm
    if isinstance(message, messaging.Message):
        message = messaging._MessagingService.encode_message(message)
    body = json.dumps({"message": message, **(extra or {})}).encode()
    headers = {**FCM_HEADERS, "authorization": f"Bearer {token}"}
    answer = await call(emulator, "POST", SEND_PATH, body, **headers)
    return answer, json.loads(answer.body), emulator.state.received[-1]


def _with(**fields) -> dict:
    return {"token": FCM_DEVICE, **fields}


def herald_message(**android) -> messaging.Message:
    """What Herald's FCM sender builds today for a transactional push."""
    return messaging.Message(
        token=FCM_DEVICE,
        notification=messaging.Notification(title="Order shipped", body="On its way."),
        data={"notification_id": "ev-1", "order_id": "A-1", "status": "shipped"},
        android=messaging.AndroidConfig(priority="high", collapse_key="ev-1", **android),
    )


async def test_herald_messages_of_today_are_accepted_and_logged_whole(fcm):
    message = herald_message()
    answer, got, item = await send(fcm, message)
    assert answer.status == 200, got
    assert got["name"].startswith(f"projects/{PROJECT}/messages/")
    [logged] = await received(fcm[0])
    assert logged == item and logged["status"] == 200 and logged["token"] == FCM_DEVICE
    assert logged["message"] == messaging._MessagingService.encode_message(message)
    assert logged["headers"] == {**FCM_HEADERS, "authorization": "Bearer <redacted>"}
    assert fcm[1] not in json.dumps(logged)  # the access token never reaches the log


async def test_an_image_push_is_accepted_and_logged_whole(fcm):
    notification = messaging.AndroidNotification(
        sound="default", tag="order-A-1", click_action="OPEN_ORDER", channel_id="orders",
        image=IMAGE, color="#ff8800",
    )  # fmt: skip
    message = herald_message(ttl=3600.5, notification=notification)
    message.notification.image = IMAGE
    answer, got, item = await send(fcm, message)
    assert answer.status == 200, got
    sent = item["message"]
    assert sent["notification"]["image"] == IMAGE and sent["android"]["ttl"] == "3600.500000000s"
    assert sent["android"]["notification"] == {
        "sound": "default", "tag": "order-A-1", "click_action": "OPEN_ORDER",
        "channel_id": "orders", "image": IMAGE, "color": "#ff8800",
    }  # fmt: skip


async def test_a_data_only_message_is_accepted_and_logged_whole(fcm):
    data, android = {"notification_id": "s-1", "kind": "sync"}, {"priority": "normal", "ttl": 60}
    message = messaging.Message(data, token=FCM_DEVICE, android=messaging.AndroidConfig(**android))
    answer, got, item = await send(fcm, message)
    assert answer.status == 200, got
    sent = {"token": FCM_DEVICE, "data": data, "android": {**android, "ttl": "60s"}}
    assert item["message"] == sent


@pytest.mark.parametrize(
    "message",
    [
        _with(android={"priority": "HIGH"}),  # Google's parser takes enum names in any case
        _with(android={"notification": {"clickAction": "OPEN", "channelId": "o"}}),  # camel
        _with(android={"ttl": "0s"}),
        _with(data=FCM_AT_LIMIT),
    ],
)
async def test_what_google_takes_at_the_edges_is_accepted(fcm, message):
    answer, got, _ = await send(fcm, message)
    assert answer.status == 200, got


async def test_validate_only_is_checked_and_answered_as_a_dry_run(fcm):
    answer, got, item = await send(fcm, herald_message(), {"validate_only": True})
    assert got["name"] == f"projects/{PROJECT}/messages/fake_message_id"
    assert item["validate_only"] is True
    answer, got, _ = await send(fcm, _with(data={"n": 1}), {"validate_only": True})
    assert answer.status == 400
    _, got, _ = await send(fcm, herald_message(), {"dry_run": True})  # not Google's name
    unknown = 'Invalid JSON payload received. Unknown name "dry_run": Cannot find field.'
    assert got["error"]["message"] == unknown


@pytest.mark.parametrize(
    ("message", "field", "text"),
    [
        (_with(data={"a": "1", "b": 2}), "message.data[1].value",
         "Invalid value at 'message.data[1].value' (TYPE_STRING), 2"),
        (_with(data={"a": {"b": "c"}}), "message.data[0].value", "(TYPE_STRING)"),
        (_with(data=["a"]), "message.data", "Invalid value at 'message.data'"),
        (_with(android={"data": {"n": True}}), "message.android.data[0].value", "true"),
        (_with(android={"notification": {"colour": "#fff"}}), "message.android.notification",
         "Invalid JSON payload received. Unknown name \"colour\" at "
         "'message.android.notification': Cannot find field."),
        (_with(priority="high"), "message", 'Unknown name "priority" at \'message\''),
        (_with(Data={"a": "b"}), "message", 'Unknown name "Data" at \'message\''),
        (_with(android={"priority": "urgent"}), "message.android.priority",
         "AndroidMessagePriority), \"urgent\""),
        (_with(android={"priority": 1}), "message.android.priority", "AndroidMessagePriority"),
        (_with(android={"ttl": "1h"}), "message.android.ttl", "Duration), \"1h\""),
        (_with(android={"ttl": 3600}), "message.android.ttl", "Duration), 3600"),
        (_with(android={"ttl": "-5s"}), "message.android.ttl", "Duration"),
        (_with(notification={"image": "cat.png"}), "message.notification.image",
         "not an http(s) URL"),
        (_with(notification={"image": "ftp://cdn.example.com/cat.png"}),
         "message.notification.image", "not an http(s) URL"),
        (_with(android={"notification": {"image": "https://"}}),
         "message.android.notification.image", "not an http(s) URL"),
        (_with(notification="hello"), "message.notification", "Invalid value"),
    ],
)  # fmt: skip
async def test_google_refusals_name_the_field(fcm, message, field, text):
    answer, got, item = await send(fcm, message)
    error = got["error"]
    assert (answer.status, error["code"], error["status"]) == (400, 400, "INVALID_ARGUMENT")
    assert text in error["message"]
    [violation] = error["details"][0]["fieldViolations"]
    assert violation == {"field": field, "description": error["message"]}
    assert item["status"] == 400 and item["reason"] == error["message"]
    assert item["message"] == message  # refused, yet logged whole


@pytest.mark.parametrize(
    "message",
    [
        _with(data={"blob": "x" * 4090}),
        _with(notification={"body": "x" * 2100}, data={"blob": "x" * 2000}),
        _with(android={"notification": {"body": "é" * 2100}}),  # 4,200 bytes of UTF-8
    ],
)
async def test_a_message_over_4_kb_is_too_big(fcm, message):
    answer, got, item = await send(fcm, message)
    assert answer.status == 400 and got["error"]["message"] == "Android message is too big"
    assert got["error"]["details"][-1]["errorCode"] == "INVALID_ARGUMENT"
    assert item["message"] == message


async def test_a_bad_registration_token_still_reads_as_one(fcm):
    """Herald's sender tells dead tokens from other bad arguments by these words."""
    answer, got, _ = await send(fcm, {"token": "short", "data": {"a": "b"}})
    assert (answer.status, got["error"]["message"]) == (400, TOKEN_REFUSED)
    assert got["error"]["details"] == [fcm_error("INVALID_ARGUMENT")]
