"""KNN and BM25 queries read from the raw FT.SEARCH reply: the answers redis-py's parsing gives."""

import math
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import numpy as np
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.commands.search.query import Query

from conftest import Drain
from recommender.catalog import ProductCreate
from recommender.config import Settings
from recommender.platform.redis import Keyspace
from recommender.services import Services
from recommender.vectors import Filters, Neighbour, VectorIndex
from recommender.vectors.index import NotLiveError, SearchSides

NAMES = [
    "White ceramic coffee mug", "Blue ceramic coffee mug", "Brass desk lamp", "Brass floor lamp",
    "Ceramic teapot", "Wool hiking socks", "Red wool scarf", "Blue wool scarf",
]  # fmt: skip
FILTERS = [
    Filters(),  # no filter: the blended "for you" query
    Filters(in_stock=None, exclude=("p0",)),  # the neighbour cache's: HYBRID_POLICY BATCHES
    Filters(in_stock=True, exclude=("p0", "sku:7")),
    Filters(category="Home > Kitchen"),
    Filters(min_price=5.0, max_price=30.0),
    Filters(category="Garden"),  # matches nothing
]


@pytest_asyncio.fixture
async def catalog(services: Services, drain: Drain) -> tuple[int, list[np.ndarray[Any, Any]]]:
    """Eight indexed products (one id with a colon, one out of stock); the live version and
    their vectors."""
    for i, name in enumerate(NAMES):
        await services.catalog.create(
            ProductCreate(
                id="sku:7" if i == 7 else f"p{i}",
                name=name,
                category="Home > Kitchen" if "ceramic" in name.lower() else "Home > Living",
                price=4.5 * (i + 1),
                in_stock=i != 3,
            )
        )
    await drain()
    await services.vectors.refit(reason="test")
    version, _ = await services.vectors.live_model()
    ids = [f"p{i}" for i in range(7)] + ["sku:7"]
    matrix, indexed = await services.vectors.index.vectors(version, ids)
    assert all(indexed)
    return version, list(matrix)


@pytest_asyncio.fixture
async def resp2(redis_url: str) -> AsyncIterator["aioredis.Redis"]:
    client = aioredis.Redis.from_url(redis_url, protocol=2)
    yield client
    await client.aclose()


async def redis_py_search(
    redis: "aioredis.Redis",
    index: str,
    vector: np.ndarray[Any, Any],
    k: int,
    filters: Filters,
    *fields: str,
) -> Any:
    """The same KNN through redis-py's `ft().search` and its `Result` parsing: the reference."""
    policy = " HYBRID_POLICY BATCHES" if filters.broad and filters.clause() != "*" else ""
    query = (
        Query(f"({filters.clause()})=>[KNN {k} @embedding $vector{policy} AS distance]")
        .return_fields(*fields)
        .sort_by("distance")
        .paging(0, k)
        .dialect(2)
    )
    blob = np.asarray(vector, dtype=np.float32).tobytes()
    return await redis.ft(index).search(query, {"vector": blob})


