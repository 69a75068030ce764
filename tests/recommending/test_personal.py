"""For you, buy again, bought together, popular and trending on a small, telling history."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from conftest import Drain

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
async def test_popular_and_trending_by_category(client: AsyncTestClient, drain: Drain) -> None:
    await setup(client, drain)
    assert ids(await client.get("/api/v1/popular", params={"k": 1})) == ["mug"]
    camping = await client.get("/api/v1/categories/Outdoor > Camping/popular")
    assert set(ids(camping)) == {"tent", "bag", "mat"}
    kitchen = await client.get("/api/v1/categories/Home/trending")
    assert ids(kitchen)[0] == "mug"
    assert set(ids(kitchen)) <= {"mug", "kettle", "lamp"}
