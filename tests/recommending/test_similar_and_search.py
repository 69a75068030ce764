"""Similar products, search and autocomplete over HTTP, with the indexer driven by hand."""

import asyncio
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from conftest import Drain
from recommender.app import create_app
from recommender.config import Settings

CATALOG: list[dict[str, Any]] = [
    {"id": "mug-white", "name": "White ceramic coffee mug", "category": "Home > Kitchen > Mugs",
     "price": 8, "brand": "Acme"},
    {"id": "mug-blue", "name": "Blue ceramic coffee mug", "category": "Home > Kitchen > Mugs",
     "price": 9},
    {"id": "mug-travel", "name": "Steel travel coffee mug", "category": "Home > Kitchen > Mugs",
     "price": 20},
    {"id": "teapot", "name": "Ceramic teapot with infuser", "category": "Home > Kitchen > Teaware",
     "price": 25},
    {"id": "lamp", "name": "Brass desk lamp", "category": "Home > Lighting", "price": 40},
    {"id": "lamp-floor", "name": "Brass floor lamp", "category": "Home > Lighting", "price": 90},
    {"id": "shirt", "name": "White cotton t-shirt", "category": "Fashion > Tops", "price": 15},
    {"id": "socks", "name": "Wool hiking socks", "category": "Fashion > Socks", "price": 12},
]  # fmt: skip


async def load(client: AsyncTestClient, drain: Drain, products: list[dict[str, Any]]) -> None:
    response = await client.post("/api/v1/products/batch", json={"items": products})
    assert response.json()["rejected"] == 0
    await drain()
    refit = await client.post("/api/v1/admin/model/refit", params={"wait": "true"})
    assert refit.status_code == 200


def ids(response: Any) -> list[str]:
    return [item["id"] for item in response.json()["items"]]


