"""The neighbour cache's bookkeeping (pure logic): which vector changes drop which lists."""

from typing import Any

import numpy as np

from recommender.vectors.index import VectorChange
from recommender.vectors.model import DIMS
from recommender.vectors.neighbours import NeighbourCache, NeighbourList


def unit(*weights: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A unit vector with these weights on the first axes."""
    vector = np.zeros(DIMS, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


def change(product_id: str, old: Any = None, new: Any = None) -> VectorChange:
    return VectorChange(product_id, old, new)


def listed(*pairs: tuple[str, float], depth: int = 2) -> NeighbourList:
    return NeighbourList(depth, True, tuple(p for p, _ in pairs), tuple(s for _, s in pairs))


A, B, C = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
NEAR_A = unit(1, 0.2, 0)  # cosine 0.98 with A, 0.2 with B


def cache_of_a_and_b() -> NeighbourCache:
    """A's two nearest end at 0.9, B's at 0.5."""
    cache = NeighbourCache(100)
    cache.put("a", A, listed(("x", 0.95), ("y", 0.9)), cache.changes_applied)
    cache.put("b", B, listed(("z", 0.6), ("w", 0.5)), cache.changes_applied)
    return cache


def test_a_new_vector_drops_the_lists_it_would_enter_and_no_other() -> None:
    cache = cache_of_a_and_b()
    cache.apply([change("new", new=NEAR_A)])
    assert cache.get("a", 2) is None  # 0.98 beats A's last (0.9)
    assert cache.get("b", 2) is not None  # 0.2 does not beat B's (0.5)
    cache.apply([change("far", new=C)])
    assert cache.get("b", 2) is not None


def test_a_vector_that_leaves_a_list_drops_it() -> None:
    cache = cache_of_a_and_b()
    cache.apply([change("y", old=unit(1, 0.4, 0), new=C)])  # y was A's 2nd (0.93), now far
    assert cache.get("a", 2) is None
    assert cache.get("b", 2) is not None


def test_a_removed_vector_drops_the_lists_it_was_in() -> None:
    cache = cache_of_a_and_b()
    cache.apply([change("z", old=unit(0.1, 1, 0), new=None)])
    assert cache.get("b", 2) is None
    assert cache.get("a", 2) is not None


def test_a_products_own_change_drops_its_list() -> None:
    cache = cache_of_a_and_b()
    cache.apply([change("a", old=A, new=None)])
    assert cache.get("a", 2) is None
    assert cache.get("b", 2) is not None


def test_a_list_shorter_than_its_depth_is_dropped_by_any_new_vector() -> None:
    cache = NeighbourCache(100)
    cache.put("a", A, listed(("x", 0.95), depth=5), cache.changes_applied)  # all there is
    cache.apply([change("far", new=C)])
    assert cache.get("a", 5) is None


def test_a_list_computed_across_a_change_is_not_kept() -> None:
    cache = NeighbourCache(100)
    computed_at = cache.changes_applied
    cache.apply([change("far", new=C)])  # while the query ran
    cache.put("a", A, listed(("x", 0.95), ("y", 0.9)), computed_at)
    assert cache.get("a", 2) is None
    cache.put("a", A, listed(("x", 0.95), ("y", 0.9)), cache.changes_applied)
    assert cache.get("a", 2) is not None
    cache.clear()
    assert cache.get("a", 2) is None
    assert len(cache) == 0


def test_a_deeper_request_misses_and_the_least_recently_used_goes_first() -> None:
    cache = NeighbourCache(2)
    for product_id, vector in (("a", A), ("b", B)):
        cache.put(product_id, vector, listed(("x", 0.9), ("y", 0.8)), cache.changes_applied)
    assert cache.get("a", 3) is None
    assert cache.get("a", 2) is not None  # now b is the least recently used
    cache.put("c", C, listed(("x", 0.9), ("y", 0.8)), cache.changes_applied)
    assert (cache.get("a", 2) is not None, cache.get("b", 2), len(cache)) == (True, None, 2)
    cache.apply([change("new", new=unit(0, 0.1, 1))])  # c's freed slot went to nothing else
    assert cache.get("c", 2) is None
    assert cache.get("a", 2) is not None
