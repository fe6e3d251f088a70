"""Pure parts of `/v1/me`: inbox cursors, preferences read back from a shard lookup (the
inverse of the row a PUT writes), the WebSocket origin rule."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pytest

from api.me import offered_token, origin_allowed
from api.rows import preferences_row
from api.schemas import PreferencesIn
from api.user_actions import preferences_of
from cluster.state.inbox import Cursor


def test_cursors_round_trip_and_refuse_garbage():
    cursor = Cursor(1764633600.123456, "flash-1~u1")
    assert Cursor.decode(cursor.encode()) == cursor
    for bad in ("", "garbage", "1.5~", "x~id"):
        with pytest.raises(ValueError):
            Cursor.decode(bad)


@pytest.mark.parametrize(
    "prefs",
    [
        {},
        {
            "channels": {"push": False, "inbox": True, "email": False},
            "categories": {"marketing": False, "back_in_stock": False},
            "quiet_hours": {"start": "22:15", "end": "07:00"},
            "max_marketing_per_day": 0,
        },
    ],
)
def test_preferences_read_back_as_written(prefs):
    written = PreferencesIn.model_validate(prefs)
    row = preferences_row("u1", written).drop(["updated_at"])
    assert preferences_of(row) == written


def test_a_user_without_a_row_has_the_defaults():
    assert preferences_of(pa.table({"user_id": pa.array([], pa.string())})) == PreferencesIn()


def socket(origin: str | None, host: str = "herald.example", scheme: str = "wss"):
    headers = {"host": host, **({"origin": origin} if origin else {})}
    url = SimpleNamespace(scheme=scheme)
    return SimpleNamespace(headers=headers, url=url, scope={"subprotocols": []})


def test_origins():
    allowed = ["https://shop.example"]
    assert origin_allowed(socket("https://shop.example"), allowed)
    assert origin_allowed(socket("https://herald.example"), allowed)  # Herald's own page
    assert origin_allowed(socket(None), allowed)  # not a browser
    assert not origin_allowed(socket("https://evil.example"), allowed)
    assert not origin_allowed(socket("http://herald.example"), allowed)  # scheme differs
    assert not origin_allowed(socket("https://shop.example.evil"), allowed)


def test_the_token_is_taken_from_the_bearer_subprotocol_only():
    ws = socket(None)
    ws.scope["subprotocols"] = ["herald.v1", "bearer.abc.def.ghi"]
    assert offered_token(ws) == "abc.def.ghi"
    ws.scope["subprotocols"] = ["herald.v1"]
    assert offered_token(ws) is None
