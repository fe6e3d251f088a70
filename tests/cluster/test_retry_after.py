"""A provider's Retry-After is honoured: the next attempt does not come sooner, even though
Herald's own backoff (0.1–0.2 s for a first retry in the test stack) would be much shorter."""

from __future__ import annotations

import itertools
import time

from ops.demo import fcm_token, wait_final
from tests.cluster.test_e2e import register


def test_fcm_retry_after_is_honoured(stack, api, emulators, uid):
    fcm = emulators["fcm"]
    fcm.post("/_emulator/reset").raise_for_status()
    # Two answers of 429 + Retry-After: 2, then the plan is lifted.
    fcm.post("/_emulator/faults", json={"error_rate": {"429": 1.0}, "retry_after_s": 2})
    user, token = f"ra-{uid}", fcm_token()
    register(api, user, "android", token)
    event = {"event_id": f"ra-{uid}", "type": "order.updated", "user_id": user,
             "order_id": "o1", "status": "shipped"}  # fmt: skip
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202

    def tries() -> list[dict]:
        items = fcm.get("/_emulator/received").json()["received"]
        return [i for i in items if i["token"] == token]

    deadline = time.monotonic() + 60
    while len(tries()) < 2:
        assert time.monotonic() < deadline, "the 429 was never retried"
        time.sleep(0.1)
    fcm.post("/_emulator/faults", json={}).raise_for_status()
    status = wait_final(api, [event["event_id"]], timeout_s=60)[event["event_id"]]
    assert status["state"] == "delivered", status

    seen = tries()
    assert [t["status"] for t in seen[:2]] == [429, 429] and seen[-1]["status"] == 200
    gaps = [b["received_at"] - a["received_at"] for a, b in itertools.pairwise(seen)]
    assert min(gaps) >= 1.9, f"retried sooner than Retry-After allows: {gaps}"
    fcm.post("/_emulator/reset").raise_for_status()
