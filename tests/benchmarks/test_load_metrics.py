"""Tests for the load benchmark's readings of the service's /metrics and of Redis's INFO."""

import time

import redis
from benchmarks.load.metrics import for_you_lists, redis_forks
from prometheus_client import CollectorRegistry, Counter, generate_latest


def test_for_you_lists_counts_each_source_between_two_scrapes() -> None:
    registry = CollectorRegistry()
    lists = Counter("recommender_for_you_lists", "doc", ["source"], registry=registry)
    other = Counter("recommender_other", "doc", ["source"], registry=registry)
    lists.labels(source="kept").inc(7)
    before = generate_latest(registry).decode()
    lists.labels(source="kept").inc(5)
    lists.labels(source="computed").inc(3)
    other.labels(source="kept").inc(100)
    after = generate_latest(registry).decode()
    assert for_you_lists(before, after) == {"kept": 5, "computed": 3}


def test_for_you_lists_is_empty_before_any_list() -> None:
    empty = generate_latest(CollectorRegistry()).decode()
    assert for_you_lists(empty, empty) == {}


def test_redis_forks_counts_a_child_from_its_start(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        before, _ = redis_forks(client)
        client.bgrewriteaof()
        after, _ = redis_forks(client)
        assert after == before + 1
        deadline = time.monotonic() + 30
        while redis_forks(client)[1]:  # leave no child behind for the next test
            assert time.monotonic() < deadline, "the AOF rewrite did not end in 30 s"
            time.sleep(0.05)
    finally:
        client.close()
