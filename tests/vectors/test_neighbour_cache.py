"""The neighbour cache's bookkeeping (pure logic): which vector changes patch or drop which list."""

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
    ids, scores = tuple(p for p, _ in pairs), tuple(s for _, s in pairs)
    return NeighbourList(VERSION, depth, True, ids, scores)


VERSION = 3
A, B, C = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
NEAR_A = unit(1, 0.2, 0)  # cosine 0.98 with A, 0.2 with B


def cache_of_a_and_b() -> NeighbourCache:
    """A's two nearest end at 0.9, B's at 0.5."""
    cache = NeighbourCache(100)
    cache.put("a", A, listed(("x", 0.95), ("y", 0.9)), cache.changes_applied)
    cache.put("b", B, listed(("z", 0.6), ("w", 0.5)), cache.changes_applied)
    return cache


def ids_and_scores(cache: NeighbourCache, product_id: str, depth: int) -> list[tuple[str, float]]:
    found = cache.get(product_id, depth)
    assert found is not None
    return [(other, round(score, 4)) for other, score in zip(found.ids, found.scores, strict=True)]


def test_a_new_vector_enters_the_lists_it_belongs_in_and_no_other() -> None:
    cache = cache_of_a_and_b()
    cache.apply([change("new", new=NEAR_A)])
    # 0.98 beats A's last (0.9), which falls off; 0.2 does not beat B's (0.5).
    assert ids_and_scores(cache, "a", 2) == [("new", 0.9806), ("x", 0.95)]
    assert ids_and_scores(cache, "b", 2) == [("z", 0.6), ("w", 0.5)]
    cache.apply([change("far", new=C)])
    assert ids_and_scores(cache, "b", 2) == [("z", 0.6), ("w", 0.5)]
    # A's last is now 0.95: a vector between 0.9 and 0.95 no longer enters.
    cache.apply([change("nearish", new=unit(1, 0.4, 0))])  # 0.928 with A
    assert ids_and_scores(cache, "a", 2) == [("new", 0.9806), ("x", 0.95)]


def test_a_vector_that_moves_within_a_list_takes_its_new_place() -> None:
    cache = cache_of_a_and_b()
    cache.apply([change("y", old=unit(1, 0.48, 0), new=NEAR_A)])  # y: 0.9 -> 0.98
    assert ids_and_scores(cache, "a", 2) == [("y", 0.9806), ("x", 0.95)]


def test_a_vector_within_float_noise_of_a_lists_last_score_drops_it() -> None:
    cache = NeighbourCache(100)
    edge = unit(1, 0.5, 0)  # cosine 0.894 with A
    last = float(edge @ A)
    cache.put("a", A, listed(("x", 0.95), ("y", last)), cache.changes_applied)
    cache.apply([change("twin", new=edge)])  # ties y: which of them the index keeps is noise
    assert cache.get("a", 2) is None


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


def test_a_list_shorter_than_its_depth_takes_any_new_vector_and_loses_a_removed_one() -> None:
    cache = NeighbourCache(100)
    cache.put("a", A, listed(("x", 0.95), depth=5), cache.changes_applied)  # all there is
    cache.apply([change("far", new=C)])
    assert ids_and_scores(cache, "a", 5) == [("x", 0.95), ("far", 0.0)]
    cache.apply([change("x", old=NEAR_A, new=None)])
    assert ids_and_scores(cache, "a", 5) == [("far", 0.0)]


def test_a_list_without_a_vector_is_reached_only_by_its_own_change() -> None:
    cache = NeighbourCache(100)
    cache.put("zero", np.zeros(DIMS, dtype=np.float32), listed(depth=5), cache.changes_applied)
    cache.put("unindexed", None, NeighbourList(VERSION, 5, False, (), ()), cache.changes_applied)
    cache.apply([change("new", new=A)])
    assert ids_and_scores(cache, "zero", 5) == []  # nothing is similar to a text of no terms
    assert cache.get("unindexed", 5) is not None
    cache.apply([change("unindexed", new=B)])
    assert cache.get("unindexed", 5) is None


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
    cache.apply([change("new", new=unit(0, 0.1, 1))])  # b's freed slot now holds c's vector
    assert ids_and_scores(cache, "c", 2) == [("new", 0.995), ("x", 0.9)]
    assert ids_and_scores(cache, "a", 2) == [("x", 0.9), ("y", 0.8)]


def test_the_vectors_kept_beside_the_lists_are_those_of_the_lists_version_and_current() -> None:
    cache = cache_of_a_and_b()
    cache.put("zero", np.zeros(DIMS, dtype=np.float32), listed(depth=5), cache.changes_applied)
    matrix, missing = cache.vectors(VERSION, ["b", "unknown", "a", "zero"])
    assert missing == [1]
    assert np.array_equal(matrix[[0, 2]], np.stack([B, A]))
    assert not matrix[[1, 3]].any()  # one to read, and one that embeds as nothing
    assert cache.vectors(VERSION + 1, ["a", "b"])[1] == [0, 1]  # another version's index
    cache.apply([change("a", old=A, new=NEAR_A)])  # its own list and vector go with the change
    assert cache.vectors(VERSION, ["a", "b"])[1] == [0]
