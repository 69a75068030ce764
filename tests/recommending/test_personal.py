"""For you, buy again, bought together, popular and trending on a small, telling history."""

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from conftest import Drain
from recommender.config import Settings
from recommender.platform.redis import Keyspace
from recommender.services import Services, build_services
from recommender.tracking import Shopper
from recommender.vectors import Filters

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)

PRODUCTS: list[dict[str, Any]] = [
    {"id": "tent", "name": "Two person camping tent", "category": "Outdoor > Camping"},
    {"id": "bag", "name": "Down sleeping bag", "category": "Outdoor > Camping"},
    {"id": "mat", "name": "Inflatable sleeping mat", "category": "Outdoor > Camping"},
    {"id": "stove", "name": "Camping gas stove", "category": "Outdoor > Cooking"},
    {"id": "boots", "name": "Leather hiking boots", "category": "Outdoor > Footwear"},
    {"id": "mug", "name": "White ceramic coffee mug", "category": "Home > Kitchen"},
    {"id": "kettle", "name": "Electric kettle", "category": "Home > Kitchen"},
    {"id": "lamp", "name": "Brass desk lamp", "category": "Home > Lighting"},
]


def event(kind: str, shopper: str, product: str, hours: float, order: str = "") -> dict[str, Any]:
    body = {"type": kind, "user_id": shopper, "product_id": product,
            "timestamp": (T0 + timedelta(hours=hours)).isoformat()}  # fmt: skip
    return {**body, "order_id": order} if order else body


async def setup(client: AsyncTestClient, drain: Drain) -> None:
    await client.post("/api/v1/products/batch", json={"items": PRODUCTS})
    history = [
        # Campers buy tent, bag and mat together; mugs sell a lot on their own.
        *[event("purchase", f"camper{i}", p, i, f"o{i}") for i in range(5)
          for p in ("tent", "bag", "mat")],
        *[event("purchase", f"home{i}", "mug", i, f"h{i}") for i in range(8)],
        event("purchase", "home0", "kettle", 1, "h0"),
        event("purchase", "regular", "mug", 1, "r1"),
        event("purchase", "regular", "mug", 20, "r2"),
        event("purchase", "regular", "lamp", 2, "r3"),
        event("view", "newcomer", "tent", 30),
    ]  # fmt: skip
    response = await client.post("/api/v1/events", json=history)
    assert response.json()["rejected"] == 0
    await drain()
    await client.post("/api/v1/admin/model/refit", params={"wait": "true"})


def ids(response: Any) -> list[str]:
    return [item["id"] for item in response.json()["items"]]


@pytest.mark.asyncio
async def test_for_you_follows_the_recent_view(client: AsyncTestClient, drain: Drain) -> None:
    await setup(client, drain)
    response = await client.get("/api/v1/users/newcomer/recommendations", params={"k": 4})
    assert response.status_code == 200
    found = ids(response)
    assert set(found[:2]) == {"bag", "mat"}  # bought with what they viewed
    first = response.json()["items"][0]
    assert first["reason"]["anchor"] == "tent"
    assert first["reason"]["anchor_event"] == "view"
    assert first["reason"]["strategy"] == "co_purchased"
    assert len(response.json()["rec_id"]) == 32
    # Content neighbours come from one query for all anchors; each still names its anchor.
    similar = [item["reason"] for item in response.json()["items"]
               if item["reason"]["strategy"] == "similar"]  # fmt: skip
    assert similar
    assert all(r == {"strategy": "similar", "anchor": "tent", "anchor_event": "view"}
               for r in similar)  # fmt: skip


@pytest.mark.asyncio
async def test_a_view_changes_for_you_on_the_next_request(
    client: AsyncTestClient, drain: Drain
) -> None:
    await setup(client, drain)
    before = ids(await client.get("/api/v1/users/someone/recommendations"))
    await client.post("/api/v1/events", json=event("view", "someone", "tent", 40))
    after = ids(await client.get("/api/v1/users/someone/recommendations"))
    assert after != before
    assert set(after[:2]) == {"bag", "mat"}


