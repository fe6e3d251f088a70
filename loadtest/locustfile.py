"""Load on the Serve endpoint the way backend services use it: batches of order updates
(the bulk of the traffic), device registrations, status polls, and now and then a price
drop or a small campaign. Any answer but the expected 2xx counts as a failure.

    make load                       # 60 s against http://127.0.0.1:8000 (`make run` first)
    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 20 -r 5 -t 60s --csv bench/results/load

`HERALD_LOAD_KEY` is the API key (default: the local stack's `dev-admin-key`);
`HERALD_LOAD_USERS` the customers (an iPhone each) per simulated backend (default 50);
`HERALD_LOAD_BATCH` the events per POST (default 100); `HERALD_LOAD_AUDIENCE` a campaign's
audience_limit (default 1,000); `HERALD_LOAD_PRODUCT_PREFIX` the product ids price drops
use (default `p`, the synthetic catalogue's).
"""

from __future__ import annotations

import os
import random
import secrets
import time
import uuid

from locust import FastHttpUser, between, task

KEY = os.environ.get("HERALD_LOAD_KEY", "dev-admin-key")
BATCH = int(os.environ.get("HERALD_LOAD_BATCH", "100"))
AUDIENCE = int(os.environ.get("HERALD_LOAD_AUDIENCE", "1000"))
PRODUCTS = os.environ.get("HERALD_LOAD_PRODUCT_PREFIX", "p")
# Campaigns are rare next to events: one every CAMPAIGN_EVERY_S seconds per locust process.
CAMPAIGN_EVERY_S = float(os.environ.get("HERALD_LOAD_CAMPAIGN_EVERY_S", "60"))
_last_campaign = [float("-inf")]
USERS_PER_LOCUST = int(os.environ.get("HERALD_LOAD_USERS", "50"))
STATUSES = ["paid", "packed", "shipped", "out_for_delivery", "delivered"]


class Backend(FastHttpUser):
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        """Like a shop's backend: its customers have the app (an iPhone each) before their
        orders produce updates."""
        self.headers = {"Authorization": f"Bearer {KEY}"}
        self.recent: list[str] = []
        prefix = f"load-{uuid.uuid4().hex[:8]}"
        self.users = [f"{prefix}-{i}" for i in range(USERS_PER_LOCUST)]
        for user in self.users:
            self._register(user)

    def _register(self, user: str) -> None:
        body = {"user_id": user, "platform": "ios", "token": secrets.token_hex(32)}
        self.client.post("/v1/devices", json=body, headers=self.headers, name="POST /v1/devices")

    @task(20)
    def order_updates(self) -> None:
        events = [
            {
                "event_id": f"ld-{uuid.uuid4().hex}",
                "type": "order.updated",
                "user_id": random.choice(self.users),
                "order_id": f"o{random.randrange(1_000_000)}",
                "status": random.choice(STATUSES),
            }
            for _ in range(BATCH)
        ]
        with self.client.post(
            "/v1/events", json={"events": events}, headers=self.headers,
            name="POST /v1/events", catch_response=True,
        ) as answer:  # fmt: skip
            if answer.status_code != 202:
                answer.failure(f"{answer.status_code}: {answer.text[:200]}")
                return
            self.recent = answer.json()["accepted"][-5:]

    @task(5)
    def register_device(self) -> None:
        """A new customer installs the app; the oldest one leaves the pool."""
        user = f"{self.users[0].rsplit('-', 1)[0]}-{uuid.uuid4().hex[:6]}"
        self._register(user)
        self.users = [*self.users[1:], user]

    @task(10)
    def poll_status(self) -> None:
        if self.recent:
            nid = random.choice(self.recent)
            self.client.get(
                f"/v1/notifications/{nid}", headers=self.headers, name="GET /v1/notifications/{id}"
            )

    @task(1)
    def campaign(self) -> None:
        """A small flash sale: the 1 % of synthetic-style users with many orders."""
        if time.monotonic() - _last_campaign[0] < CAMPAIGN_EVERY_S:
            return
        _last_campaign[0] = time.monotonic()
        body = {
            "campaign_id": f"ld-{uuid.uuid4().hex[:16]}",
            "segment": {"attr": {"name": "orders", "op": "ge", "value": 40}},
            "variants": [
                {"variant_id": "a", "title": "Flash sale", "body": "Up to 50 % off"},
                {
                    "variant_id": "b",
                    "title": "2 hours left",
                    "body": "Ends soon",
                    "style": "urgent",
                },
            ],
            "audience_limit": AUDIENCE,
        }
        self.client.post(
            "/v1/campaigns", json=body, headers=self.headers, name="POST /v1/campaigns"
        )

    @task(1)
    def price_drop(self) -> None:
        event = {
            "event_id": f"ld-drop-{uuid.uuid4().hex}",
            "type": "price.dropped",
            "product_id": f"{PRODUCTS}{random.randrange(1000)}",
            "old_price": 100.0,
            "new_price": 79.0,
        }
        self.client.post(
            "/v1/events", json={"events": [event]}, headers=self.headers, name="POST price drop"
        )
