"""The application factory: routes, lifespan (Redis, stream consumers), errors, OpenAPI, metrics."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import structlog
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from recommender import __version__
from recommender.config import Settings, load_settings
from recommender.platform.embedded import EmbeddedRedis
from recommender.platform.errors import EXCEPTION_HANDLERS
from recommender.platform.health import HealthController
from recommender.platform.logging import RequestContextMiddleware, configure_logging
from recommender.platform.redis import Keyspace, create_client, require_search_module
from recommender.platform.streams import StreamRunner

log = structlog.get_logger()


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


def provide_redis(state: State) -> "aioredis.Redis":
    client: aioredis.Redis = state.redis
    return client


def provide_keyspace(state: State) -> Keyspace:
    keyspace: Keyspace = state.keyspace
    return keyspace


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Own the long-lived resources: the (embedded) Redis, the client pool, the consumers."""
    settings: Settings = app.state.settings
    embedded = None
    url = settings.redis.url
    if not url:
        embedded = await asyncio.to_thread(EmbeddedRedis(settings.redis.embedded).start)
        url = embedded.url
    client = create_client(settings.redis, url)
    runners: list[StreamRunner] = app.state.runners
    try:
        await require_search_module(client, where=url)
        app.state.redis = client
        if settings.streams.consumers_enabled:
            for runner in runners:
                runner.start()
        yield
    finally:
        for runner in runners:
            await runner.stop()
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.close)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    configure_logging(settings.logging)
    return Litestar(
        route_handlers=[HealthController, MetricsController],
        dependencies={
            "redis": Provide(provide_redis, sync_to_thread=False),
            "keyspace": Provide(provide_keyspace, sync_to_thread=False),
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
        middleware=[
            RequestContextMiddleware(access_log_enabled=settings.logging.access_log),
            PrometheusConfig(
                app_name="recommender", prefix="recommender", group_path=True
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
