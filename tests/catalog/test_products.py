"""Product CRUD over HTTP on a real Redis: every write stored with exactly one event."""

import asyncio
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from recommender.catalog import CatalogRepository, CatalogService, ProductCreate
from recommender.catalog.schemas import ProductUpdate
from recommender.config import Settings
from recommender.platform.redis import Keyspace

MUG = {
    "id": "mug-1",
    "name": "White ceramic mug",
    "description": "Holds 350 ml.",
    "category": "Home>Kitchen >  Mugs",
    "brand": "Acme",
    "tags": ["ceramic", "white"],
    "price": 9.5,
    "currency": "EUR",
    "image_url": "https://shop.example/mug.jpg",
    "attributes": {"colour": "white"},
}


async def events(redis: "aioredis.Redis", settings: Settings) -> list[dict[str, str]]:
    stream = Keyspace(settings.redis.namespace).key("stream", "catalog")
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]


@pytest.mark.asyncio
async def test_create_get_and_conflict(
    client: AsyncTestClient, redis: "aioredis.Redis", settings: Settings
) -> None:
    created = await client.post("/api/v1/products", json=MUG)
    assert created.status_code == 201
    body = created.json()
    assert body["category"] == "Home > Kitchen > Mugs"  # normalised
    assert body["version"] == 1
    assert body["in_stock"] is True
    assert body["created_at"] == body["updated_at"]
    assert (await client.get("/api/v1/products/mug-1")).json() == body

    again = await client.post("/api/v1/products", json={**MUG, "name": "Other"})
    assert again.status_code == 409
    assert again.json() == {"error": "conflict", "detail": "product 'mug-1' already exists"}
    assert (await client.get("/api/v1/products/mug-1")).json()["name"] == MUG["name"]
    assert await events(redis, settings) == [{"op": "upsert", "id": "mug-1", "version": "1"}]


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"id": "has space"}, "id", "matching regex"),
        ({"id": "x" * 129}, "id", "matching regex"),
        ({"name": ""}, "name", "length >= 1"),
        ({"name": "n" * 501}, "name", "length <= 500"),
        ({"description": "d" * 20_001}, "description", "length <= 20000"),
        ({"price": -1}, "price", ">= 0"),
        ({"tags": ["t"] * 51}, "tags", "length <= 50"),
        ({"currency": "euro"}, "currency", "matching regex"),
        ({"image_url": "javascript:alert(1)"}, "image_url", "matching regex"),
        ({"category": "Home >  > Mugs"}, "category", "non-empty"),
        ({"unknown": 1}, "unknown", "unknown field"),
    ],
)
@pytest.mark.asyncio
async def test_invalid_product_is_rejected_naming_field_and_rule(
    client: AsyncTestClient,
    redis: "aioredis.Redis",
    settings: Settings,
    change: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    response = await client.post("/api/v1/products", json={**MUG, **change})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert field in detail
    assert rule in detail
    assert await events(redis, settings) == []
    assert (await client.get("/api/v1/products/mug-1")).status_code == 404


@pytest.mark.asyncio
async def test_put_creates_then_replaces(client: AsyncTestClient) -> None:
    fields = {k: v for k, v in MUG.items() if k != "id"}
    first = await client.put("/api/v1/products/mug-1", json=fields)
    assert (first.status_code, first.json()["version"]) == (201, 1)
    second = await client.put("/api/v1/products/mug-1", json={"name": "Renamed"})
    assert second.status_code == 200
    body = second.json()
    assert (body["name"], body["version"], body["brand"], body["tags"]) == ("Renamed", 2, "", [])
    assert body["created_at"] == first.json()["created_at"]


@pytest.mark.asyncio
async def test_patch_changes_only_what_is_given(client: AsyncTestClient) -> None:
    await client.post("/api/v1/products", json=MUG)
    patched = await client.patch("/api/v1/products/mug-1", json={"price": None, "in_stock": False})
    assert patched.status_code == 200
    body = patched.json()
    assert (body["price"], body["in_stock"], body["name"], body["version"]) == (
        None,
        False,
        MUG["name"],
        2,
    )
    bad = await client.patch("/api/v1/products/mug-1", json={"name": ""})
    assert bad.status_code == 400
    assert "name" in bad.json()["detail"]
    absent = await client.patch("/api/v1/products/nope", json={"name": "x"})
    assert absent.status_code == 404
    assert (await client.get("/api/v1/products/mug-1")).json()["version"] == 2


@pytest.mark.asyncio
async def test_delete(client: AsyncTestClient, redis: "aioredis.Redis", settings: Settings) -> None:
    await client.post("/api/v1/products", json=MUG)
    assert (await client.delete("/api/v1/products/mug-1")).status_code == 204
    assert (await client.get("/api/v1/products/mug-1")).status_code == 404
    missing = await client.delete("/api/v1/products/mug-1")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert [e["op"] for e in await events(redis, settings)] == ["upsert", "delete"]


@pytest.mark.asyncio
async def test_invalid_path_id_is_rejected(client: AsyncTestClient) -> None:
    response = await client.get("/api/v1/products/bad*id")
    assert response.status_code == 400
    assert "product_id" in response.json()["detail"]


@pytest.mark.asyncio
async def test_list_pages_with_cursor_and_filters_by_category_prefix(
    client: AsyncTestClient,
) -> None:
    for i, category in enumerate(["Home > Kitchen", "Home > Garden", "Toys", "Home"] * 3):
        await client.post(
            "/api/v1/products", json={"id": f"p{i:02d}", "name": f"P{i}", "category": category}
        )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/products", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{i:02d}" for i in range(12)]
    home = (await client.get("/api/v1/products", params={"category": "Home"})).json()
    assert len(home["items"]) == 9
    kitchen = (await client.get("/api/v1/products", params={"category": "home>Kitchen"})).json()
    assert kitchen["items"] == []  # paths are case-sensitive in listings

    await client.patch("/api/v1/products/p00", json={"category": "Toys > Puzzles"})
    kitchen = (await client.get("/api/v1/products", params={"category": "Home > Kitchen"})).json()
    assert [item["id"] for item in kitchen["items"]] == ["p04", "p08"]
    toys = (await client.get("/api/v1/products", params={"category": "Toys"})).json()
    assert "p00" in [item["id"] for item in toys["items"]]


