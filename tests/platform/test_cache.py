"""The bounded in-process caches (pure logic)."""

import pytest

from recommender.platform.cache import PeriodicCache, RecentCache


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


@pytest.mark.asyncio
async def test_a_periodic_cache_reads_each_key_once_per_period() -> None:
    reads: list[str] = []
    now = [0.0]

    async def read(key: str) -> str:
        reads.append(key)
        return f"value of {key}"

    cache: PeriodicCache[str, str] = PeriodicCache(read, 10.0, 2, clock=lambda: now[0])
    assert await cache.get("a") == "value of a"
    now[0] = 9.9
    await cache.get("a")
    assert reads == ["a"]  # still fresh
    now[0] = 10.0
    await cache.get("a")
    assert reads == ["a", "a"]  # read again once the period is over
    await cache.get("b")
    await cache.get("a")  # "a" was used last, so a third key pushes "b" out
    await cache.get("c")
    await cache.get("a")
    await cache.get("b")
    assert reads == ["a", "a", "b", "c", "b"]
