"""`herald demo`'s scenario against the running stack: it says every notification was
delivered, and shows what reached each emulator."""

from __future__ import annotations

from cluster.demo import StackInfo, run_scenario


def test_demo_scenario_delivers_everything(stack):
    info = StackInfo(
        api_url=stack.api_url,
        api_key="test-admin",
        apns_url=stack.apns.url,
        fcm_url=stack.fcm.url,
        ca_file=str(stack.settings.apns_ca_file),
        redis_url=stack.settings.redis_url,
    )
    lines: list[str] = []
    assert run_scenario(info, echo=lines.append), "\n".join(lines)
    assert lines[-1] == "demo: every notification delivered"
    assert any(line.startswith("APNs emulator got for alice (ios)") for line in lines)
    assert any(line.startswith("FCM emulator got for alice (android)") for line in lines)
    assert sum(line.startswith("notification ") for line in lines) == 4