@pytest.mark.asyncio
async def test_batch_upserts_valid_items_and_reports_each(
    client: AsyncTestClient, redis: "aioredis.Redis", settings: Settings
) -> None:
    await client.post("/api/v1/products", json=MUG)
    response = await client.post(
        "/api/v1/products/batch",
        json={
            "items": [
                {"id": "a", "name": "A"},
                {"id": "mug-1", "name": "Mug renamed"},
                {"id": "b", "name": ""},
                {"id": "a", "name": "A again"},
                "not an object",
            ]
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["created"], body["updated"], body["rejected"]) == (1, 1, 3)
    statuses = [(item["index"], item["status"]) for item in body["items"]]
    assert statuses == [(0, "created"), (1, "updated"), (2, "rejected"), (3, "rejected"),
                        (4, "rejected")]  # fmt: skip
    assert "name" in body["items"][2]["error"]
    assert "more than once" in body["items"][3]["error"]
    assert (await client.get("/api/v1/products/b")).status_code == 404
    assert len(await events(redis, settings)) == 3  # mug create, a, mug update


@pytest.mark.asyncio
async def test_batch_is_bounded(client: AsyncTestClient) -> None:
    items = [{"id": f"p{i}", "name": "x"} for i in range(1001)]
    response = await client.post("/api/v1/products/batch", json={"items": items})
    assert response.status_code == 400
    assert "items" in response.json()["detail"]
    assert "length <= 1000" in response.json()["detail"]


@pytest.mark.asyncio
async def test_concurrent_patches_are_all_applied(client: AsyncTestClient) -> None:
    await client.post("/api/v1/products", json=MUG)
    responses = await asyncio.gather(
        *(client.patch("/api/v1/products/mug-1", json={"tags": [f"t{i}"]}) for i in range(10))
    )
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 12))
    assert (await client.get("/api/v1/products/mug-1")).json()["version"] == 11


@pytest.mark.asyncio
async def test_lists_read_products_through_a_cache_that_follows_the_catalogs_changes(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    keys = Keyspace(settings.redis.namespace)
    hourly = msgspec.structs.replace(settings.catalog, change_check_seconds=3600)
    this = CatalogService(CatalogRepository(redis, keys), hourly)
    other = CatalogService(CatalogRepository(redis, keys), settings.catalog)  # another process
    await other.create(ProductCreate(id="p", name="Red scarf", price=2.0))
    (first,) = await this.get_many(["p"], cached=True)
    await other.update("p", ProductUpdate(in_stock=False))
    assert await this.get_many(["p"], cached=True) == [first]  # the change is not read yet
    (fresh,) = await this.get_many(["p"])
    assert fresh is not None
    assert not fresh.in_stock  # an uncached read is always fresh
    await this.update("p", ProductUpdate(price=3.0))
    (own,) = await this.get_many(["p"], cached=True)
    assert own is not None
    assert (own.price, own.in_stock) == (3.0, False)  # its own writes at once
    following = CatalogService(CatalogRepository(redis, keys), settings.catalog)  # reads each time
    assert await following.get_many(["p", "unknown"], cached=True) == [own, None]
    await other.delete("p")
    assert await following.get_many(["p"], cached=True) == [None]
