"""The indexer and refits on a real RediSearch: version-guarded writes, deletes, swaps."""

import asyncio
import gc
from typing import Any

import msgspec
import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from conftest import Drain
from recommender.catalog import ProductCreate
from recommender.catalog.schemas import ProductUpdate
from recommender.config import Settings
from recommender.platform.redis import Keyspace
from recommender.services import Services, build_services
from recommender.vectors import BlendNeighbours, Filters, VectorService


async def add(services: Services, *names: str) -> None:
    for i, name in enumerate(names):
        await services.catalog.create(ProductCreate(id=f"p{i}", name=name))


async def fitted(services: Services, drain: Drain, *names: str) -> None:
    """Products p0, p1, ... with these names, indexed, and a model fitted on them."""
    await add(services, *names)
    await drain()
    await services.vectors.refit(reason="test")


async def cosine(services: Services, one: str, other: str) -> float:
    _, first = await services.vectors.stored_vector(one)
    _, second = await services.vectors.stored_vector(other)
    assert first is not None
    assert second is not None
    return float(first @ second)


@pytest.mark.asyncio
async def test_first_product_fits_a_model_and_is_indexed(
    services: Services, drain: Drain, redis: "aioredis.Redis"
) -> None:
    await add(services, "Red wool scarf")
    await drain()
    described = await services.vectors.describe()
    assert described.info is not None
    assert (described.info.documents, described.info.dims) == (1, 384)
    version, vector = await services.vectors.stored_vector("p0")
    assert vector is not None
    assert vector.shape == (384,)
    assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)
    stored = await redis.get(services.vectors.store.model_key(version))
    assert stored is not None
    assert not stored.startswith(b"\x80")  # not a pickle: arrays and vocabulary only


@pytest.mark.asyncio
async def test_stale_embedding_never_overwrites_a_newer_version(
    services: Services, drain: Drain
) -> None:
    await add(services, "Red wool scarf", "Blue wool scarf")
    await drain()
    version, model = await services.vectors.live_model()
    old = await services.catalog.get("p0")
    await services.catalog.update("p0", ProductUpdate(name="Green silk tie"))
    # A slow consumer that embedded the old text arrives after the change: it is skipped.
    vectors = await services.vectors.embed(model, [old])
    written = await services.vectors.index.write(
        version, services.catalog.product_key, [old], vectors, live=True
    )
    assert written == [0]
    await drain()
    assert await services.vectors.index.indexed_versions(version, ["p0"]) == [2]


@pytest.mark.asyncio
async def test_late_write_of_a_deleted_product_removes_its_vector(
    services: Services, drain: Drain
) -> None:
    await add(services, "Red wool scarf", "Blue wool scarf")
    await drain()
    version, model = await services.vectors.live_model()
    old = await services.catalog.get("p1")
    await services.catalog.delete("p1")
    vectors = await services.vectors.embed(model, [old])
    written = await services.vectors.index.write(
        version, services.catalog.product_key, [old], vectors, live=True
    )
    assert written == [-1]
    assert await services.vectors.index.vector(version, "p1") is None


@pytest.mark.asyncio
async def test_a_write_of_more_than_one_round_trip_answers_every_product_in_order(
    services: Services,
) -> None:
    ids = [f"p{i:03d}" for i in range(250)]
    await services.catalog.upsert_batch([{"id": i, "name": f"Product {i}"} for i in ids])
    products = [p for p in await services.catalog.get_many(ids) if p is not None]
    await services.catalog.delete("p240")  # its late write takes the vector document with it
    index = services.vectors.index
    await index.create(1)
    vectors = np.random.default_rng(0).random((len(products), 384), dtype=np.float32)

    written = await index.write(1, services.catalog.product_key, products, vectors, live=False)

    assert written == [1] * 240 + [-1] + [1] * 9
    assert await index.indexed_versions(1, ["p000", "p199", "p240", "p249"]) == [1, 1, None, 1]


@pytest.mark.asyncio
async def test_redelivered_events_are_harmless(services: Services, drain: Drain) -> None:
    await add(services, "Red wool scarf", "Blue wool scarf")
    await drain()
    version, _ = await services.vectors.live_model()
    await services.vectors.index_products(["p0", "p0", "p1", "p0"])
    assert await services.vectors.index.indexed_versions(version, ["p0", "p1"]) == [1, 1]
    assert await services.vectors.index.document_count(version) == 2