@pytest.mark.asyncio
async def test_similar_ranks_by_content_and_never_returns_the_product(
    client: AsyncTestClient, drain: Drain
) -> None:
    await load(client, drain, CATALOG)
    response = await client.get("/api/v1/products/mug-white/similar", params={"k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["embedded"] is True
    assert len(body["rec_id"]) == 32
    assert ids(response)[:2] == ["mug-blue", "mug-travel"]
    assert "mug-white" not in ids(response)
    first = body["items"][0]
    assert first["reason"] == {"strategy": "similar", "anchor": "mug-white"}
    assert 0 < first["score"] <= 1
    assert first["name"] == "Blue ceramic coffee mug"  # public fields come along


@pytest.mark.asyncio
async def test_similar_filters(client: AsyncTestClient, drain: Drain) -> None:
    await load(client, drain, CATALOG)
    url = "/api/v1/products/mug-white/similar"
    base = {"k": 10, "min_score": -1}
    assert set(ids(await client.get(url, params={**base, "category": "Home > Lighting"}))) == {
        "lamp",
        "lamp-floor",
    }
    assert set(ids(await client.get(url, params={**base, "category": "Home > Kitchen"}))) == {
        "mug-blue",
        "mug-travel",
        "teapot",
    }
    cheap = ids(await client.get(url, params={**base, "max_price": 15}))
    assert set(cheap) == {"mug-blue", "shirt", "socks"}
    priced = ids(await client.get(url, params={**base, "min_price": 20, "max_price": 40}))
    assert set(priced) == {"mug-travel", "teapot", "lamp"}
    excluded = ids(await client.get(url, params={**base, "exclude": ["mug-blue", "mug-travel"]}))
    assert "mug-blue" not in excluded
    assert "mug-travel" not in excluded
    assert len(excluded) == 5
    strict = ids(await client.get(url, params={"k": 10, "min_score": 0.99}))
    assert strict == []
    inverted = await client.get(url, params={"min_price": 10, "max_price": 5})
    assert inverted.status_code == 422
    assert "min_price" in inverted.json()["detail"]


@pytest.mark.asyncio
async def test_similar_unknown_and_not_yet_embedded(client: AsyncTestClient, drain: Drain) -> None:
    await load(client, drain, CATALOG)
    unknown = await client.get("/api/v1/products/nope/similar")
    assert unknown.status_code == 404
    await client.post("/api/v1/products", json={"id": "fresh", "name": "Green ceramic mug"})
    pending = (await client.get("/api/v1/products/fresh/similar")).json()
    assert (pending["items"], pending["embedded"]) == ([], False)
    await drain()
    indexed = await client.get("/api/v1/products/fresh/similar")
    assert indexed.json()["embedded"] is True
    assert "mug-white" in ids(indexed)


@pytest.mark.asyncio
async def test_writes_reach_similar_after_indexing(client: AsyncTestClient, drain: Drain) -> None:
    await load(client, drain, CATALOG)
    url = "/api/v1/products/mug-white/similar"
    await client.post(
        "/api/v1/products",
        json={"id": "twin", "name": "White ceramic coffee mug", "category": "Home > Kitchen"},
    )
    await drain()
    assert ids(await client.get(url))[0] == "twin"

    await client.patch("/api/v1/products/twin", json={"in_stock": False})
    await drain()
    assert "twin" not in ids(await client.get(url))
    assert ids(await client.get(url, params={"in_stock": "false", "min_score": -1})) == ["twin"]

    await client.patch("/api/v1/products/twin", json={"in_stock": True, "price": 500})
    await drain()
    assert "twin" not in ids(await client.get(url, params={"max_price": 100}))

    await client.delete("/api/v1/products/twin")
    await drain()
    assert "twin" not in ids(await client.get(url, params={"min_score": -1, "k": 100}))
    assert "twin" not in ids(await client.get("/api/v1/search", params={"q": "white mug"}))


@pytest.mark.asyncio
async def test_cached_neighbours_never_show_stale_products(
    client: AsyncTestClient, drain: Drain
) -> None:
    await load(client, drain, CATALOG)
    url = "/api/v1/products/mug-white/similar"
    assert "twin" not in ids(await client.get(url))  # the neighbours are cached from here on
    await client.post("/api/v1/products", json={"id": "twin", "name": "White ceramic coffee mug"})
    await drain()
    assert ids(await client.get(url))[0] == "twin"
    # Stock and deletion show at once: the products are read fresh, even before indexing.
    await client.patch("/api/v1/products/twin", json={"in_stock": False})
    assert "twin" not in ids(await client.get(url))
    await client.patch("/api/v1/products/twin", json={"in_stock": True})
    assert ids(await client.get(url))[0] == "twin"
    await client.patch("/api/v1/products/twin", json={"name": "Brass reading lamp"})
    await drain()
    assert "twin" not in ids(await client.get(url))
    await client.patch("/api/v1/products/twin", json={"name": "White ceramic coffee mug"})
    await drain()
    assert ids(await client.get(url))[0] == "twin"
    await client.delete("/api/v1/products/twin")
    assert "twin" not in ids(await client.get(url, params={"min_score": -1, "k": 100}))


@pytest.mark.asyncio
async def test_a_process_rechecks_its_cached_neighbours_within_the_interval(
    settings: Settings, drain: Drain
) -> None:
    checked = msgspec.structs.replace(
        settings,
        vectors=msgspec.structs.replace(settings.vectors, neighbour_epoch_check_seconds=0.2),
    )
    async with AsyncTestClient(create_app(checked)) as client:
        await load(client, drain, CATALOG)
        url = "/api/v1/products/mug-white/similar"
        assert "twin" not in ids(await client.get(url))
        twin = {"id": "twin", "name": "White ceramic coffee mug"}
        await client.post("/api/v1/products", json=twin)
        await drain()
        await asyncio.sleep(0.25)
        assert ids(await client.get(url))[0] == "twin"


@pytest.mark.asyncio
async def test_similar_looks_past_the_cached_neighbours_when_filters_drop_them(
    settings: Settings, drain: Drain
) -> None:
    shallow = msgspec.structs.replace(
        settings, vectors=msgspec.structs.replace(settings.vectors, neighbour_cache_depth=2)
    )
    async with AsyncTestClient(create_app(shallow)) as client:
        await load(client, drain, CATALOG)
        url = "/api/v1/products/mug-white/similar"
        nearest = ids(await client.get(url, params={"k": 3, "min_score": -1}))
        for product_id in nearest[:2]:
            await client.patch(f"/api/v1/products/{product_id}", json={"in_stock": False})
        await drain()
        found = ids(await client.get(url, params={"k": 3, "min_score": -1}))
        assert len(found) == 3
        assert not set(found) & set(nearest[:2])
        assert found[0] == nearest[2]


@pytest.mark.asyncio
async def test_search_is_hybrid_and_marks_its_sources(
    client: AsyncTestClient, drain: Drain
) -> None:
    await load(client, drain, CATALOG)
    response = await client.get("/api/v1/search", params={"q": "ceramic mug", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "ceramic mug"
    assert ids(response)[:2] in (["mug-white", "mug-blue"], ["mug-blue", "mug-white"])
    assert body["items"][0]["reason"] == {"strategy": "search", "matched": "text+vector"}
    assert body["lexical_hits"] >= 2
    assert body["suggestions"] == []

    bm25 = await client.get("/api/v1/search", params={"q": "brass", "mode": "bm25"})
    assert set(ids(bm25)) == {"lamp", "lamp-floor"}
    assert {item["reason"]["matched"] for item in bm25.json()["items"]} == {"text"}
    vector = await client.get("/api/v1/search", params={"q": "brass", "mode": "vector"})
    assert {item["reason"]["matched"] for item in vector.json()["items"]} == {"vector"}

    socks = await client.get("/api/v1/search", params={"q": "mug", "category": "Fashion"})
    assert "mug-white" not in ids(socks)


@pytest.mark.asyncio
async def test_stopwords_match_no_text_and_are_never_spelled_as_other_words(
    client: AsyncTestClient, drain: Drain
) -> None:
    await load(client, drain, CATALOG)
    search = "/api/v1/search"
    # The index leaves stopwords out: alone, they once made a BM25 query of every product.
    only = (await client.get(search, params={"q": "the", "mode": "bm25"})).json()
    assert (only["items"], only["lexical_hits"], only["suggestions"]) == ([], 0, [])
    # "with" is a word of one product's name, so the vector side finds it; no text matched.
    teapot = (await client.get(search, params={"q": "with", "k": 3})).json()
    assert teapot["lexical_hits"] == 0
    assert teapot["items"][0]["id"] == "teapot"
    assert teapot["items"][0]["reason"] == {"strategy": "search_alternative", "matched": "vector"}
    assert teapot["suggestions"] == []  # not "white"
    lamps = (await client.get(search, params={"q": "the lamp", "mode": "bm25"})).json()
    assert {item["id"] for item in lamps["items"]} == {"lamp", "lamp-floor"}
    assert lamps["lexical_hits"] == 2
    assert lamps["suggestions"] == []  # not "t lamp"
    misspelt = (await client.get(search, params={"q": "the lampp"})).json()
    assert misspelt["suggestions"] == ["the lamp"]


@pytest.mark.asyncio
async def test_search_shows_products_as_they_are_now_not_as_indexed(
    client: AsyncTestClient, drain: Drain
) -> None:
    await load(client, drain, CATALOG)
    url, query = "/api/v1/search", {"q": "ceramic mug", "in_stock": "true"}
    assert "mug-blue" in ids(await client.get(url, params=query))
    # No drain: the index still has the product as it was; the answer has it as it is.
    await client.patch("/api/v1/products/mug-blue", json={"in_stock": False})
    assert "mug-blue" not in ids(await client.get(url, params=query))
    await client.patch("/api/v1/products/mug-blue", json={"in_stock": True, "price": 99})
    found = (await client.get(url, params=query)).json()["items"]
    assert [item["price"] for item in found if item["id"] == "mug-blue"] == [99]
    assert "mug-blue" not in ids(await client.get(url, params={**query, "max_price": 50}))
    await client.delete("/api/v1/products/mug-blue")
    assert "mug-blue" not in ids(await client.get(url, params={"q": "ceramic mug"}))


@pytest.mark.asyncio
async def test_misspelled_query_gets_suggestions_and_alternatives(
    client: AsyncTestClient, drain: Drain
) -> None:
    await load(client, drain, CATALOG)
    body = (await client.get("/api/v1/search", params={"q": "ceramik mug"})).json()
    assert body["suggestions"] == ["ceramic mug"]
    typo = (await client.get("/api/v1/search", params={"q": "lampp brasss"})).json()
    assert typo["lexical_hits"] == 0
    assert typo["suggestions"] == ["lamp brass"]


@pytest.mark.parametrize(
    "query",
    ["@category:{Fashion}", "*", "mug | lamp", "-mug", '"mug"', "mug)", "{x}", "~a:b;c", "%%%"],
)
@pytest.mark.asyncio
async def test_query_syntax_is_taken_literally(
    client: AsyncTestClient, drain: Drain, query: str
) -> None:
    await load(client, drain, CATALOG)
    response = await client.get(
        "/api/v1/search", params={"q": query, "category": "Home > Lighting"}
    )
    assert response.status_code in (200, 422)
    if response.status_code == 200:
        assert set(ids(response)) <= {"lamp", "lamp-floor"}  # the filter was not widened
    else:
        assert "q" in response.json()["detail"]


@pytest.mark.asyncio
async def test_crafted_category_cannot_widen_the_filter(
    client: AsyncTestClient, drain: Drain
) -> None:
    await load(client, drain, CATALOG)
    for category in ["Home} | @category:{Fashion", "Home > Lighting}|{Fashion", "*"]:
        response = await client.get(
            "/api/v1/products/lamp/similar", params={"category": category, "min_score": -1}
        )
        if response.status_code == 422:  # '|' is refused outright
            assert "category" in response.json()["detail"]
        else:
            assert response.status_code == 200
            assert ids(response) == []


@pytest.mark.asyncio
async def test_autocomplete(client: AsyncTestClient, drain: Drain) -> None:
    await load(client, drain, CATALOG)
    body = (await client.get("/api/v1/autocomplete", params={"q": "brass la"})).json()
    assert {item["id"] for item in body["items"]} == {"lamp", "lamp-floor"}
    assert {item["name"] for item in body["items"]} == {"Brass desk lamp", "Brass floor lamp"}
    assert (await client.get("/api/v1/autocomplete", params={"q": "b"})).json()["items"] == []


@pytest.mark.asyncio
async def test_running_service_indexes_writes_by_itself(settings: Settings, redis: Any) -> None:
    """The whole pipeline with the app's own consumers: API write -> stream -> index -> read."""
    live = msgspec.structs.replace(
        settings, streams=msgspec.structs.replace(settings.streams, consumers_enabled=True)
    )
    async with AsyncTestClient(create_app(live)) as client:
        assert (await client.get("/health/ready")).json()["status"] == "ok"
        await client.post("/api/v1/products/batch", json={"items": CATALOG})
        await client.post("/api/v1/products", json={**CATALOG[0], "id": "twin"})
        for _ in range(200):  # the consumer runs in the background; wait for it, bounded
            found = ids(await client.get("/api/v1/products/mug-white/similar"))
            if "twin" in found:
                break
            await asyncio.sleep(0.05)
        assert "twin" in found


@pytest.mark.asyncio
async def test_search_puts_the_kind_of_product_asked_for_first(
    client: AsyncTestClient, drain: Drain
) -> None:
    await load(client, drain, CATALOG)
    response = await client.get("/api/v1/search", params={"q": "white mugs", "k": 4})
    items = response.json()["items"]
    # Every mug before the white shirt: the last word names what is wanted.
    assert [item["id"] for item in items][:3] == ["mug-white", "mug-blue", "mug-travel"]
    assert items[3]["id"] == "shirt"
    assert items[0]["score"] > 1  # the cosine plus the whole name matched
