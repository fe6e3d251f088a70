"""The demo population and the scripted scenario behind `herald run` and `herald demo`.

Both talk to Herald only through its public HTTP API and the emulators' `/_emulator/*`
endpoints — what a backend service and a curious operator would see.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

STACK_FILE = "stack.json"


@dataclass(frozen=True)
class StackInfo:
    """What a running local stack tells other commands (written to <data_dir>/stack.json)."""

    api_url: str
    api_key: str
    apns_url: str
    fcm_url: str
    ca_file: str
    redis_url: str
    stream_url: str = ""  # the stream gateway (absent in a stack.json of an older Herald)

    def save(self, data_dir: Path) -> None:
        (data_dir / STACK_FILE).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, data_dir: Path) -> StackInfo | None:
        path = data_dir / STACK_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None


def apns_token() -> str:
    """A token shaped like a real APNs one (64 hex characters): the API validates shape."""
    return secrets.token_hex(32)


def fcm_token() -> str:
    """A token shaped like a real FCM registration token, for the same reason."""
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"


def seed(api: httpx.Client) -> dict[str, list[dict]]:
    """A handful of demo users with iOS, Android and web devices; returns user → devices."""
    population = {
        "alice": [("ios", apns_token()), ("android", fcm_token())],
        "bob": [("web", fcm_token())],
        "carol": [("ios", apns_token())],
        "dave": [],  # no device: the inbox still gets his notifications
    }
    registered: dict[str, list[dict]] = {}
    for user, devices in population.items():
        api.put(
            f"/v1/users/{user}", json={"country": "US", "timezone": "America/New_York"}
        ).raise_for_status()
        registered[user] = []
        for platform, token in devices:
            answer = api.post(
                "/v1/devices", json={"user_id": user, "platform": platform, "token": token}
            )
            answer.raise_for_status()
            registered[user].append(
                {"platform": platform, "token": token, "device_id": answer.json()["device_id"]}
            )
    return registered


def wait_final(api: httpx.Client, ids: list[str], timeout_s: float = 30.0) -> dict[str, dict]:
    """Poll GET /v1/notifications/{id} until none is still moving (or the time is up).
    An id not known yet (404: still on its way from Kafka) counts as moving."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, dict] = {}
    while True:
        for nid in ids:
            statuses[nid] = api.get(f"/v1/notifications/{nid}").json()
        moving = [
            s
            for s in statuses.values()
            if s.get("state", "accepted") in ("accepted", "in_progress")
        ]
        if not moving or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)


def received(emulator_url: str, ca_file: str) -> list[dict]:
    """What an emulator was sent, over HTTP/2 + TLS with the stack's test CA like Herald's
    own senders: the demo shows what a provider would really have received."""
    with httpx.Client(base_url=emulator_url, verify=ca_file, http2=True) as client:
        answer = client.get("/_emulator/received")
        answer.raise_for_status()
        body = answer.json()
        return body["received"] if isinstance(body, dict) else body


def run_scenario(info: StackInfo, echo=print) -> bool:
    """Register devices, send order updates, show what reached each provider and the status
    of each notification. True only if every notification was delivered."""
    headers = {"Authorization": f"Bearer {info.api_key}"}
    with httpx.Client(base_url=info.api_url, headers=headers, timeout=30) as api:
        users = seed(api)
        echo(f"registered {sum(map(len, users.values()))} devices for {len(users)} users")
        run = uuid.uuid4().hex[:8]
        events = [
            {
                "event_id": f"demo-{run}-{user}",
                "type": "order.updated",
                "user_id": user,
                "order_id": f"A-{run}-{i}",
                "status": status,
            }
            for i, (user, status) in enumerate(
                zip(users, ["shipped", "out_for_delivery", "delivered", "refunded"], strict=True)
            )
        ]
        answer = api.post("/v1/events", json={"events": events})
        answer.raise_for_status()
        accepted = answer.json()["accepted"]
        echo(f"posted {len(events)} order updates: {len(accepted)} accepted")
        again = api.post("/v1/events", json={"events": events[:1]}).json()
        echo(f"posted the first one again: duplicate={again['duplicate']}")
        accepted += _request_any_notification(api, run, list(users), echo)
        statuses = wait_final(api, accepted)

    tokens = {d["token"]: (u, d["platform"]) for u, ds in users.items() for d in ds}
    for name, url in (("APNs", info.apns_url), ("FCM", info.fcm_url)):
        for item in received(url, info.ca_file):
            if item.get("token") in tokens:
                user, platform = tokens[item["token"]]
                echo(f"{name} emulator got for {user} ({platform}): {_title(item)}")
    ok = True
    for nid, status in statuses.items():
        channels = ", ".join(f"{d['channel']}={d['status']}" for d in status["deliveries"])
        echo(f"notification {nid}: {status['state']} [{channels}]")
        ok &= status["state"] == "delivered"
    echo("demo: every notification delivered" if ok else "demo: NOT every notification delivered")
    return ok


def _request_any_notification(
    api: httpx.Client, run: str, users: list[str], echo=print
) -> list[str]:
    """A shop-defined notification (`notification.requested`): inline content with
    variables and an image, to every demo user; its ids are `<event_id>:<user_id>`."""
    event_id = f"demo-{run}-back-in-stock"
    event = {
        "event_id": event_id,
        "type": "notification.requested",
        "user_ids": users,
        "category": "back_in_stock",
        "content": {
            "title": "Back in stock",
            "body": "{product} is back: {left} left",
            "image_url": "https://shop.example/img/sku-42.jpg",
            "deeplink": "shop://product/sku-42",
        },
        "variables": {"product": "Trail shoes", "left": 3},
    }
    answer = api.post("/v1/events", json={"events": [event]})
    answer.raise_for_status()
    echo(f"requested a back-in-stock notification with an image for {len(users)} users")
    return [f"{event_id}:{user}" for user in users]


def _title(item: dict) -> str:
    payload = item.get("payload") or item.get("message") or {}
    if "aps" in payload:
        return payload["aps"].get("alert", {}).get("title", "?")
    return (payload.get("notification") or {}).get("title", "?")
