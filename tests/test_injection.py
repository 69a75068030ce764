"""Hostile input is taken literally or refused cleanly, and never reaches past its namespace."""

from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from conftest import Drain
from recommender.app import create_app
from recommender.config import Settings


@pytest.mark.parametrize(
    "product_id", ["a*", "a?", "a[b]", "x y", "é", "a\\b", "{a}", "a|b", "", "x" * 129]
)
@pytest.mark.asyncio
async def test_ids_with_syntax_or_glob_characters_are_refused(
    client: AsyncTestClient, product_id: str
) -> None:
    response = await client.post("/api/v1/products", json={"id": product_id, "name": "n"})
    assert response.status_code == 400
    assert "id" in response.json()["detail"]


@pytest.mark.parametrize(
    "text",
    ["@category:{*}", "*", "a|b", "(x)", "-neg", "~opt", "'q'", '"q"', "a:b;c", "ünïcødé 雨",
     "[a-z]*", "%", "\\", "{x}|{y}"],
)  # fmt: skip
@pytest.mark.asyncio
async def test_syntax_in_text_fields_is_stored_and_searched_literally(
    client: AsyncTestClient, drain: Drain, text: str
) -> None:
    product = {"id": "p1", "name": f"Lamp {text}", "brand": text, "category": f"Home > {text}",
               "tags": [text]}  # fmt: skip
    created = await client.post("/api/v1/products", json=product)
    if "|" in text:  # the category path separator of the index: refused, naming the rule
        assert created.status_code == 400
        assert "category" in created.json()["detail"]
        return
    assert created.status_code == 201, created.text
    await client.post(
        "/api/v1/products", json={"id": "p2", "name": "Other lamp", "category": "Toys"}
    )
    await drain()
    stored = (await client.get("/api/v1/products/p1")).json()
    assert (stored["brand"], stored["tags"]) == (text, [text])
    same = await client.get(
        "/api/v1/search", params={"q": f"lamp {text}", "category": f"Home > {text}"}
    )
    assert same.status_code == 200
    assert [item["id"] for item in same.json()["items"]] == ["p1"]
    listed = await client.get("/api/v1/products", params={"category": f"Home > {text}"})
    assert [item["id"] for item in listed.json()["items"]] == ["p1"]


@pytest.mark.asyncio
async def test_nothing_reaches_another_namespace(
    settings: Settings, client: AsyncTestClient, drain: Drain, redis: "aioredis.Redis"
) -> None:
    await client.post(
        "/api/v1/products", json={"id": "mine", "name": "Red lamp", "category": "Home"}
    )
    await drain()
    other = msgspec.structs.replace(
        settings, redis=msgspec.structs.replace(settings.redis, namespace="other:")
    )
    async with AsyncTestClient(create_app(other)) as stranger:
        for url, params in [
            ("/api/v1/products/mine", {}),
            ("/api/v1/products", {"category": f"{settings.redis.namespace}catalog:category:Home"}),
            ("/api/v1/products", {"category": "Home"}),
            ("/api/v1/search", {"q": "red lamp"}),
            ("/api/v1/autocomplete", {"q": "red la"}),
        ]:
            response = await stranger.get(url, params=params)
            body: Any = response.json()
            if response.status_code == 200:
                assert "mine" not in [item["id"] for item in body["items"]], url
            else:
                assert response.status_code in (404, 503), url
    leaked = [key async for key in redis.scan_iter(match="other:*")]
    assert leaked == []


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        ("/api/v1/search", {"q": "x" * 201}, "q"),
        ("/api/v1/search", {"q": "_"}, "q"),  # no letter or digit: found by fuzzing (was 500)
        ("/api/v1/search", {"q": "lamp", "category": "Home\x00>x"}, "category"),  # ditto
        ("/api/v1/search", {"q": "lamp", "k": 101}, "k"),
        ("/api/v1/popular", {"k": 0}, "k"),
        ("/api/v1/popular", {"days": 366}, "days"),
        ("/api/v1/products", {"limit": 1001}, "limit"),
        ("/api/v1/products/p1/similar", {"min_score": 2}, "min_score"),
        ("/api/v1/products/p1/similar", {"exclude": ["ok", "bad id"]}, "exclude"),
    ],
)
@pytest.mark.asyncio
async def test_limits_are_enforced_with_the_field_named(
    client: AsyncTestClient, url: str, params: dict[str, Any], field: str
) -> None:
    response = await client.get(url, params=params)
    assert response.status_code in (400, 422), response.text
    assert field in response.json()["detail"]
