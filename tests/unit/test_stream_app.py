"""The stream gateway's app (`api.stream_app`) without a cluster: which origins count as
Herald's own, and which settings a running gateway takes in place."""

from __future__ import annotations

from api.stream_app import api_origins, reconfigure, stream_app
from cluster.settings import HeraldSettings

SECRET = "unit-stream-app-user-token-secret-0123456789"


def test_the_api_on_the_gateways_host_is_an_allowed_origin():
    settings = HeraldSettings(http_port=8000, allowed_origins=["https://shop.example"])
    assert api_origins(settings, "127.0.0.1:8001") == [
        "https://shop.example",
        "http://127.0.0.1:8000",
        "https://127.0.0.1:8000",
    ]
    assert "http://[::1]:8000" in api_origins(settings, "[::1]:8001")
    assert "https://live.example:8000" in api_origins(settings, "live.example")


def test_keys_tokens_and_origins_are_taken_in_place_other_changes_need_a_restart():
    settings = HeraldSettings(api_keys={"k1": ["read"]}, user_token_secret=SECRET)
    app = stream_app(settings)
    rotated = settings.with_overrides(
        api_keys={"k2": ["read"]},
        user_token_secret='{"new": "' + SECRET + '"}',
        allowed_origins=["https://new.example"],
    )
    assert reconfigure(app, rotated) is True
    assert app.state.checks.settings.api.api_keys == {"k2": ["read"]}
    assert app.state.checks.settings.api.allowed_origins == ["https://new.example"]
    assert reconfigure(app, rotated.with_overrides(stream_max_per_user=9)) is False
    assert reconfigure(app, rotated.with_overrides(stream_port=9001)) is False
    assert app.state.checks.settings == rotated  # a refused change leaves the old in force
