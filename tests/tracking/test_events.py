"""Events over HTTP: history at once, idempotency, merge, erasure; aggregates by the consumer."""

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from conftest import Drain
from recommender.config import Settings
from recommender.platform.redis import Keyspace
from recommender.platform.streams import StreamEntry
from recommender.services import Services, build_services
from recommender.tracking import Shopper, TrackingService
from recommender.tracking.consumer import GROUP

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


async def post(client: AsyncTestClient, body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/events", json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


async def co_occurring(
    tracking: TrackingService, kind: str, product_id: str, limit: int
) -> list[tuple[str, float]]:
    """One product's co-occurrence list."""
    (found,) = await tracking.co_occurring_many([(kind, product_id)], limit)
    return found


async def aggregate_state(redis: "aioredis.Redis", tracking: TrackingService) -> dict[bytes, Any]:
    """Every count the aggregator keeps, as stored: the reads of them round or cache."""
    state: dict[bytes, Any] = {}
    for head in ("pop", "trend", "co", "copair", "cototal"):
        async for key in redis.scan_iter(match=tracking.repository.keys.key(head, "*")):
            if b":cache:" in key:
                continue
            if await redis.type(key) == b"hash":
                state[key] = await redis.hgetall(key)
            else:
                state[key] = await redis.zrange(key, 0, -1, withscores=True)
    return state


@pytest.mark.asyncio
async def test_one_event_updates_history_before_the_answer(
    client: AsyncTestClient, services: Services
) -> None:
    result = await post(client, {"type": "view", "user_id": "u1", "product_id": "p1"})
    assert result == {
        "accepted": 1, "duplicates": 0, "rejected": 0,
        "items": [{"index": 0, "status": "accepted"}],
    }  # fmt: skip
    history = await services.tracking.history(Shopper("user", "u1"))
    assert [(e.type, e.product_id) for e in history] == [("view", "p1")]


@pytest.mark.asyncio
async def test_batch_validates_each_event_on_its_own(
    client: AsyncTestClient, services: Services, redis: "aioredis.Redis"
) -> None:
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    result = await post(
        client,
        [
            {"type": "view", "session_id": "s1", "product_id": "p1"},
            {"type": "view", "product_id": "p1"},
            {"type": "purchase", "user_id": "u1"},
            {"type": "search", "user_id": "u1"},
            {"type": "teleport", "user_id": "u1", "product_id": "p1"},
            {"type": "view", "user_id": "u1", "product_id": "p1", "timestamp": future},
            {"type": "view", "user_id": "u1", "product_id": "p1", "timestamp": "2024-01-01T10:00"},
            {"type": "view", "user_id": "u 1", "product_id": "p1"},
            {"type": "search", "user_id": "u1", "query": "red scarf"},
        ],
    )
    assert [item["status"] for item in result["items"]] == [
        "accepted", "rejected", "rejected", "rejected", "rejected", "rejected", "rejected",
        "rejected", "accepted",
    ]  # fmt: skip
    errors = [item.get("error", "") for item in result["items"]]
    assert "user_id" in errors[1]
    assert "product_id" in errors[2]
    assert "query" in errors[3]
    assert "type" in errors[4]
    assert "timestamp" in errors[5]
    assert "future" in errors[5]
    assert "timestamp" in errors[6]
    assert "RFC3339" in errors[6]  # a time zone is required
    assert "user_id" in errors[7]
    assert await services.tracking.history(Shopper("user", "u1")) == []
    assert await redis.xlen(services.tracking.stream) == 2


@pytest.mark.asyncio
async def test_batch_is_bounded(client: AsyncTestClient) -> None:
    events = [{"type": "view", "user_id": "u", "product_id": "p"}] * 1001
    response = await client.post("/api/v1/events", json=events)
    assert response.status_code == 422
    assert "at most 1000" in response.json()["detail"]


@pytest.mark.asyncio
async def test_retried_event_counts_once(
    client: AsyncTestClient, services: Services, redis: "aioredis.Redis"
) -> None:
    event = {"type": "purchase", "user_id": "u1", "product_id": "p1", "event_id": "e-42"}
    assert (await post(client, event))["accepted"] == 1
    again = await post(client, [event, event])
    assert (again["accepted"], again["duplicates"]) == (0, 2)
    assert len(await services.tracking.history(Shopper("user", "u1"))) == 1
    assert await redis.xlen(services.tracking.stream) == 1


@pytest.mark.asyncio
async def test_history_is_bounded_and_newest_first(
    client: AsyncTestClient, services: Services
) -> None:
    limit = services.tracking.settings.history_length
    events = [
        {"type": "view", "user_id": "u1", "product_id": f"p{i}", "timestamp": at(i)}
        for i in range(limit + 5)
    ]
    await post(client, events)
    history = await services.tracking.history(Shopper("user", "u1"))
    assert len(history) == limit
    assert history[0].product_id == f"p{limit + 4}"


@pytest.mark.asyncio
async def test_session_merges_into_user(client: AsyncTestClient, services: Services) -> None:
    await post(client, [
        {"type": "view", "user_id": "u1", "product_id": "a", "timestamp": at(0)},
        {"type": "view", "session_id": "s1", "product_id": "b", "timestamp": at(1)},
        {"type": "purchase", "session_id": "s1", "product_id": "c", "timestamp": at(2)},
    ])  # fmt: skip
    response = await client.post("/api/v1/sessions/s1/merge", params={"user_id": "u1"})
    assert (response.status_code, response.json()) == (200, {"moved": 2})
    history = await services.tracking.history(Shopper("user", "u1"))
    assert [e.product_id for e in history] == ["c", "b", "a"]
    assert [p for p, _ in await services.tracking.purchased(Shopper("user", "u1"))] == ["c"]
    assert await services.tracking.history(Shopper("session", "s1")) == []
    bad = await client.post("/api/v1/sessions/s1/merge", params={"user_id": "no spaces"})
    assert bad.status_code == 400


@pytest.mark.asyncio
async def test_erasing_a_user(
    client: AsyncTestClient, services: Services, redis: "aioredis.Redis"
) -> None:
    await post(client, [
        {"type": "purchase", "user_id": "u1", "product_id": "a", "order_id": "o1"},
        {"type": "view", "user_id": "u2", "product_id": "a"},
    ])  # fmt: skip
    assert (await client.delete("/api/v1/users/u1")).status_code == 204
    assert await services.tracking.history(Shopper("user", "u1")) == []
    assert await services.tracking.purchased(Shopper("user", "u1")) == []
    remaining = await redis.xrange(services.tracking.stream)
    assert [fields[b"user"] for _, fields in remaining] == [b"u2"]
    assert len(await services.tracking.history(Shopper("user", "u2"))) == 1


@pytest.mark.asyncio
async def test_what_nothing_kept_is_computed_from_comes_with_the_lease(
    client: AsyncTestClient, services: Services
) -> None:
    await post(client, [
        {"type": "view", "user_id": "u1", "product_id": "a", "timestamp": at(0)},
        {"type": "purchase", "user_id": "u1", "product_id": "b", "order_id": "o1",
         "timestamp": at(1)},
        {"type": "purchase", "user_id": "u1", "product_id": "c", "order_id": "o2",
         "timestamp": at(2)},
        {"type": "view", "user_id": "u2", "product_id": "d", "timestamp": at(0)},
    ])  # fmt: skip
    tracking, shopper = services.tracking, Shopper("user", "u1")
    found = await tracking.derived(shopper, "list", 60)
    assert found.value is None
    assert found.behaviour == await tracking.behaviour(shopper)
    assert [entry.product_id for entry in found.behaviour.history] == ["c", "b", "a"]
    assert sorted(product for product, _ in found.behaviour.purchases) == ["b", "c"]


@pytest.mark.asyncio
async def test_a_value_derived_from_a_shopper_lasts_until_their_next_event(
    client: AsyncTestClient, services: Services, redis: "aioredis.Redis"
) -> None:
    tracking, shopper = services.tracking, Shopper("user", "u1")
    first = await tracking.derived(shopper, "list", 60)
    assert first.value is None
    assert first.behaviour == ([], [])
    assert await tracking.keep_derived(shopper, "list", first.lease, b"computed")
    assert await tracking.derived(shopper, "list", 60) == (b"computed", "", None)
    assert 0 < await redis.ttl(tracking.repository.derived_key("user", "u1")) <= 60
    # A value computed from the history before an event is not kept after it.
    pending = await tracking.derived(shopper, "other", 60)
    assert pending.lease == first.lease
    await post(client, {"type": "view", "user_id": "u1", "product_id": "a"})
    assert (await tracking.derived(shopper, "list", 60)).value is None
    assert not await tracking.keep_derived(shopper, "other", pending.lease, b"stale")
    assert (await tracking.derived(shopper, "other", 60)).value is None
    # Other shoppers' events leave it alone; merging and erasing drop it.
    fresh = await tracking.derived(shopper, "list", 60)
    assert await tracking.keep_derived(shopper, "list", fresh.lease, b"again")
    await post(client, {"type": "view", "user_id": "u2", "product_id": "a"})
    assert (await tracking.derived(shopper, "list", 60)).value == b"again"
    session = Shopper("session", "s1")
    await post(client, {"type": "view", "session_id": "s1", "product_id": "b"})
    kept = await tracking.derived(session, "list", 60)
    assert await tracking.keep_derived(session, "list", kept.lease, b"anonymous")
    await tracking.merge_session("s1", "u1")
    assert (await tracking.derived(shopper, "list", 60)).value is None
    assert (await tracking.derived(session, "list", 60)).value is None
    last = await tracking.derived(shopper, "list", 60)
    assert await tracking.keep_derived(shopper, "list", last.lease, b"before erasure")
    await tracking.erase_user("u1")
    assert (await tracking.derived(shopper, "list", 60)).value is None


@pytest.mark.asyncio
async def test_aggregates_count_each_event_once_and_use_event_time(
    client: AsyncTestClient, services: Services, drain: Drain, redis: "aioredis.Redis"
) -> None:
    await client.post("/api/v1/products/batch", json={"items": [
        {"id": "a", "name": "A", "category": "Home > Kitchen"},
        {"id": "b", "name": "B", "category": "Home > Garden"},
        {"id": "c", "name": "C", "category": "Toys"},
    ]})  # fmt: skip
    await post(client, [
        {"type": "purchase", "user_id": "u1", "product_id": "a", "order_id": "o1",
         "timestamp": at(0)},
        {"type": "purchase", "user_id": "u1", "product_id": "b", "order_id": "o1",
         "timestamp": at(0)},
        {"type": "view", "user_id": "u2", "product_id": "b", "timestamp": at(1)},
        {"type": "view", "user_id": "u2", "product_id": "c", "timestamp": at(2)},
        {"type": "view", "user_id": "u3", "product_id": "c", "timestamp": at(3)},
    ])  # fmt: skip
    await drain()
    tracking = services.tracking
    popular = await tracking.popular(7, "", 10)
    assert [p for p, _ in popular] == ["b", "a", "c"]  # purchases weigh 8, views 1
    assert [p for p, _ in await tracking.popular(7, "Home", 10)] == ["b", "a"]
    assert [p for p, _ in await tracking.popular(7, "Home > Garden", 10)] == ["b"]
    assert [p for p, _ in await co_occurring(tracking, "purchase", "a", 10)] == ["b"]
    assert [p for p, _ in await co_occurring(tracking, "view", "c", 10)] == ["b"]
    assert next(p for p, _ in await tracking.trending("", 10)) in {"a", "b"}

    # Redelivery of every entry: nothing changes.
    before = await aggregate_state(redis, tracking)
    assert len(before) > 5
    for runner in services.runners:
        entries = await redis.xrange(runner.stream)
        await runner.handler([])  # a no-op batch is harmless
        await runner.handler(
            [StreamEntry(i.decode(), {k.decode(): v.decode() for k, v in f.items()})
             for i, f in entries]
        )  # fmt: skip
    assert await aggregate_state(redis, tracking) == before


@pytest.mark.asyncio
async def test_an_entry_a_dead_consumer_read_is_applied_once_and_acknowledged(
    client: AsyncTestClient, services: Services, drain: Drain, redis: "aioredis.Redis"
) -> None:
    await client.post("/api/v1/products/batch", json={"items": [
        {"id": "a", "name": "A"}, {"id": "b", "name": "B"},
    ]})  # fmt: skip
    await post(client, {"type": "view", "user_id": "u1", "product_id": "b"})
    await drain()
    await post(client, {"type": "view", "user_id": "u1", "product_id": "a"})
    aggregator = next(r for r in services.runners if r.group == GROUP)
    # A consumer reads the entry and dies before applying it: the entry stays pending.
    read: Any = await redis.xreadgroup(GROUP, "dead", {aggregator.stream: ">"})
    entries = [
        StreamEntry(i.decode(), {k.decode(): v.decode() for k, v in f.items()})
        for i, f in read[0][1]
    ]
    assert len(entries) == 1

    await aggregator.handler(entries)  # as another consumer that claimed it would
    once = await aggregate_state(redis, services.tracking)
    await aggregator.handler(entries)  # and once more, as if its own XACK had been lost
    assert await aggregate_state(redis, services.tracking) == once
    # Shares of the best seller: "a" counted twice would leave "b" half of it.
    assert sorted(await services.tracking.popular(7, "", 10)) == [("a", 1.0), ("b", 1.0)]
    assert (await redis.xpending(aggregator.stream, GROUP))["pending"] == 0


@pytest.mark.asyncio
async def test_trending_prefers_what_rises_now(
    client: AsyncTestClient, services: Services, drain: Drain
) -> None:
    old = [{"type": "purchase", "user_id": f"u{i}", "product_id": "old", "timestamp": at(0)}
           for i in range(10)]  # fmt: skip
    new = [{"type": "view", "user_id": f"v{i}", "product_id": "new", "timestamp": at(24 * 30)}
           for i in range(10)]  # fmt: skip
    await post(client, old + new)
    await drain()
    assert [p for p, _ in await services.tracking.trending("", 10)] == ["new", "old"]
    # Over the last 7 days (of event time) only the new one counts; over 60 both do.
    assert [p for p, _ in await services.tracking.popular(7, "", 10)] == ["new"]
    assert [p for p, _ in await services.tracking.popular(60, "", 10)] == ["old", "new"]


def bought(user: str, product: str, hours: float, order: str = "") -> dict[str, Any]:
    return {"type": "purchase", "user_id": user, "product_id": product, "timestamp": at(hours),
            "order_id": order or f"{user}-{hours}"}  # fmt: skip


async def record_and_drain(services: Services, events: list[dict[str, Any]]) -> None:
    result = await services.tracking.record(events)
    assert result.rejected == 0
    for runner in services.runners:
        await runner.ensure_group()
        while await runner.step():
            pass


@pytest.mark.asyncio
async def test_co_purchase_is_a_cosine_so_a_best_seller_does_not_head_every_list(
    services: Services,
) -> None:
    # Everyone buys a mug, with whatever else; two shoppers buy the tent with the bag (and a mug).
    await record_and_drain(services, [
        *[bought(f"home{i}", p, i, f"h{i}") for i in range(10) for p in ("mug", f"thing{i}")],
        *[bought(f"camper{i}", p, i, f"c{i}") for i in range(2) for p in ("tent", "bag", "mug")],
    ])  # fmt: skip
    tent = await co_occurring(services.tracking, "purchase", "tent", 10)
    # As many tent buyers bought the mug as the bag; the bag is the one bought with tents:
    # 2 / sqrt(2 x 12) of the bag's 2 / sqrt(2 x 2), whatever the tent's own count.
    assert [p for p, _ in tent] == ["bag", "mug"]
    assert tent[1][1] == pytest.approx(2 / 24**0.5, rel=1e-3)
    mug = dict(await co_occurring(services.tracking, "purchase", "mug", 20))
    assert mug["tent"] == pytest.approx(1.0)
    assert mug["bag"] == pytest.approx(1.0, rel=1e-3)
    assert mug["thing0"] == pytest.approx(1 / 2**0.5, rel=1e-3)  # one shopper of one against two


@pytest.mark.asyncio
async def test_co_purchase_pairs_a_shoppers_orders_within_the_window(
    services: Services,
) -> None:
    days = services.tracking.settings.co_purchase_window_days
    await record_and_drain(services, [
        bought("u1", "kettle", 0, "o1"),
        bought("u1", "teapot", 24 * 3, "o2"),  # another order, three days on: a pair
        bought("u2", "lamp", 0, "o3"),
        bought("u2", "bulb", 24 * (days + 1), "o4"),  # past the window's life: no pair
    ])  # fmt: skip
    assert [p for p, _ in await co_occurring(services.tracking, "purchase", "kettle", 5)] == [
        "teapot"
    ]
    assert await co_occurring(services.tracking, "purchase", "lamp", 5) == []


@pytest.mark.asyncio
async def test_a_pair_counts_once_per_shoppers_window(services: Services) -> None:
    # u1 buys a and b again and again; u2 buys a and c once: b and c are equally close to a.
    await record_and_drain(services, [
        *[bought("u1", p, hours) for hours, p in enumerate(("a", "b", "a", "b", "a"))],
        bought("u2", "a", 10), bought("u2", "c", 11),
    ])  # fmt: skip
    near_a = dict(await co_occurring(services.tracking, "purchase", "a", 5))
    assert near_a == {"c": pytest.approx(1.0), "b": pytest.approx(1.0, rel=1e-2)}
    # Views keep their own window and counts: the purchases made none.
    assert await co_occurring(services.tracking, "view", "a", 5) == []


@pytest.mark.asyncio
async def test_co_occurrence_keeps_the_top_n_and_only_their_counts(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    tracking = msgspec.structs.replace(settings.tracking, cooccurrence_top_n=2)
    services = build_services(
        redis,
        Keyspace(settings.redis.namespace),
        msgspec.structs.replace(settings, tracking=tracking),
    )
    # x is bought with p1 by three shoppers, with p2 by two, with p3 and p4 by one each.
    plan = {"p1": 3, "p2": 2, "p3": 1, "p4": 1}
    await record_and_drain(services, [
        event for product, shoppers in plan.items() for i in range(shoppers)
        for event in (bought(f"{product}-{i}", "x", 0), bought(f"{product}-{i}", product, 1))
    ])  # fmt: skip
    assert [p for p, _ in await co_occurring(services.tracking, "purchase", "x", 10)] == [
        "p1", "p2"
    ]  # fmt: skip
    repository = services.tracking.repository
    counts = await redis.hkeys(repository.pair_count_prefix("purchase") + "x")
    assert sorted(counts) == [b"p1", b"p2"]
