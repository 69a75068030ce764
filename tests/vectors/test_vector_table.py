"""Each process's copy of every live vector (pure logic): changes, exact ranking, its loading."""

import asyncio
from typing import Any

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from recommender.vectors import table as table_module
from recommender.vectors.index import VectorChange
from recommender.vectors.model import DIMS
from recommender.vectors.table import LiveVectors, VectorTable

Vector = np.ndarray[Any, np.dtype[np.float32]]


def unit(*weights: float) -> Vector:
    """A unit vector with these weights on the first axes."""
    vector = np.zeros(DIMS, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


A, B, C = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)


def of(**vectors: Vector) -> VectorTable:
    return VectorTable(7, list(vectors), np.stack(list(vectors.values())))


def ranked(found: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(product_id, round(score, 4)) for product_id, score in found]


def test_nearest_ranks_every_vector_by_cosine_exactly() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((500, DIMS)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = [f"p{i}" for i in range(500)]
    query = unit(*rng.standard_normal(DIMS))
    cosines = matrix @ query
    expected = [(ids[row], float(cosines[row])) for row in np.argsort(-cosines)[:40]]
    found = VectorTable(7, ids, matrix).nearest(query, 40)
    assert [product_id for product_id, _ in found] == [product_id for product_id, _ in expected]
    assert [score for _, score in found] == pytest.approx([s for _, s in expected], abs=1e-6)


def test_changes_add_move_and_remove_vectors() -> None:
    table = of(a=A, b=B)
    table.apply([
        VectorChange("c", None, C),  # new
        VectorChange("a", A, unit(0, 1, 1)),  # moved
        VectorChange("b", B, None),  # gone: no vector now
    ])  # fmt: skip
    assert len(table) == 2
    assert ranked(table.nearest(C, 5)) == [("c", 1.0), ("a", 0.7071)]
    none = np.zeros(DIMS)
    assert np.array_equal(table.rows(["b", "c", "nothing"]), np.stack([none, C, none]))


def test_a_removed_products_row_is_never_ranked_and_is_reused() -> None:
    table = of(a=A, b=B)
    table.apply([VectorChange("a", A, None)])
    # Its row holds zeros now, which rank above a negative cosine unless left out.
    assert ranked(table.nearest(-B, 5)) == [("b", -1.0)]
    table.apply([VectorChange("c", None, C)])
    assert ranked(table.nearest(C, 5)) == [("c", 1.0), ("b", 0.0)]
    assert len(table._ids) == 2  # the freed row, not a new one


def test_the_table_grows_past_what_it_was_loaded_with() -> None:
    table = VectorTable(7, [], np.zeros((0, DIMS), dtype=np.float32))
    assert table.nearest(A, 3) == []
    table.apply([VectorChange(f"p{i}", None, unit(1, i)) for i in range(20)])
    assert len(table) == 20
    assert [product_id for product_id, _ in table.nearest(A, 3)] == ["p0", "p1", "p2"]
    assert np.allclose(table.rows(["p19"])[0], unit(1, 19))


class Loads:
    """A loader the test releases: each call waits for `release` and answers `answer`."""

    def __init__(self, answer: VectorTable | Exception | None) -> None:
        self.answer = answer
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> VectorTable | None:
        self.calls += 1
        await self.release.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.asyncio
async def test_the_copy_loads_in_the_background_and_takes_the_changes_made_meanwhile() -> None:
    loads = Loads(of(a=A, b=B))
    live = LiveVectors(loads)
    assert live.current() is None  # the caller queries the index while it loads
    assert live.current() is None
    live.apply([VectorChange("b", B, C)])  # the load may have read b before this change
    loads.release.set()
    table = await live.loaded()
    assert loads.calls == 1
    assert table is not None
    assert live.current() is table
    assert ranked(table.nearest(C, 1)) == [("b", 1.0)]
    live.apply([VectorChange("a", A, None)])
    assert len(table) == 1


@pytest.mark.asyncio
async def test_a_swap_or_gap_during_a_load_discards_it_and_the_next_caller_loads_again() -> None:
    loads = Loads(of(a=A))
    live = LiveVectors(loads)
    live.current()
    await asyncio.sleep(0)  # the load is reading
    live.clear()
    loads.release.set()
    await asyncio.sleep(0)
    assert live.current() is None  # a new load, of what is live now
    await asyncio.sleep(0)
    assert loads.calls == 2
    assert await live.loaded() is not None
    live.clear()
    assert live.current() is None


@pytest.mark.asyncio
async def test_a_load_that_fails_or_finds_nothing_to_hold_is_tried_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for answer in (RedisConnectionError("gone"), None):
        loads = Loads(answer)
        loads.release.set()
        live = LiveVectors(loads)
        assert await live.loaded() is None
        assert live.current() is None
        assert loads.calls == 1  # not before RETRY_SECONDS
        monkeypatch.setattr(table_module, "RETRY_SECONDS", 0.0)
        assert live.current() is None
        assert loads.calls == 1  # the wait set by the failed load still runs
        live.clear()  # a swap: what is live changed, so it loads at once
        await live.loaded()
        assert loads.calls == 2
        monkeypatch.undo()


@pytest.mark.asyncio
async def test_stopping_cancels_a_load_in_flight() -> None:
    loads = Loads(of(a=A))
    live = LiveVectors(loads)
    live.current()
    await asyncio.sleep(0)
    await live.stop()
    assert live._loading is None
