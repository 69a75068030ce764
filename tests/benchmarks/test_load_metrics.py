"""Tests for the load benchmark's reading of the service's /metrics (pure parsing)."""

from benchmarks.load.metrics import for_you_lists
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
