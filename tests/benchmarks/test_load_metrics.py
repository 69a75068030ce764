"""Tests for the load benchmark's readings of the service's /metrics and of Redis's INFO."""

import time

import redis
from benchmarks.load.metrics import for_you_lists, redis_forks
from prometheus_client import CollectorRegistry, Counter, generate_latest


def test_for_you_lists_reads_each_source_from_the_exposition_text() -> None:
    registry = CollectorRegistry()
    lists = Counter("recommender_for_you_lists", "doc", ["source"], registry=registry)
    lists.labels(source="kept").inc(7)
    lists.labels(source="computed").inc(3)
    Counter("recommender_other", "doc", ["source"], registry=registry).labels("kept").inc(100)
    assert for_you_lists(generate_latest(registry).decode()) == {"kept": 7.0, "computed": 3.0}


def test_for_you_lists_is_empty_before_any_list() -> None:
    assert for_you_lists(generate_latest(CollectorRegistry()).decode()) == {}


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
