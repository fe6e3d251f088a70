"""`herald demo`'s scenario against the running stack: it says every notification was
delivered, and shows what reached each emulator."""

from __future__ import annotations

from ops.demo import StackInfo, run_scenario


def test_demo_scenario_delivers_everything(stack):
    info = StackInfo(
        api_url=stack.api_url,
        api_key="test-admin",
        apns_url=stack.apns.url,
        fcm_url=stack.fcm.url,
        ca_file=str(stack.settings.apns.ca_file),
        redis_url=stack.settings.state.redis_url,
    )
    lines: list[str] = []
    assert run_scenario(info, echo=lines.append), "\n".join(lines)
    assert lines[-1] == "demo: every notification delivered"
    assert any(line.startswith("APNs emulator got for alice (ios)") for line in lines)
    assert any(line.startswith("FCM emulator got for alice (android)") for line in lines)
    assert sum(line.startswith("notification ") for line in lines) == 8  # 4 orders + 4 requested
    assert any("got for alice (ios): Back in stock" in line for line in lines)


def test_status_shows_the_cluster_at_a_glance(stack, api, uid):
    from typer.testing import CliRunner

    from ops.cli import app

    api.post("/v1/devices", json={"user_id": f"st-{uid}", "platform": "ios",
                                  "token": "ab" * 32})  # fmt: skip
    where = ["--api", stack.api_url, "--data-dir", "/nonexistent"]
    result = CliRunner().invoke(app, ["status", *where, "--key", stack.api_key])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"Herald at {stack.api_url}: ready"
    assert lines[1].startswith(f"shards: {stack.settings.topology.shards}  users ")
    assert "transactional" in lines[2] and "marketing" in lines[2]
    assert "apns/transactional" in lines[4] and "fcm/marketing" in lines[4]

    wrong = CliRunner().invoke(app, ["status", *where, "--key", "nope"])
    assert wrong.exit_code == 2 and "401" in wrong.output
