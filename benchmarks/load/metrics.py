"""Figures read from the service's own Prometheus text (`GET /metrics`) and from Redis's INFO.

Stream progress: `recommender_stream_lag` and `recommender_stream_pending` (gauges, refreshed by
each consumer every `streams.trim_interval_seconds`) and `recommender_stream_processed_total`
(a live counter). "For you" lists kept or computed: `recommender_for_you_lists_total`; their
content side ranked by the process's copy of every vector or by the index:
`recommender_content_blends_total`.
Server-side latency per route: the difference of two scrapes of
`recommender_request_duration_seconds` (Litestar's histogram, labelled by route template), with
quantiles interpolated linearly inside a bucket, so they are only as fine as the buckets. A
server's workers sum their figures only when they share a PROMETHEUS_MULTIPROC_DIR, as `serve`
sets up; other servers' workers keep one registry each, so the figures from /metrics come from
`serve` only. Redis's work per request: the difference of two `INFO commandstats` (calls and
microseconds per command) over the requests answered; it includes what the stream consumers did
meanwhile. The stream backlog comes from XINFO GROUPS; the children Redis forked (AOF rewrites)
from INFO's total_forks.
"""

import math
from collections import defaultdict
from typing import Any

import msgspec
import redis
from prometheus_client.parser import text_string_to_metric_families

DURATION_BUCKETS = "recommender_request_duration_seconds_bucket"
STREAM_SAMPLES = {
    "recommender_stream_lag": "lag",
    "recommender_stream_pending": "pending",
    "recommender_stream_processed_total": "processed",
}

FOR_YOU_LISTS = "recommender_for_you_lists_total"
CONTENT_BLENDS = "recommender_content_blends_total"

Histograms = dict[str, dict[float, float]]  # route -> upper bound -> cumulative count


def stream_metrics(text: str) -> dict[str, dict[str, float]]:
    """{lag|pending|processed: {stream key without namespace: value}}, summed over groups."""
    found: dict[str, dict[str, float]] = {name: {} for name in STREAM_SAMPLES.values()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in STREAM_SAMPLES:
                stream = sample.labels["stream"].split(":", 1)[-1]  # drop the namespace
                by_stream = found[STREAM_SAMPLES[sample.name]]
                by_stream[stream] = by_stream.get(stream, 0.0) + sample.value
    return found


def for_you_lists(before: str, after: str) -> dict[str, int]:
    """ "For you" lists answered between two scrapes, by source (kept, computed)."""
    return _counted(before, after, FOR_YOU_LISTS, "source")


def content_blends(before: str, after: str) -> dict[str, int]:
    """Blends of "for you" ranked between two scrapes, by what ranked them (copy, index)."""
    return _counted(before, after, CONTENT_BLENDS, "ranked_by")


def _counted(before: str, after: str, counter: str, label: str) -> dict[str, int]:
    earlier = _totals(before, counter, label)
    return {value: int(total - earlier.get(value, 0.0))
            for value, total in _totals(after, counter, label).items()}  # fmt: skip


def _totals(text: str, counter: str, label: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == counter:
                value = sample.labels[label]
                found[value] = found.get(value, 0.0) + sample.value
    return found


def route_histograms(text: str) -> Histograms:
    """Cumulative request-duration buckets per `METHOD route`, summed over status codes."""
    routes: Histograms = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == DURATION_BUCKETS:
                route = f"{sample.labels['method']} {sample.labels['path']}"
                routes[route][float(sample.labels["le"])] += sample.value
    return {route: dict(buckets) for route, buckets in routes.items()}


class RouteLatency(msgspec.Struct, kw_only=True):
    route: str
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a cumulative histogram, linear inside the bucket it falls in."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def route_latencies(before: Histograms, after: Histograms) -> list[RouteLatency]:
    """Per route, the requests and latency quantiles observed between two scrapes."""
    latencies = []
    for route, buckets in sorted(after.items()):
        earlier = before.get(route, {})
        delta = sorted((bound, count - earlier.get(bound, 0.0)) for bound, count in buckets.items())
        total = delta[-1][1] if delta else 0.0
        if total <= 0:
            continue
        latencies.append(
            RouteLatency(
                route=route,
                requests=int(total),
                p50_ms=round(_quantile(delta, 0.50) * 1000, 1),
                p95_ms=round(_quantile(delta, 0.95) * 1000, 1),
                p99_ms=round(_quantile(delta, 0.99) * 1000, 1),
            )
        )
    return latencies


CommandStats = dict[str, tuple[int, int]]  # command -> (calls, microseconds executing)


def redis_commands(client: "redis.Redis") -> CommandStats:
    """Calls and execution time per command since Redis started (INFO commandstats)."""
    info: dict[str, dict[str, int]] = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(stats["calls"]), int(stats["usec"]))
        for name, stats in info.items()
    }


class RedisWork(msgspec.Struct, kw_only=True):
    """What Redis executed per HTTP request during a run (INFO commandstats differences)."""

    commands_per_request: float
    usec_per_request: float  # time executing commands; Redis's own I/O and parsing are apart
    top: dict[str, float]  # the most frequent commands, calls per request


def redis_work(before: CommandStats, after: CommandStats, requests: int) -> RedisWork:
    ours = {"info"}  # the INFO calls that take these figures
    calls = {
        name: count - before.get(name, (0, 0))[0]
        for name, (count, _) in after.items()
        if name not in ours
    }
    usec = sum(
        spent - before.get(name, (0, 0))[1]
        for name, (_, spent) in after.items()
        if name not in ours
    )
    per = max(requests, 1)
    top = sorted(((n, c) for n, c in calls.items() if c), key=lambda item: -item[1])[:5]
    return RedisWork(
        commands_per_request=round(sum(calls.values()) / per, 1),
        usec_per_request=round(usec / per, 1),
        top={name: round(count / per, 2) for name, count in top},
    )


def redis_forks(client: "redis.Redis") -> tuple[int, bool]:
    """The children Redis has forked since it started (AOF rewrites, snapshots), and whether
    one is running now. A child takes most of a core for a second or more, which the CPU
    figures count as 'other' (it is not the Redis process)."""
    info = client.info("stats", "persistence")
    running = bool(info["aof_rewrite_in_progress"] or info["rdb_bgsave_in_progress"])
    return int(info["total_forks"]), running


def stream_backlog(client: "redis.Redis", streams: list[str]) -> int:
    """Entries of these streams that some consumer group has not read or not acknowledged."""
    backlog = 0
    for stream in streams:
        groups: Any = client.xinfo_groups(stream)
        for group in groups:
            lag = group.get("lag")
            # Redis cannot always count the lag (after deletions): count it as one entry.
            backlog += (1 if lag is None else int(lag)) + int(group["pending"])
    return backlog
