"""One embedded Redis + RediSearch for the whole run; every test gets its own key namespace."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from recommender.app import create_app
from recommender.cli import main
from recommender.config import (
    CatalogSettings,
    EmbeddedRedisSettings,
    LoggingSettings,
    RedisSettings,
    Settings,
    StreamSettings,
    VectorSettings,
)
from recommender.platform.embedded import EmbeddedRedis
from recommender.platform.redis import Keyspace
from recommender.services import Services, build_services


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("redis")
    with EmbeddedRedis(EmbeddedRedisSettings(data_dir=str(data_dir))) as server:
        yield server.url


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def settings(redis_url: str, namespace: str) -> Settings:
    """Fast stream timings; consumers off so a test drives them, or turns them on itself."""
    return Settings(
        redis=RedisSettings(url=redis_url, namespace=namespace),
        streams=StreamSettings(
            consumers_enabled=False,
            block_ms=50,
            linger_ms=0,  # a drain takes what is there (test_streams lingers on purpose)
            claim_idle_ms=200,
            retry_delay_ms=50,
            max_deliveries=3,
            trim_interval_seconds=3600,
        ),
        logging=LoggingSettings(format="json", access_log=False),
        # A drained write shows at once: no process may go on trusting its cached neighbours...
        vectors=VectorSettings(neighbour_epoch_check_seconds=0),
        catalog=CatalogSettings(change_check_seconds=0),  # ...or products
    )


@pytest_asyncio.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator["aioredis.Redis"]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await _drop_namespace(client, Keyspace(namespace))
    await client.aclose()


@pytest_asyncio.fixture
async def client(settings: Settings, redis: "aioredis.Redis") -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def services(redis: "aioredis.Redis", settings: Settings) -> Services:
    """The domain services on the test's namespace; consumers are driven with `drain`."""
    return build_services(redis, Keyspace(settings.redis.namespace), settings)


Drain = Callable[[], Awaitable[int]]


@pytest.fixture
def drain(services: Services) -> Drain:
    """Run every consumer until none has anything left to handle; how many entries it took."""

    async def run() -> int:
        total = 0
        for runner in services.runners:
            await runner.ensure_group()
            while handled := await runner.step():
                total += handled
            await services.vectors.settle()  # the first products start a refit beside it
        return total

    return run


async def _drop_namespace(client: "aioredis.Redis", keyspace: Keyspace) -> None:
    for index in await client.execute_command("FT._LIST"):
        if index.decode().startswith(keyspace.prefix):
            await client.execute_command("FT.DROPINDEX", index)
    async for key in client.scan_iter(match=keyspace.pattern(), count=1000):
        await client.delete(key)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, namespace: str) -> None:
    """The CLI, run in-process, on the session Redis and the test's namespace."""
    monkeypatch.setenv("RECOMMENDER_REDIS__URL", redis_url)
    monkeypatch.setenv("RECOMMENDER_REDIS__NAMESPACE", namespace)
    monkeypatch.setenv("RECOMMENDER_STREAMS__BLOCK_MS", "50")
    monkeypatch.setenv("RECOMMENDER_LOGGING__FORMAT", "json")


async def run_cli(*argv: str) -> int:
    # main() runs its own event loop, so it gets a thread of its own.
    return await asyncio.to_thread(main, list(argv))


async def evaluation_namespaces_left(
    redis: "aioredis.Redis",
) -> tuple[list[bytes], list[bytes]]:
    """The keys and indexes an evaluation's private namespace left behind."""
    keys = [key async for key in redis.scan_iter(match="eval*")]
    names = await redis.execute_command("FT._LIST")  # type: ignore[no-untyped-call]
    return keys, [name for name in names if name.startswith(b"eval")]
