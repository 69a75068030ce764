"""The application factory: routes, lifespan (Redis, stream consumers), errors, OpenAPI, metrics."""

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import structlog
import threadpoolctl
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from recommender import __version__
from recommender.catalog import ProductController
from recommender.config import Settings, load_settings
from recommender.platform.dead_letters import DeadLetterController
from recommender.platform.embedded import EmbeddedRedis
from recommender.platform.errors import EXCEPTION_HANDLERS, StartupError
from recommender.platform.health import HealthController
from recommender.platform.logging import RequestContextMiddleware, configure_logging
from recommender.platform.metrics import RouteMetricsMiddleware
from recommender.platform.processes import die_with_parent
from recommender.platform.redis import Keyspace, create_client, require_search_module
from recommender.platform.security import PUBLIC, RateLimitMiddleware, require_api_key
from recommender.platform.streams import StreamRunner
from recommender.recommending import RecommendController
from recommender.services import build_services
from recommender.tracking import EventController
from recommender.vectors import ModelController

log = structlog.get_logger()

# Set by `serve` for its worker processes: the pid they must not outlive.
SUPERVISOR_VARIABLE = "_RECOMMENDER_SUPERVISOR_PID"
# The cyclic GC's thresholds while serving: the youngest generation is collected after this many
# net allocations (default 700), each older one after this many collections of the one below.
_GC_THRESHOLDS = (20_000, 50, 100)


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False
    opt = {"access": PUBLIC}  # noqa: RUF012 - scrapers carry no key


def _from_state(name: str) -> Provide:
    """Inject a long-lived object the lifespan put in the app state."""

    def provide(state: State) -> Any:
        return state[name]

    return Provide(provide, sync_to_thread=False)


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Own the long-lived resources: the (embedded) Redis, the client pool, the consumers."""
    settings: Settings = app.state.settings
    _die_with_supervisor()
    embedded = None
    url = settings.redis.url
    if not url:
        embedded = await asyncio.to_thread(EmbeddedRedis(settings.redis.embedded).start)
        embedded.supervise()
        url = embedded.url
    client = create_client(settings.redis, url)
    # Readiness says how Redis is now: its probe does not wait out the reconnects a request makes.
    probe = create_client(msgspec.structs.replace(settings.redis, retries=0), url)
    runners: list[StreamRunner] = app.state.runners
    background: list[asyncio.Task[None]] = []
    # One event loop per core: a second BLAS thread would only spin after each matrix product
    # (OpenBLAS busy-waits), taking the core from the other worker and Redis.
    blas = threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    try:
        await require_search_module(client, where=url)
        services = build_services(client, app.state.keyspace, settings)
        app.state.update(
            redis=client,
            redis_probe=probe,
            catalog=services.catalog,
            vectors=services.vectors,
            tracking=services.tracking,
            recommend=services.recommend,
        )
        if settings.streams.consumers_enabled:
            runners.extend(services.runners)  # readiness watches the consumers this process runs
            for runner in runners:
                runner.start()
            background.append(
                asyncio.create_task(
                    app.state.vectors.refit_when_due(settings.vectors.refit_check_seconds),
                    name="refit-when-due",
                )
            )
        # What start-up built lives as long as the process: full collections stop walking it
        # (170k objects, 80-160 ms per collection on this machine, the requests' p99).
        gc.freeze()
        # Requests allocate thousands of container objects and free them themselves: at the
        # default threshold a worker at 500 req/s collected 11 times a second (and paused
        # 25-55 ms in a full collection every 20 s), walking whatever requests were in flight.
        # Now about once in 10 s: 1-10% less CPU per request and a lower p99 on every read.
        gc.set_threshold(*_GC_THRESHOLDS)
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in runners:
            await runner.stop()
        if "vectors" in app.state:
            await app.state.vectors.stop()
        await client.aclose()
        await probe.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.close)
        blas.restore_original_limits()


def _die_with_supervisor() -> None:
    """A worker of `serve` never outlives it: a SIGKILLed supervisor would leave it serving.

    It dies as abruptly as its supervisor did, as one process would (a SIGTERM to the
    supervisor reaches the workers through uvicorn and drains them as usual).
    """
    supervisor = os.environ.get(SUPERVISOR_VARIABLE)
    if supervisor is None:
        return
    if int(supervisor) != os.getppid():
        raise StartupError("the serve process that started this worker has gone")
    die_with_parent(signal.SIGKILL)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    configure_logging(settings.logging)
    return Litestar(
        route_handlers=[
            HealthController,
            MetricsController,
            ProductController,
            EventController,
            RecommendController,
            ModelController,
            DeadLetterController,
        ],
        dependencies={
            name: _from_state(name)
            for name in ("redis", "redis_probe", "catalog", "vectors", "tracking", "recommend")
        },
        state=State(
            {
                "settings": settings,
                "keyspace": Keyspace(settings.redis.namespace),
                "runners": [],
            }
        ),
        lifespan=[lifespan],
        logging_config=None,  # configure_logging owns the logging setup
        # Without keys every route is open: Litestar copies the route handler for each guard
        # call, 3% of the service's CPU under the benchmark's mix for a guard that passes.
        guards=[require_api_key] if settings.security.api_key_hashes else [],
        request_max_body_size=settings.security.max_body_bytes,
        middleware=[
            RequestContextMiddleware(access_log_enabled=settings.logging.access_log),
            # Only when limits are configured: each layer costs every request some CPU.
            *(
                [RateLimitMiddleware(settings.security)]
                if settings.security.rate_limit_requests
                else []
            ),
            PrometheusConfig(
                app_name="recommender",
                prefix="recommender",
                group_path=True,
                middleware_class=RouteMetricsMiddleware,
            ).middleware,
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="Recommender",
            version=__version__,
            description="Real-time recommendations for online shops.",
            path="/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
    )