@pytest.mark.asyncio
async def test_for_you_is_kept_until_the_shoppers_next_event(
    client: AsyncTestClient, drain: Drain, redis: "aioredis.Redis", settings: Settings
) -> None:
    await setup(client, drain)
    url = "/api/v1/users/newcomer/recommendations"
    computed = (await client.get(url, params={"k": 4})).json()["items"]
    kept = [item["id"] for item in computed]
    # A new product much like the tent: computed afresh, the newcomer's list changes...
    await client.post("/api/v1/products", json={
        "id": "tent2", "name": "Camping tent for two", "category": "Garden > Tents"
    })  # fmt: skip
    await drain()
    uncached = with_recommend(settings, for_you_cache_seconds=0)
    recommend = build_services(redis, Keyspace(settings.redis.namespace), uncached).recommend
    fresh = await recommend.for_you(Shopper("user", "newcomer"), 4, Filters(in_stock=True))
    assert [item.id for item in fresh.items] != kept
    # ...but the kept one holds until the newcomer's own next event, scores and reasons too.
    assert (await client.get(url, params={"k": 4})).json()["items"] == computed
    await client.post("/api/v1/events", json=event("view", "newcomer", "boots", 41))
    after = await client.get(url, params={"k": 4})
    assert "boots" not in ids(after)
    assert ids(after) != kept
    assert ids(after) == [
        item.id for item in (
            await recommend.for_you(Shopper("user", "newcomer"), 4, Filters(in_stock=True))
        ).items
    ]  # fmt: skip


def for_you_lists() -> dict[str, float]:
    return {
        source: REGISTRY.get_sample_value("recommender_for_you_lists_total", {"source": source})
        or 0.0
        for source in ("kept", "computed")
    }


@pytest.mark.asyncio
async def test_metrics_count_kept_and_computed_for_you_lists(
    client: AsyncTestClient, drain: Drain
) -> None:
    await setup(client, drain)
    url = "/api/v1/users/newcomer/recommendations"
    before = for_you_lists()
    await client.get(url)
    await client.get(url)
    await client.post("/api/v1/events", json=event("view", "newcomer", "boots", 41))
    await client.get(url)  # the event dropped the kept list
    after = for_you_lists()
    assert {source: after[source] - before[source] for source in after} == {
        "kept": 1, "computed": 2
    }  # fmt: skip


