"""The bounded in-process cache (pure logic)."""

from recommender.platform.cache import RecentCache


def test_forgets_the_least_recently_used_first() -> None:
    cache: RecentCache[str, int] = RecentCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the more recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache: RecentCache[str, int] = RecentCache(max_entries=0)
    cache.put("a", 1)
    assert cache.get("a") is None