async def searched(
    services: Services,
    version: int,
    terms: list[str],
    vector: np.ndarray[Any, Any] | None,
    k: int,
    filters: Filters,
    index: VectorIndex | None = None,
) -> SearchSides:
    """A search's two sides in the live version's index, as the service sends it."""
    return await (index or services.vectors.index).search(
        version, terms, vector, k, filters, state_key=services.vectors.store.state_key
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("filters", FILTERS, ids=lambda filters: filters.clause())
@pytest.mark.parametrize("k", [3, 8, 20])
async def test_knn_ids_and_search_answer_what_redis_py_parsing_gives(
    services: Services,
    catalog: tuple[int, list[np.ndarray[Any, Any]]],
    redis: "aioredis.Redis",
    filters: Filters,
    k: int,
) -> None:
    version, vectors = catalog
    index = services.vectors.index
    name = index.name(version)
    for vector in vectors[:3]:
        reference = await redis_py_search(redis, name, vector, k, filters, "pid", "doc", "distance")
        ids = [Neighbour(doc.pid, 1.0 - float(doc.distance)) for doc in reference.docs]
        assert await index.knn_ids(vector, k, filters, name) == ids
        assert (await searched(services, version, [], vector, k, filters)).nearest == ids
        assert await index.knn_ids(vector, k, filters) == ids  # through the alias
    assert all(math.isfinite(score) for _, score in ids)


@pytest.mark.asyncio
async def test_a_resp2_client_gets_the_same_answers(
    services: Services,
    catalog: tuple[int, list[np.ndarray[Any, Any]]],
    resp2: "aioredis.Redis",
    settings: Settings,
) -> None:
    version, vectors = catalog
    index = services.vectors.index
    over_resp2 = VectorIndex(resp2, Keyspace(settings.redis.namespace), settings.vectors)
    name = index.name(version)
    for filters in FILTERS:
        assert await over_resp2.knn_ids(vectors[1], 8, filters, name) == await index.knn_ids(
            vectors[1], 8, filters, name
        )
        assert await searched(
            services, version, ["wool"], vectors[1], 8, filters, over_resp2
        ) == await searched(services, version, ["wool"], vectors[1], 8, filters)


@pytest.mark.asyncio
async def test_nan_distances_are_left_out_and_the_order_kept(
    services: Services,
    catalog: tuple[int, list[np.ndarray[Any, Any]]],
    redis: "aioredis.Redis",
) -> None:
    version, vectors = catalog
    index = services.vectors.index
    name = index.name(version)
    # A zero vector has no cosine: RediSearch answers it with distance "-nan" (the indexer keeps
    # such vectors out of the index, so one is written by hand here).
    zero = np.zeros(len(vectors[0]), dtype=np.float32)
    product = await services.catalog.get("p5")
    await redis.hset(
        index.doc_key(version, "zero"),
        mapping={"embedding": zero.tobytes(), "pid": "zero", "doc": msgspec.json.encode(product)},
    )
    raw = await redis_py_search(redis, name, vectors[0], 20, Filters(), "distance")
    distances = {doc.id: doc.distance for doc in raw.docs}
    assert distances[index.doc_key(version, "zero")] == "-nan"  # what the server really sends

    ids = await index.knn_ids(vectors[0], 20, Filters(), name)
    hits = (await searched(services, version, [], vectors[0], 20, Filters())).nearest
    expected = [
        (doc.id.removeprefix(index.prefix(version)), 1.0 - float(doc.distance))
        for doc in raw.docs
        if doc.distance != "-nan"
    ]
    assert len(expected) == len(NAMES)
    assert [tuple(neighbour) for neighbour in ids] == expected
    assert hits == expected
    assert [score for _, score in expected] == sorted((s for _, s in expected), reverse=True)
    # A zero query vector is NaN to everything: nothing is answered.
    assert await index.knn_ids(zero, 20, Filters(), name) == []
    assert await searched(services, version, [], zero, 20, Filters()) == ([], [])


@pytest.mark.asyncio
async def test_ids_come_back_whole_from_the_keys_of_any_version(
    services: Services, catalog: tuple[int, list[np.ndarray[Any, Any]]]
) -> None:
    _, vectors = catalog
    ids = ["a:b:c", "12:34", "x", "sku-9.z_"]
    await services.catalog.upsert_batch([{"id": i, "name": f"Product {i}"} for i in ids])
    products = [p for p in await services.catalog.get_many(ids) if p is not None]
    index = services.vectors.index
    await index.create(123)
    stacked = np.stack(vectors[: len(ids)])
    await index.write(123, services.catalog.product_key, products, stacked, live=False)

    found = await index.knn_ids(vectors[0], 10, Filters(), index.name(123))

    assert found[0].product_id == "a:b:c"  # itself, at cosine 1
    assert found[0].score == pytest.approx(1.0, abs=1e-5)
    assert sorted(neighbour.product_id for neighbour in found) == sorted(ids)


@pytest.mark.asyncio
@pytest.mark.parametrize("filters", FILTERS, ids=lambda filters: filters.clause())
async def test_bm25_answers_what_redis_py_parsing_gives_over_both_protocols(
    services: Services,
    catalog: tuple[int, list[np.ndarray[Any, Any]]],
    redis: "aioredis.Redis",
    resp2: "aioredis.Redis",
    settings: Settings,
    filters: Filters,
) -> None:
    version, _ = catalog
    index = services.vectors.index
    over_resp2 = VectorIndex(resp2, Keyspace(settings.redis.namespace), settings.vectors)
    name = index.name(version)
    for terms in (["ceramic", "mug"], ["wool"], ["brass", "lamp", "teapot"], ["nothing"]):
        where = filters.clause()
        text = f"@name|description|category_text|brand_text:({' | '.join(terms)})"
        query = (
            Query(text if where == "*" else f"{text} {where}")
            .scorer("BM25STD").with_scores().return_fields("pid").paging(0, 5).dialect(2)
        )  # fmt: skip
        reference = await redis.ft(name).search(query)
        expected = [(doc.pid, float(doc.score)) for doc in reference.docs]
        for client in (index, over_resp2):
            found = await searched(services, version, terms, None, 5, filters, client)
            assert found == (expected, [])


@pytest.mark.asyncio
@pytest.mark.parametrize("filters", FILTERS, ids=lambda filters: filters.clause())
async def test_both_sides_of_a_search_in_one_round_trip_answer_as_each_alone(
    services: Services, catalog: tuple[int, list[np.ndarray[Any, Any]]], filters: Filters
) -> None:
    version, vectors = catalog
    for terms, vector in (
        (["ceramic", "mug"], vectors[0]),
        (["wool"], vectors[3]),
        ([], vectors[1]),
    ):
        both = await searched(services, version, terms, vector, 5, filters)
        lexical = await searched(services, version, terms, None, 5, filters)
        nearest = await searched(services, version, [], vector, 5, filters)
        assert both == (lexical.lexical, nearest.nearest)
        if filters is not FILTERS[-1]:  # all but the one that matches nothing find something
            assert both.nearest


@pytest.mark.asyncio
async def test_reads_of_a_version_no_longer_live_answer_the_live_one_only(
    services: Services, catalog: tuple[int, list[np.ndarray[Any, Any]]]
) -> None:
    version, vectors = catalog
    index, state_key = services.vectors.index, services.vectors.store.state_key
    with pytest.raises(NotLiveError) as stale:
        await searched(services, version - 1, ["mug"], vectors[0], 5, Filters())
    assert stale.value.live == version
    with pytest.raises(NotLiveError) as stale:
        await index.vectors(version - 1, ["p0"], state_key=state_key)
    assert stale.value.live == version
    with pytest.raises(NotLiveError) as stale:
        await index.knn_ids(vectors[0], 5, Filters(), live=(state_key, version - 1))
    assert stale.value.live == version
    checked = await index.knn_ids(vectors[0], 5, Filters(), live=(state_key, version))
    assert checked == await index.knn_ids(vectors[0], 5, Filters())
    matrix, indexed = await index.vectors(version, ["p0", "nothing"], state_key=state_key)
    assert np.array_equal(matrix[0], vectors[0])
    assert indexed == [True, False]
    await services.vectors.store.client.hdel(state_key, "live")
    with pytest.raises(NotLiveError) as none:
        await index.vectors(version, ["p0"], state_key=state_key)
    assert none.value.live is None


@pytest.mark.asyncio
async def test_the_service_reads_the_new_version_after_a_swap(
    services: Services, catalog: tuple[int, list[np.ndarray[Any, Any]]]
) -> None:
    version, _ = catalog
    vectors = services.vectors
    first, _, found = await vectors.search("ceramic mug", ["ceramic", "mug"], True, 5, Filters())
    assert first == version
    assert found.lexical
    assert found.nearest
    blend = await vectors.near_blend([("p0", 1.0)], 3)
    assert blend.version == version
    # Each refit drops the index and documents of the version this process last saw live.
    await vectors.refit(reason="test")
    blended = await vectors.near_blend([("p0", 1.0)], 3)
    assert blended.version == version + 1
    assert [hit[0] for hit in blended.hits] == [hit[0] for hit in blend.hits]
    await vectors.refit(reason="test")
    live, vector = await vectors.stored_vector("p0")
    assert live == version + 2
    assert vector is not None
    assert np.any(vector)
    await vectors.refit(reason="test")
    last, model, again = await vectors.search("ceramic mug", ["ceramic", "mug"], True, 5, Filters())
    assert last == version + 3 == (await vectors.live_model())[0]
    assert [pid for pid, _ in again.nearest] == [pid for pid, _ in found.nearest]
    assert model.knows_word("ceramic")
