"""What an erasure counts as a user's: stream entries and retry rows by their fields,
exactly (never another user whose id merely contains theirs), events for several users
kept for the others, tokens masked in an export, and SCAN patterns that match exactly the
keys of their family."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase

from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.erasure import Subject, _dead_letter, _logged_event, _masked, mask

S = HeraldSettings(key_prefix="herald:")
ALICE = Subject("alice", {"dev-a"}, {"tok-alice-123456"})


def test_rows_match_by_field_exactly():
    assert ALICE.matches({"user_id": "alice"})
    assert ALICE.matches({"user_ids": ["bob", "alice"]})
    assert ALICE.matches({"user_id": "x", "token": "tok-alice-123456"})
    assert ALICE.matches({"user_id": "x", "device_id": "dev-a"})
    assert not ALICE.matches({"user_id": "alice2", "user_ids": ["malice"], "token": ""})
    assert not ALICE.matches({"user_id": "bob", "device_id": "", "token": None})
    assert not ALICE.matches(["alice"])


def test_an_event_for_several_users_is_kept_for_the_others():
    requested = {"event_id": "e1", "type": "notification.requested", "user_ids": ["alice", "bob"]}
    assert ALICE.without(requested) == {**requested, "user_ids": ["bob"]}
    assert ALICE.without({**requested, "user_ids": ["alice"]}) is None
    assert ALICE.without({"type": "order.updated", "user_id": "alice"}) is None

    decide = _logged_event(ALICE)
    entry = {"e": json.dumps(requested), "at": "1.0"}
    replacement = decide(entry)
    assert json.loads(replacement["e"])["user_ids"] == ["bob"] and replacement["at"] == "1.0"
    assert decide({"e": json.dumps({"type": "order.updated", "user_id": "alice"})}) is None
    assert decide({"e": json.dumps({"type": "order.updated", "user_id": "bob"})}) is False
    assert decide({"e": "{not json alice"}) is None  # poison: by substring
    assert decide({"e": "{not json bob"}) is False


def test_dead_letters_of_every_kind():
    decide = _dead_letter(ALICE)
    delivery = {"user_id": "alice", "token": "tok-alice-123456", "notification_id": "n1"}
    assert decide({"kind": "delivery", "body": json.dumps(delivery)}) is None
    assert decide({"kind": "delivery", "body": json.dumps({**delivery, "user_id": "bob",
                                                          "token": "t"})}) is False  # fmt: skip
    event = {"type": "notification.requested", "user_ids": ["alice", "carol"], "_lane": "x"}
    kept = decide({"kind": "event", "body": json.dumps(event), "reason": "r"})
    assert json.loads(kept["body"])["user_ids"] == ["carol"] and kept["reason"] == "r"
    assert decide({"kind": "kafka", "body": json.dumps({"raw": "..alice.."})}) is None
    assert decide({"kind": "kafka", "body": json.dumps({"raw": "..bob.."})}) is False


def test_tokens_are_masked_at_any_depth():
    assert mask("0123456789abcdef") == "…abcdef"
    assert mask("") == "" and mask(None) is None
    row = {"token": "0123456789abcdef", "body": {"token": "zzzzzz123456"}, "x": [{"token": "q"}]}
    assert _masked(row) == {
        "token": "…abcdef",
        "body": {"token": "…123456"},
        "x": [{"token": "…q"}],
    }


def test_scan_patterns_match_their_family_only():
    families = {
        keys.notifications_match(S): [keys.notification(S, "n1"), keys.notification(S, "e:u")],
        keys.campaign_reach_match(S): [keys.campaign(S, "c1", "users")],
        keys.price_drop_reach_match(S): [keys.price_drop_users(S, "pd1")],
        keys.frequency_match(S): [keys.frequency(S, "2026-12-02")],
        keys.push_minute_match(S): [keys.push_minute(S, 29_000_000)],
        keys.order_latest_match(S): [keys.order_latest(S, "o1")],
        keys.user_keys_match(S, "alice"): [
            keys.inbox(S, "alice"), keys.inbox_items(S, "alice"), keys.inbox_read(S, "alice"),
            keys.user_stream_slots(S, "alice"),
        ],
    }  # fmt: skip
    every = [k for ks in families.values() for k in ks] + [
        keys.inbox(S, "alice2"), keys.campaign(S, "c1"), keys.campaign(S, "c1", "plan"),
        keys.device_owners(S), keys.erasure_audit(S), keys.feedback(S),
    ]  # fmt: skip
    for pattern, own in families.items():
        assert sorted(k for k in every if fnmatchcase(k, pattern)) == sorted(own), pattern
