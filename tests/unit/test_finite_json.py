"""What Herald writes to Redis is JSON every parser reads: no NaN or Infinity, even when a
row it built carries one (a model's score), and the row is still written."""

from __future__ import annotations

import json

import pytest

from cluster import finite_json
from cluster.state.dead_letters import dead_letter_fields


def strict_loads(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} written")

    return json.loads(text, parse_constant=refuse)


def test_finite_values_are_written_as_json_dumps_writes_them():
    row = {"b": 1.5, "a": [1, "x", None], "c": {"d": True}}
    assert finite_json.dumps(row, sort_keys=True) == json.dumps(row, sort_keys=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_number_anywhere_is_written_as_null(bad, caplog):
    row = {"score": bad, "nested": {"xs": [1.0, bad, (bad, 2)]}, "ok": 3}
    text = finite_json.dumps(row, sort_keys=True)
    assert strict_loads(text) == {"score": None, "nested": {"xs": [1.0, None, [None, 2]]}, "ok": 3}
    assert "non-finite" in caplog.text


def test_a_dead_letter_with_a_nan_score_is_still_written_and_readable():
    fields = dead_letter_fields("delivery", {"notification_id": "n1", "score": float("nan")}, "x")
    assert strict_loads(fields["body"]) == {"notification_id": "n1", "score": None}
