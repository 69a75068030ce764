"""Prometheus metrics owned by the platform; HTTP metrics come from Litestar's PrometheusConfig.

With several server workers, `serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory, so
/metrics (whichever worker answers) sums the counters of all of them; a gauge every process
measures alike reports the most recent value.
"""

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.status_codes import HTTP_200_OK, HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

# A finished request's series for one route and status: its count, its duration and, for a
# 5xx, its error count.
_Finished = tuple[Counter, Histogram, Counter | None]


class RouteMetricsMiddleware(PrometheusMiddleware):
    """Litestar's HTTP metrics (same names and labels, by route template), recorded leaner.

    Litestar's own builds a typed Request and the whole URL for every request and then labels
    by the template: measured at 15% of a cached /similar request. Each series' labelled child
    is looked up once per route and status, not on every request. A request that raises is
    counted as the 500 it becomes, not as a 200. Extra labels and exemplars are not supported.
    """

    def __init__(self, app: ASGIApp, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self._in_progress: dict[tuple[str, str], Gauge] = {}
        self._finished: dict[tuple[str, str, int], _Finished] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"] if scope["type"] == ScopeType.HTTP else scope["type"]
        route = (method, scope["path_template"])
        started = time.perf_counter()
        status = HTTP_500_INTERNAL_SERVER_ERROR

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = self._in_progress.get(route) or self._in_progress_child(route)
        in_progress.inc()
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            in_progress.dec()
            count, duration, errors = self._finished.get(
                (*route, status)
            ) or self._finished_children(route, status)
            if errors is not None:
                errors.inc()
            count.inc()
            duration.observe(time.perf_counter() - started)

    def _labels(self, route: tuple[str, str], status: int) -> dict[str, Any]:
        method, path = route
        return {
            "method": method,
            "path": path,
            "status_code": status,
            "app_name": self._config.app_name,
        }

    def _in_progress_child(self, route: tuple[str, str]) -> Gauge:
        # Litestar labels requests in progress as 200s: the status is not known yet.
        labels = self._labels(route, HTTP_200_OK)
        child = self.requests_in_progress(labels).labels(*labels.values())
        self._in_progress[route] = child
        return child

    def _finished_children(self, route: tuple[str, str], status: int) -> _Finished:
        labels = self._labels(route, status)
        values = [*labels.values()]
        errors = (
            self.requests_error_count(labels).labels(*values)
            if status >= HTTP_500_INTERNAL_SERVER_ERROR
            else None
        )
        children = (
            self.request_count(labels).labels(*values),
            self.request_time(labels).labels(*values),
            errors,
        )
        self._finished[(*route, status)] = children
        return children


STREAM_LAG = Gauge(
    "recommender_stream_lag",
    "Entries in the stream not yet delivered to the consumer group.",
    ["stream", "group"],
    multiprocess_mode="mostrecent",
)
STREAM_PENDING = Gauge(
    "recommender_stream_pending",
    "Entries delivered to the consumer group and not yet acknowledged.",
    ["stream", "group"],
    multiprocess_mode="mostrecent",
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
