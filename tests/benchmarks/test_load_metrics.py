"""Tests for the load benchmark's readings of the service's /metrics and of Redis's INFO."""

import time
from collections.abc import Callable

import pytest
import redis
from benchmarks.load.metrics import content_blends, for_you_lists, redis_forks
from prometheus_client import CollectorRegistry, Counter, generate_latest


@pytest.mark.parametrize(
    ("read", "counter", "label", "values"),
    [
        (for_you_lists, "recommender_for_you_lists", "source", ("kept", "computed")),
        (content_blends, "recommender_content_blends", "ranked_by", ("copy", "index")),
    ],
)
def test_a_counter_is_read_by_label_between_two_scrapes(
    read: Callable[[str, str], dict[str, int]], counter: str, label: str, values: tuple[str, str]
) -> None:
    registry = CollectorRegistry()
    counted = Counter(counter, "doc", [label], registry=registry)
    other = Counter("recommender_other", "doc", [label], registry=registry)
    first, second = values
    counted.labels(first).inc(7)
    before = generate_latest(registry).decode()
    counted.labels(first).inc(5)
    counted.labels(second).inc(3)
    other.labels(first).inc(100)
    after = generate_latest(registry).decode()
    assert read(before, after) == {first: 5, second: 3}


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