@pytest.mark.asyncio
async def test_refit_swaps_to_a_new_index_and_drops_the_old(
    services: Services, drain: Drain, redis: "aioredis.Redis"
) -> None:
    await add(services, "Red wool scarf", "Blue wool scarf", "Brass desk lamp")
    await drain()
    before, _ = await services.vectors.live_model()
    info = await services.vectors.refit(reason="test")
    after, _ = await services.vectors.live_model()
    assert after == info.version
    assert after > before
    assert info.documents == 3
    assert await services.vectors.index.document_count(after) == 3
    names = {name.decode() for name in await redis.execute_command("FT._LIST")}
    assert services.vectors.index.name(before) not in names
    assert services.vectors.index.name(after) in names
    assert await redis.get(services.vectors.store.model_key(before)) is None
    alias = await redis.ft(services.vectors.index.alias).info()
    assert alias["index_name"] == services.vectors.index.name(after)


@pytest.mark.asyncio
async def test_writes_during_a_refit_reach_the_new_index(services: Services, drain: Drain) -> None:
    await add(services, *[f"Wool scarf number {i}" for i in range(300)])
    await drain()
    refit = asyncio.create_task(services.vectors.refit(reason="test"))
    for i in range(20):
        await services.catalog.update(f"p{i}", ProductUpdate(name=f"Silk tie {i}"))
        await services.catalog.delete(f"p{100 + i}")
        await drain()
        await asyncio.sleep(0)
    info = await refit
    await drain()
    version, _ = await services.vectors.live_model()
    assert version == info.version
    products = [p async for p in services.vectors._all_products()]
    assert len(products) == 280
    indexed = await services.vectors.index.indexed_versions(version, [p.id for p in products])
    assert indexed == [p.version for p in products]
    assert await services.vectors.index.document_count(version) == 280


@pytest.mark.asyncio
async def test_only_one_refit_at_a_time(services: Services, drain: Drain) -> None:
    await add(services, *[f"Wool scarf number {i}" for i in range(50)])
    await drain()
    results = await asyncio.gather(
        services.vectors.refit(reason="a"), services.vectors.refit(reason="b"),
        return_exceptions=True,
    )  # fmt: skip
    assert sorted(type(r).__name__ for r in results) == ["ModelInfo", "RefitBusyError"]


@pytest.mark.asyncio
async def test_a_text_with_no_known_term_stays_out_of_the_vector_side(
    services: Services, drain: Drain
) -> None:
    await fitted(services, drain, "Red wool scarf", "Blue wool scarf", "Green wool scarf")
    await services.catalog.create(ProductCreate(id="odd", name="Qqqq"))
    await drain()
    version, vector = await services.vectors.stored_vector("odd")
    assert vector is not None  # indexed...
    assert not np.any(vector)  # ...as nothing: no cosine to anyone
    hits = await services.vectors.neighbours("p0", 10)
    assert hits is not None
    assert "odd" not in [product_id for product_id, _ in hits]
    assert all(not np.isnan(score) for _, score in hits)
    assert await services.vectors.neighbours("odd", 10) == []
    assert await services.vectors.index.indexed_versions(version, ["odd"]) == [1]


@pytest.mark.asyncio
async def test_the_epoch_moves_with_the_live_vectors_only(services: Services, drain: Drain) -> None:
    await add(services, "Red wool scarf", "Blue wool scarf", "Green wool scarf")
    await drain()
    index = services.vectors.index
    before = await index.epoch()
    await services.catalog.update("p0", ProductUpdate(price=12.5, in_stock=False))
    await drain()
    assert await index.epoch() == before  # no vector changed: cached neighbours still hold
    await services.catalog.update("p0", ProductUpdate(name="Red silk scarf"))
    await drain()
    changed = await index.epoch()
    assert changed > before
    await services.catalog.create(ProductCreate(id="p9", name="Yellow wool scarf"))
    await drain()
    assert await index.epoch() > changed
    grown = await index.epoch()
    await services.catalog.delete("p9")
    await drain()
    assert await index.epoch() > grown


@pytest.mark.asyncio
async def test_cached_neighbour_lists_leave_nothing_for_the_garbage_collector_to_walk(
    services: Services, drain: Drain
) -> None:
    colours = ["red", "blue", "green", "grey", "black", "white", "pink", "navy", "teal", "gold"]
    kinds = ["wool", "silk", "knit"]
    await add(services, *(f"{colour} {kind} scarf" for colour in colours for kind in kinds))
    await drain()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(30):
        assert len(await services.vectors.neighbours(f"p{i}", 29) or []) == 29
    gc.collect()
    # 30 lists of 29 neighbours: as tracked tuples they were 870 more objects for every full
    # collection to walk (a full cache: a million, 80-160 ms per collection).
    assert len(gc.get_objects()) - before < 300


