"""The template store and cache against a real (embedded) Redis, without Ray: put, get,
list and delete; versions that only go up; a generation bumped by every change; a cache
that lays the shop's templates over the shipped ones and sees a change within a second."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cluster.settings import HeraldSettings
from cluster.state.clients import async_client
from cluster.state.templates import TemplateCache, TemplateStore
from ops.embedded_redis import EmbeddedRedis
from pipelines import templates


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
async def store(redis_url):
    settings = HeraldSettings(redis_url=redis_url, key_prefix=f"tpl-{uuid.uuid4().hex[:8]}:")
    client = async_client(settings)
    yield TemplateStore(settings, client)
    await client.aclose()


def _shipped(body: str = "Parcel {order_id} left us.") -> dict:
    return {
        "template_id": "order.shipped",
        "category": "order",
        "variables": {"order_id": {"type": "string", "max_length": 128}},
        "locales": {"en": {"title": "On its way", "body": body}},
    }


async def test_put_get_list_delete_with_versions_and_generation(store: TemplateStore) -> None:
    assert await store.generation() == 0
    assert await store.get("order.shipped") is None and await store.list() == []
    assert await store.put(_shipped()) == 1
    assert await store.put({**_shipped("Parcel {order_id} is coming."), "version": 99}) == 2
    assert await store.put({**_shipped(), "template_id": "banner"}) == 1  # versions per id
    assert await store.generation() == 3
    got = await store.get("order.shipped")
    assert got == {**_shipped("Parcel {order_id} is coming."), "version": 2}
    assert templates.parse(got).version == 2  # what the store returns parses as it is
    assert [(t["template_id"], t["version"]) for t in await store.list()] == [
        ("banner", 1),
        ("order.shipped", 2),
    ]
    assert await store.delete("banner") is True
    assert await store.delete("banner") is False  # nothing removed: no change
    assert await store.generation() == 4
    assert await store.get("banner") is None
    assert await store.put({**_shipped(), "template_id": "banner"}) == 2  # never reused
    generation, listed = await store.snapshot()
    assert generation == 5 and [t["version"] for t in listed] == [2, 2]


async def test_concurrent_puts_get_distinct_versions(store: TemplateStore) -> None:
    versions = await asyncio.gather(*[store.put(_shipped()) for _ in range(20)])
    assert sorted(versions) == list(range(1, 21))
    assert (await store.get("order.shipped"))["version"] == 20
    assert await store.generation() == 20


async def test_the_cache_lays_the_shop_over_the_defaults_and_sees_changes(
    store: TemplateStore,
) -> None:
    cache = templates.cache(store)
    shipped = (await cache.templates())["order.shipped"]
    assert shipped.version == 0 and shipped.locales["en"].title == "Order shipped"
    assert len(await cache.templates()) == len(templates.defaults())

    await store.put(_shipped())
    start = time.monotonic()
    while (await cache.get("order.shipped")).version != 1:
        assert time.monotonic() - start < 1.5, "the cache did not see the put within a second"
        await asyncio.sleep(0.02)
    override = await cache.get("order.shipped")
    assert override.locales["en"].body == "Parcel {order_id} left us."
    assert set(override.locales) == {"en"}  # a shop's template replaces, it does not merge
    assert (await cache.get("order.delivered")).version == 0  # the rest stay shipped

    await store.delete("order.shipped")
    start = time.monotonic()
    while (await cache.get("order.shipped")).version != 0:
        assert time.monotonic() - start < 1.5, "the cache did not see the delete"
        await asyncio.sleep(0.02)


async def test_the_cache_reads_one_key_per_window_and_skips_bad_rows(
    store: TemplateStore,
) -> None:
    now = [0.0]
    reads = []
    cache = TemplateCache(
        store,
        defaults={"order.shipped": templates.defaults()["order.shipped"].model_dump()},
        parse=templates.parse,
        clock=lambda: now[0],
    )
    generation = store.generation

    async def counted() -> int:
        reads.append(now[0])
        return await generation()

    store.generation = counted
    await store.put({**_shipped(), "template_id": "promo"})
    await store.put({**_shipped(), "template_id": "broken", "locales": {"en_US": {}}})
    first = await cache.templates()
    assert set(first) == {"order.shipped", "promo"}  # "broken" is logged and skipped
    assert first["promo"].version == 1 and cache.generation == 2
    now[0] = 0.5
    await store.put({**_shipped(), "template_id": "promo"})
    assert (await cache.templates())["promo"].version == 1  # within the window: no read
    now[0] = 1.0
    assert (await cache.templates())["promo"].version == 2
    assert reads == [0.0, 1.0]
    now[0] = 2.5
    await cache.templates()  # unchanged generation: one GET, no reload
    assert reads == [0.0, 1.0, 2.5] and cache.generation == 3
