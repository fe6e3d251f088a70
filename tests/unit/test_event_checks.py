"""The door's template check without a cluster: what each kind of event is checked for,
and that a refusal is never made on a stale template cache."""

from __future__ import annotations

import asyncio

from api.event_checks import template_problems
from api.events import EventsIn, log_entries
from api.templates import TemplateBook
from pipelines import templates

LOYALTY = {
    "template_id": "loyalty",
    "variables": {"points": {"type": "integer"}},
    "locales": {"en": {"title": "Points", "body": "You have {points} points."}},
}


def events(*items: dict) -> list:
    return EventsIn.model_validate({"events": list(items)}).events


def requested(**fields) -> dict:
    return {"event_id": "e1", "type": "notification.requested", "user_ids": ["u1"],
            "category": "loyalty", **fields}  # fmt: skip


def test_an_order_update_fills_its_template_from_its_own_fields():
    shop = {**templates.defaults(), "loyalty": templates.parse(LOYALTY)}
    order = {"event_id": "o1", "type": "order.updated", "user_id": "u1", "order_id": "o1",
             "status": "shipped"}  # fmt: skip
    assert (
        template_problems(events(order, {**order, "template_id": "loyalty", "points": 3}), shop)
        == []
    )
    assert template_problems(events({**order, "template_id": "loyalty"}), shop) == [
        (0, "points", "missing (a variable of template loyalty)")
    ]


def test_data_counts_toward_the_push_size():
    big = {"title": "t", "body": "x" * 3000}
    assert template_problems(events(requested(content=big, data={"ref": "r" * 500})), {}) == []
    ((index, field, reason),) = template_problems(
        events(requested(content=big, data={"ref": "r" * 900})), {}
    )
    assert (index, field) == (0, "content") and "over the providers' 4096" in reason


def test_absent_options_are_left_out_of_the_log():
    order = {"event_id": "o1", "type": "order.updated", "user_id": "u1", "order_id": "o1",
             "status": "shipped", "note": "gift"}  # fmt: skip
    assert log_entries(events(order)) == [("o1", "transactional", order)]
    ((_, lane, body),) = log_entries(
        events(requested(template_id="loyalty", variables={"points": 1}))
    )
    assert lane == "transactional" and "content" not in body and "ttl_s" not in body
    assert body["channels"] == ["push", "inbox"]


def test_a_category_the_shop_calls_marketing_travels_in_the_marketing_lane():
    promo = requested(template_id="loyalty", variables={"points": 1})
    promo["category"] = "promo"
    ((_, lane, _),) = log_entries(events(promo), marketing_categories=["promo"])
    assert lane == "marketing"
    ((_, lane, _),) = log_entries(events(promo), marketing_categories=["marketing"])
    assert lane == "transactional"


class _Store:
    """The two reads a TemplateCache makes, over a dict the test changes."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.gen = 0

    async def generation(self) -> int:
        return self.gen

    async def snapshot(self) -> tuple[int, list[dict]]:
        return self.gen, [{**t, "version": 1} for t in self.items]


def test_nothing_is_refused_on_a_stale_cache():
    store = _Store()
    book = TemplateBook.__new__(TemplateBook)
    book.store = store  # type: ignore[assignment]
    book.cache = templates.cache(store, max_age_s=60)  # type: ignore[arg-type]
    batch = events(requested(template_id="loyalty", variables={"points": 1}))

    async def scenario() -> tuple[list, list]:
        before = await book.problems(batch)
        store.items, store.gen = [LOYALTY], 1  # another replica puts the template
        return before, await book.problems(batch)

    before, after = asyncio.run(scenario())
    assert [field for _, field, _ in before] == ["template_id"] and after == []