@pytest.mark.asyncio
async def test_a_vector_change_patches_the_cached_neighbour_lists_it_enters(
    services: Services,
    drain: Drain,
    redis: "aioredis.Redis",
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vectors = services.vectors
    vectors.settings = msgspec.structs.replace(vectors.settings, neighbour_cache_depth=2)
    await add(services, "Red wool scarf", "Blue wool scarf", "Green wool hat", "Steel garden spade",
              "Iron garden spade rake")  # fmt: skip
    await drain()
    queries: list[str] = []
    knn_ids = vectors.index.knn_ids

    async def counted(
        vector: Any, k: int, filters: Filters, index: str | None = None, **checked: Any
    ) -> Any:
        queries.append(filters.exclude[0])
        return await knn_ids(vector, k, filters, index, **checked)

    monkeypatch.setattr(vectors.index, "knn_ids", counted)
    spade = await vectors.neighbours("p3", 2)
    assert spade is not None
    before = await vectors.neighbours("p0", 2)
    assert before is not None
    await services.catalog.create(ProductCreate(id="new", name="Grey wool scarf"))
    await drain()
    # The premise: the new scarf enters the red scarf's two nearest, and is no spade's.
    assert await cosine(services, "new", "p0") > before[-1][1]
    assert await cosine(services, "new", "p3") < spade[-1][1]
    assert await vectors.neighbours("p3", 2) == spade
    patched = await vectors.neighbours("p0", 2)
    assert queries == ["p3", "p0"]  # both kept: the change patched one, no new query
    other_process = build_services(redis, Keyspace(settings.redis.namespace), settings).vectors
    fresh = await other_process.neighbours("p0", 2)
    assert patched is not None
    assert fresh is not None
    assert [product_id for product_id, _ in patched] == [product_id for product_id, _ in fresh]
    assert [score for _, score in patched] == pytest.approx([score for _, score in fresh], abs=1e-5)
    await services.catalog.delete("new")  # it leaves: the list's next nearest is unknown
    await drain()
    assert await vectors.neighbours("p0", 2) == before
    assert queries == ["p3", "p0", "p0"]


@pytest.mark.asyncio
async def test_a_gap_in_the_vector_change_log_clears_the_cached_neighbour_lists(
    services: Services, drain: Drain, redis: "aioredis.Redis", settings: Settings
) -> None:
    vectors = services.vectors
    vectors.settings = msgspec.structs.replace(vectors.settings, neighbour_cache_depth=2)
    await add(services, "Red wool scarf", "Blue wool scarf", "Green wool hat", "Steel spade")
    await drain()
    before = await vectors.neighbours("p0", 2)
    assert before is not None
    await services.catalog.update("p1", ProductUpdate(name="Blue wool tie"))
    await drain()
    await redis.xtrim(vectors.index.changes_key, maxlen=0)  # that change's entry is lost
    await services.catalog.create(ProductCreate(id="far", name="Iron garden rake"))
    await drain()
    # The premise: alone, the "far" change would leave the list kept.
    assert await cosine(services, "far", "p0") < before[-1][1]
    after = await vectors.neighbours("p0", 2)  # the next entry's epoch skips one: all cleared
    assert after != before
    fresh = build_services(redis, Keyspace(settings.redis.namespace), settings).vectors
    assert after == await fresh.neighbours("p0", 2)


@pytest.mark.asyncio
async def test_a_text_with_no_known_term_leaves_the_vector_index(
    services: Services, drain: Drain
) -> None:
    await add(services, "Red wool scarf", "Blue wool scarf", "Green wool scarf")
    await drain()
    await services.catalog.update("p2", ProductUpdate(name="Qqqq"))
    await drain()
    _, vector = await services.vectors.stored_vector("p2")
    assert vector is not None
    assert not np.any(vector)  # its old embedding went with the text that made it
    neighbours = await services.vectors.neighbours("p0", 10)
    assert neighbours is not None
    assert "p2" not in [product_id for product_id, _ in neighbours]


@pytest.mark.asyncio
async def test_a_stopped_service_starts_no_refit(services: Services, drain: Drain) -> None:
    await services.vectors.stop()  # as the app's shutdown does, before the last batch ends
    await add(services, "Red wool scarf")
    await drain()  # the first products would start a refit
    assert (await services.vectors.store.state()).live is None


def with_vectors(settings: Settings, **changed: Any) -> Settings:
    return msgspec.structs.replace(
        settings, vectors=msgspec.structs.replace(settings.vectors, **changed)
    )


async def blender(
    services: Services, redis: "aioredis.Redis", settings: Settings, ranked_by: str
) -> VectorService:
    """The vector service, ranking a blend by a KNN query ("index") or over its own copy of
    every live vector ("copy", loaded first)."""
    if ranked_by == "index":
        never = with_vectors(settings, live_vectors_max_products=0)
        return build_services(redis, Keyspace(settings.redis.namespace), never).vectors
    assert await services.vectors.every_vector() is not None
    return services.vectors


@pytest.mark.asyncio
@pytest.mark.parametrize("ranked_by", ["index", "copy"])
async def test_near_blend_sums_weighted_cosines_in_one_query(
    services: Services, drain: Drain, redis: "aioredis.Redis", settings: Settings, ranked_by: str
) -> None:
    await fitted(
        services, drain, "White ceramic coffee mug", "Blue ceramic coffee mug", "Brass desk lamp",
        "Brass floor lamp", "Ceramic teapot", "Wool hiking socks",
    )  # fmt: skip
    vectors_service = await blender(services, redis, settings, ranked_by)
    weights = [("p0", 0.75), ("p2", 0.25)]
    near = await vectors_service.near_blend(weights, 10)
    version, _ = await services.vectors.live_model()
    ids = [f"p{i}" for i in range(6)]
    matrix, _ = await services.vectors.index.vectors(version, ids)
    vectors = dict(zip(ids, matrix, strict=True))
    expected = {
        other: sum(
            weight * float(vectors[anchor] @ vectors[other])
            for anchor, weight in weights
            if anchor != other  # an anchor is not its own neighbour
        )
        for other in ids
    }
    assert {product_id for product_id, _ in near.hits} == set(ids)
    for product_id, score in near.hits:
        assert score == pytest.approx(expected[product_id], abs=1e-5)
    assert [score for _, score in near.hits] == sorted((s for _, s in near.hits), reverse=True)
    assert near.hits[0][0] == "p1"  # the other mug: the heavier anchor's neighbour
    # Each neighbour owes most to the anchor closest by weight x cosine, never to itself.
    assert await vectors_service.strongest_blended(near, ["p1", "p3", "p0", "p2"]) == {
        "p1": "p0", "p3": "p2", "p0": "p2", "p2": "p0",
    }  # fmt: skip


@pytest.mark.asyncio
async def test_strongest_blended_uses_vectors_as_current_as_the_index(
    services: Services, drain: Drain
) -> None:
    await fitted(
        services, drain, "White ceramic coffee mug", "Brass desk lamp", "Blue ceramic coffee mug",
        "Brass floor lamp",
    )  # fmt: skip
    near = await services.vectors.near_blend([("p0", 0.5), ("p1", 0.5)], 10)
    for product_id in ("p2", "p3"):  # their vectors are kept beside their neighbour lists
        await services.vectors.neighbours(product_id, 2)
    assert await services.vectors.strongest_blended(near, ["p2", "p3"]) == {"p2": "p0", "p3": "p1"}
    await services.catalog.update("p3", ProductUpdate(name="Green ceramic coffee mug"))
    await drain()
    assert await services.vectors.strongest_blended(near, ["p2", "p3"]) == {"p2": "p0", "p3": "p0"}


@pytest.mark.asyncio
async def test_near_blend_from_kept_vectors_moves_to_the_version_a_refit_made_live(
    services: Services, drain: Drain, redis: "aioredis.Redis", settings: Settings
) -> None:
    await fitted(
        services, drain, "White ceramic coffee mug", "Blue ceramic coffee mug", "Brass desk lamp"
    )
    # A process that has not yet seen the next swap: its lists and their vectors stay kept.
    # (Its copy of every vector, were it kept, would answer the old version until it did.)
    unaware = with_vectors(
        settings, neighbour_epoch_check_seconds=3600, live_vectors_max_products=0
    )
    other = build_services(redis, Keyspace(settings.redis.namespace), unaware).vectors
    weights = [("p0", 0.5), ("p2", 0.5)]
    for product_id, _ in weights:
        await other.neighbours(product_id, 2)
    before = await other.near_blend(weights, 10)
    await services.vectors.refit(reason="test")  # the first version's index is dropped
    after = await other.near_blend(weights, 10)
    live, _ = await services.vectors.live_model()
    assert (before.version, after.version) == (live - 1, live)
    assert after.hits == (await services.vectors.near_blend(weights, 10)).hits


def assert_same_hits(one: BlendNeighbours, other: BlendNeighbours) -> None:
    assert [pid for pid, _ in one.hits] == [pid for pid, _ in other.hits]
    assert [score for _, score in one.hits] == pytest.approx([s for _, s in other.hits], abs=1e-5)


@pytest.mark.asyncio
async def test_the_copy_of_every_vector_follows_writes_deletes_and_swaps(
    services: Services, drain: Drain, redis: "aioredis.Redis", settings: Settings
) -> None:
    await fitted(services, drain, "White ceramic coffee mug", "Brass desk lamp", "Ceramic teapot")
    copy = await services.vectors.every_vector()
    assert copy is not None
    assert len(copy) == 3
    index = await blender(services, redis, settings, "index")
    weights = [("p0", 1.0)]
    await services.catalog.create(ProductCreate(id="p3", name="Blue ceramic coffee mug"))
    await services.catalog.update("p2", ProductUpdate(name="Brass floor lamp"))
    await services.catalog.delete("p1")
    await drain()
    by_copy = blends_ranked_by("copy")
    near = await services.vectors.near_blend(weights, 10)
    assert blends_ranked_by("copy") == by_copy + 1
    assert await services.vectors.every_vector() is copy  # patched, not loaded again
    assert [product_id for product_id, _ in near.hits] == ["p3", "p2", "p0"]
    assert_same_hits(near, await index.near_blend(weights, 10))
    await services.vectors.refit(reason="test")
    near = await services.vectors.near_blend(weights, 10)  # the swap dropped the copy
    assert near.version == (await services.vectors.live_model())[0]
    swapped = await services.vectors.every_vector()
    assert swapped is not None
    assert swapped is not copy
    assert swapped.version == near.version
    again = await services.vectors.near_blend(weights, 10)
    assert again.version == near.version
    assert_same_hits(again, near)


@pytest.mark.asyncio
async def test_a_catalog_over_the_limit_is_ranked_by_the_index_alone(
    drain: Drain, redis: "aioredis.Redis", settings: Settings
) -> None:
    limited = build_services(
        redis, Keyspace(settings.redis.namespace),
        with_vectors(settings, live_vectors_max_products=2),
    )  # fmt: skip
    await fitted(limited, drain, "White ceramic coffee mug", "Brass desk lamp", "Ceramic teapot")
    assert await limited.vectors.every_vector() is None
    before, by_index = await knn_queries(redis), blends_ranked_by("index")
    near = await limited.vectors.near_blend([("p0", 1.0)], 10)
    assert await knn_queries(redis) == before + 1
    assert blends_ranked_by("index") == by_index + 1
    assert {product_id for product_id, _ in near.hits} == {"p0", "p1", "p2"}
    assert await limited.vectors.every_vector() is None


def blends_ranked_by(ranked_by: str) -> float:
    labels = {"ranked_by": ranked_by}
    return REGISTRY.get_sample_value("recommender_content_blends_total", labels) or 0.0


async def knn_queries(redis: "aioredis.Redis") -> int:
    """FT.SEARCH calls the server has run (the tests run one at a time)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_FT.SEARCH", {}).get("calls", 0))


@pytest.mark.asyncio
async def test_near_blend_of_nothing_known_is_empty(services: Services, drain: Drain) -> None:
    assert (await services.vectors.near_blend([("p0", 1.0)], 10)).hits == []  # no model yet
    await add(services, "Red wool scarf")
    await drain()
    near = await services.vectors.near_blend([("unknown", 1.0)], 10)
    assert near.hits == []
    assert await services.vectors.strongest_blended(near, ["p0"]) == {}


@pytest.mark.asyncio
async def test_requests_arriving_together_load_the_model_once(
    services: Services, drain: Drain, redis: "aioredis.Redis", settings: Settings
) -> None:
    await add(services, "Red wool scarf", "Blue wool scarf")
    await drain()
    version, _ = await services.vectors.live_model()
    # A process that has not loaded it yet, as after a start or a swap.
    fresh = build_services(redis, Keyspace(settings.redis.namespace), settings).vectors
    loads = 0
    load = fresh.store.load

    async def counted(wanted: int) -> bytes | None:
        nonlocal loads
        loads += 1
        return await load(wanted)

    fresh.store.load = counted  # type: ignore[method-assign]
    models = await asyncio.gather(*(fresh.model(version) for _ in range(8)))
    assert loads == 1
    assert all(model is models[0] for model in models)


@pytest.mark.asyncio
async def test_a_query_is_embedded_once_per_model_version(services: Services, drain: Drain) -> None:
    await add(services, "Red wool scarf", "Blue wool scarf")
    await drain()
    version, model = await services.vectors.live_model()
    first = services.vectors.query_vector(version, model, "wool scarf")
    assert np.array_equal(first, model.embed_query("wool scarf"))
    assert services.vectors.query_vector(version, model, "wool scarf") is first
    assert services.vectors.query_vector(version + 1, model, "wool scarf") is not first