@pytest.mark.asyncio
async def test_for_you_is_answered_when_keeping_it_fails(
    client: AsyncTestClient, drain: Drain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keeping the candidates is written after the answer; a Redis failure there is logged."""
    await setup(client, drain)
    url = "/api/v1/users/newcomer/recommendations"

    async def unreachable(*args: object, **kwargs: object) -> object:
        raise redis.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(client.app.state.tracking, "keep_derived", unreachable)
    with structlog.testing.capture_logs() as logs:
        answered = await client.get(url, params={"k": 4})
    assert answered.status_code == 200
    assert len(ids(answered)) == 4
    warned = [(e["event"], e["error"]) for e in logs if e["log_level"] == "warning"]
    assert warned == [("for_you_not_kept", "Redis went away")]
    monkeypatch.undo()
    assert ids(await client.get(url, params={"k": 4})) == ids(answered)


@pytest.mark.asyncio
async def test_a_kept_for_you_never_shows_a_deleted_or_out_of_stock_product(
    client: AsyncTestClient, drain: Drain
) -> None:
    await setup(client, drain)
    url = "/api/v1/users/newcomer/recommendations"
    assert {"bag", "mat"} <= set(ids(await client.get(url, params={"k": 4})))
    await client.patch("/api/v1/products/bag", json={"in_stock": False})
    await client.delete("/api/v1/products/mat")
    found = ids(await client.get(url, params={"k": 4}))
    assert len(found) == 4
    assert not {"bag", "mat"} & set(found)


@pytest.mark.asyncio
async def test_filters_past_the_kept_head_rank_every_candidate(
    client: AsyncTestClient, drain: Drain, services: Services, redis: "aioredis.Redis",
    settings: Settings,
) -> None:  # fmt: skip
    await setup(client, drain)
    shopper = Shopper("user", "newcomer")
    # k=1 keeps the best 5 candidates; leaving all of them out needs the ones after.
    head = await services.recommend.for_you(shopper, 5, Filters(in_stock=None))
    excluded = Filters(in_stock=None, exclude=tuple(item.id for item in head.items))
    assert len((await services.recommend.for_you(shopper, 1, Filters(in_stock=None))).items) == 1
    found = await services.recommend.for_you(shopper, 1, excluded)
    uncached = with_recommend(settings, for_you_cache_seconds=0)
    recommend = build_services(redis, Keyspace(settings.redis.namespace), uncached).recommend
    expected = await recommend.for_you(shopper, 1, excluded)
    assert [item.id for item in found.items] == [item.id for item in expected.items]
    assert len(found.items) == 1


@pytest.mark.asyncio
async def test_stranger_gets_popular_never_an_error(client: AsyncTestClient, drain: Drain) -> None:
    await setup(client, drain)
    response = await client.get("/api/v1/users/nobody/recommendations")
    assert response.status_code == 200
    assert ids(response)[0] == "mug"
    assert response.json()["items"][0]["reason"]["strategy"] == "popular"
    session = await client.get("/api/v1/sessions/anon/recommendations")
    assert ids(session)[0] == "mug"


@pytest.mark.asyncio
async def test_purchases_are_left_out_unless_asked(client: AsyncTestClient, drain: Drain) -> None:
    await setup(client, drain)
    url = "/api/v1/users/camper0/recommendations"
    assert not {"tent", "bag", "mat"} & set(ids(await client.get(url)))
    everything = ids(await client.get(url, params={"exclude_purchased": "false"}))
    assert {"tent", "bag", "mat"} <= set(everything)


@pytest.mark.asyncio
async def test_deleted_and_out_of_stock_never_appear(client: AsyncTestClient, drain: Drain) -> None:
    await setup(client, drain)
    await client.patch("/api/v1/products/bag", json={"in_stock": False})
    await client.delete("/api/v1/products/mat")
    await drain()
    for url in ("/api/v1/users/newcomer/recommendations", "/api/v1/popular",
                "/api/v1/trending", "/api/v1/products/tent/bought-together"):  # fmt: skip
        found = ids(await client.get(url, params={"k": 20}))
        assert "bag" not in found, url
        assert "mat" not in found, url


@pytest.mark.asyncio
async def test_one_category_does_not_fill_the_list(client: AsyncTestClient, drain: Drain) -> None:
    await setup(client, drain)
    found = (await client.get("/api/v1/users/newcomer/recommendations", params={"k": 4})).json()
    tops = [item["category"].split(" > ")[0] for item in found["items"]]
    assert tops.count("Outdoor") <= 2
    only = await client.get(
        "/api/v1/users/newcomer/recommendations", params={"k": 4, "category": "Outdoor"}
    )
    assert all(item["category"].startswith("Outdoor") for item in only.json()["items"])
    assert len(only.json()["items"]) == 4


@pytest.mark.asyncio
async def test_buy_again_ranks_by_frequency_and_recency(
    client: AsyncTestClient, drain: Drain
) -> None:
    await setup(client, drain)
    response = await client.get("/api/v1/users/regular/buy-again")
    assert ids(response) == ["mug", "lamp"]
    assert response.json()["items"][0]["reason"] == {"strategy": "buy_again"}
    assert ids(await client.get("/api/v1/users/nobody/buy-again")) == []


@pytest.mark.asyncio
async def test_bought_together_falls_back_to_similar(client: AsyncTestClient, drain: Drain) -> None:
    await setup(client, drain)
    together = await client.get("/api/v1/products/tent/bought-together")
    assert set(ids(together)[:2]) == {"bag", "mat"}
    assert together.json()["items"][0]["reason"] == {"strategy": "co_purchased", "anchor": "tent"}
    alone = await client.get("/api/v1/products/stove/bought-together", params={"k": 3})
    assert alone.status_code == 200
    assert {item["reason"]["strategy"] for item in alone.json()["items"]} == {"similar"}
    assert (await client.get("/api/v1/products/nope/bought-together")).status_code == 404


@pytest.mark.asyncio
async def test_bought_together_ranks_co_purchases_then_co_views_then_similar(
    client: AsyncTestClient, drain: Drain
) -> None:
    await setup(client, drain)
    browsing = [event("view", "browser", p, 40 + i) for i, p in enumerate(("tent", "kettle"))]
    assert (await client.post("/api/v1/events", json=browsing)).status_code == 202
    await drain()
    together = await client.get("/api/v1/products/tent/bought-together", params={"k": 4})
    reasons = [(item["id"], item["reason"]["strategy"]) for item in together.json()["items"]]
    assert {product for product, _ in reasons[:2]} == {"bag", "mat"}
    assert [strategy for _, strategy in reasons[:2]] == ["co_purchased", "co_purchased"]
    assert reasons[2] == ("kettle", "co_viewed")
    assert reasons[3][1] == "similar"


@pytest.mark.asyncio
async def test_popular_and_trending_by_category(client: AsyncTestClient, drain: Drain) -> None:
    await setup(client, drain)
    assert ids(await client.get("/api/v1/popular", params={"k": 1})) == ["mug"]
    camping = await client.get("/api/v1/categories/Outdoor > Camping/popular")
    assert set(ids(camping)) == {"tent", "bag", "mat"}
    kitchen = await client.get("/api/v1/categories/Home/trending")
    assert ids(kitchen)[0] == "mug"
    assert set(ids(kitchen)) <= {"mug", "kettle", "lamp"}


def bought(shopper: str, product: str, days: float) -> dict[str, Any]:
    return {"type": "purchase", "user_id": shopper, "product_id": product,
            "timestamp": (T0 + timedelta(days=days)).isoformat()}  # fmt: skip


def with_recommend(settings: Settings, **changes: Any) -> Settings:
    recommend = msgspec.structs.replace(settings.recommend, **changes)
    return msgspec.structs.replace(settings, recommend=recommend)


@pytest.mark.asyncio
async def test_what_sells_now_comes_first_by_the_floor_setting(
    services: Services, drain: Drain, redis: "aioredis.Redis", settings: Settings
) -> None:
    await services.catalog.upsert_batch(
        [{"id": p, "name": f"Item {p}"} for p in ("anchor", "usual", "selling")]
    )
    await services.tracking.record([
        # Two months ago two shoppers bought the anchor with "usual": its closest neighbour.
        *[bought(f"old{i}", p, -60) for i in range(2) for p in ("anchor", "usual")],
        # Yesterday "selling" sold to four shoppers, then to one who bought the anchor too.
        *[bought(f"fan{i}", "selling", -1) for i in range(4)],
        bought("new", "anchor", -1), bought("new", "selling", -1),
        {"type": "view", "user_id": "shopper", "product_id": "anchor",
         "timestamp": T0.isoformat()},
    ])  # fmt: skip
    await drain()
    scores: dict[float, dict[str, float]] = {}
    for floor in (0.5, 2.0):
        # for_you_cache_seconds=0: each floor's list is computed, not the first one kept.
        only_co_purchase = with_recommend(
            settings, selling_now_floor=floor, content_weight=0.0, popularity_weight=0.0,
            for_you_cache_seconds=0,
        )  # fmt: skip
        recommend = build_services(
            redis, Keyspace(settings.redis.namespace), only_co_purchase
        ).recommend
        found = await recommend.for_you(Shopper("user", "shopper"), 5, Filters(in_stock=None))
        scores[floor] = {item.id: item.score for item in found.items}
    # Neighbour score x (share of the best seller's recent sales + floor): "selling" (the
    # best seller, 1 + floor) against "usual" (no recent sales, floor alone).
    assert list(scores[0.5]) == ["selling", "usual"]  # x 1.5 against x 0.5
    assert list(scores[2.0]) == ["usual", "selling"]  # x 3 against x 2
    ratio = {floor: s["selling"] / s["usual"] for floor, s in scores.items()}
    assert ratio[0.5] / ratio[2.0] == pytest.approx((1.5 / 0.5) / (3.0 / 2.0), rel=1e-4)
