"""Prometheus metrics owned by the platform; HTTP metrics come from Litestar's PrometheusConfig."""

from prometheus_client import Counter, Gauge

STREAM_LAG = Gauge(
    "recommender_stream_lag",
    "Entries in the stream not yet delivered to the consumer group.",
    ["stream", "group"],
)
STREAM_PENDING = Gauge(
    "recommender_stream_pending",
    "Entries delivered to the consumer group and not yet acknowledged.",
    ["stream", "group"],
)
STREAM_PROCESSED = Counter(
    "recommender_stream_processed",
    "Entries handled successfully and acknowledged.",
    ["stream", "group"],
)
STREAM_FAILED = Counter(
    "recommender_stream_failed",
    "Handler failures (each one leaves the entry pending for a retry).",
    ["stream", "group"],
)
STREAM_DEAD_LETTERED = Counter(
    "recommender_stream_dead_lettered",
    "Entries moved to the dead-letter stream after too many deliveries.",
    ["stream", "group"],
)
REDIS_ERRORS = Counter(
    "recommender_redis_errors",
    "Redis commands that failed (connection lost, timeout, server error).",
    ["source"],
)
