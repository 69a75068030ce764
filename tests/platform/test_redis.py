"""The client's writes, and running one script many times in one round trip."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recommender.config import RedisSettings
from recommender.platform.redis import Keyspace, create_client, run_script_many

# Appends ARGV[1] to the list KEYS[1]; its new length. ARGV[1] == 'fail' raises instead.
_APPEND = """
if ARGV[1] == 'fail' then return redis.error_reply('told to fail') end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


@pytest.fixture
def key(namespace: str) -> str:
    return Keyspace(namespace).key("list")


@pytest.fixture
def append(redis: "aioredis.Redis") -> AsyncScript:
    return redis.register_script(_APPEND)


async def _calls_of(redis: "aioredis.Redis", command: str) -> int:
    stats: dict[str, dict[str, int]] = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.asyncio
async def test_runs_every_call_in_order_without_asking_whether_the_script_exists(
    redis: "aioredis.Redis", key: str, append: AsyncScript
) -> None:
    await append(keys=[key], args=["first"])  # loaded
    asked = await _calls_of(redis, "script|exists")

    replies = await run_script_many(redis, append, [([key], [word]) for word in "abc"])

    assert replies == [2, 3, 4]
    assert await redis.lrange(key, 0, -1) == [b"first", b"a", b"b", b"c"]
    assert await _calls_of(redis, "script|exists") == asked


@pytest.mark.asyncio
async def test_runs_the_calls_again_when_the_server_has_lost_the_script(
    redis: "aioredis.Redis", key: str, append: AsyncScript
) -> None:
    await redis.script_flush()  # as after a restart

    replies = await run_script_many(redis, append, [([key], ["a"]), ([key], ["b"])])

    assert replies == [1, 2]
    assert await redis.lrange(key, 0, -1) == [b"a", b"b"]  # each once, in order


@pytest.mark.asyncio
async def test_an_error_is_raised_after_every_call_has_run(
    redis: "aioredis.Redis", key: str, append: AsyncScript
) -> None:
    with pytest.raises(ResponseError, match="told to fail"):
        await run_script_many(redis, append, [([key], ["a"]), ([key], ["fail"]), ([key], ["b"])])

    assert await redis.lrange(key, 0, -1) == [b"a", b"b"]
    assert await run_script_many(redis, append, []) == []


@pytest.mark.asyncio
async def test_a_command_starts_no_task_to_write_itself(redis_url: str) -> None:
    client = create_client(RedisSettings(), redis_url)
    await client.ping()  # connected
    loop = asyncio.get_running_loop()
    started: list[Coroutine[Any, Any, Any]] = []

    def counting(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> "asyncio.Task[Any]":
        started.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)  # type: ignore[arg-type]
    try:
        assert await client.ping()
    finally:
        loop.set_task_factory(None)
        await client.aclose()

    assert started == []


# Handles a fake server's connection, given its number (1 for the first).
Handler = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class _FakeServer:
    url: str = ""
    connections: int = 0


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[_FakeServer]:
    """A TCP server on a free local port running `handler` per connection, counting them."""
    fake = _FakeServer()

    async def numbered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fake.connections += 1
        await handler(fake.connections, reader, writer)

    server = await asyncio.start_server(numbered, "127.0.0.1", 0)
    fake.url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        server.close()


def _answers(chunk: bytes) -> bytes:
    """PONG to each command in `chunk` (it does for the handshake and the health check)."""
    return b"+PONG\r\n" * (chunk.startswith(b"*") + chunk.count(b"\r\n*"))


@pytest.mark.asyncio
async def test_a_write_the_server_does_not_take_fails_after_the_socket_timeout() -> None:
    done = asyncio.Event()

    async def answer_small_commands_then_stall(
        _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (chunk := await reader.read(1 << 16)) and len(chunk) < 1 << 15:
            writer.write(_answers(chunk))
        await done.wait()  # reads nothing more of the large command
        writer.close()

    async with _server(answer_small_commands_then_stall) as server:
        client = create_client(RedisSettings(socket_timeout_seconds=0.2, retries=2), server.url)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(RedisTimeoutError, match="writing"):
                await client.set("key", b"x" * (64 << 20))  # more than the socket buffers hold
            assert asyncio.get_running_loop().time() - started < 5  # the timeout, not a hang
        finally:
            done.set()
            await client.aclose()
    assert server.connections == 1  # not sent again: a command that timed out might have run


@pytest.mark.asyncio
@pytest.mark.parametrize(("retries", "drops", "answered"), [(2, 2, True), (0, 1, False)])
async def test_a_dropped_connection_is_tried_again_as_the_settings_say(
    retries: int, drops: int, answered: bool
) -> None:

    async def drop_the_first_connections(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        dropped = number <= drops
        while (chunk := await reader.read(1 << 16)) and not dropped:
            writer.write(_answers(chunk))
        writer.close()

    async with _server(drop_the_first_connections) as server:
        client = create_client(RedisSettings(retries=retries), server.url)
        try:
            if answered:
                assert await client.ping()
            else:
                with pytest.raises(RedisConnectionError):
                    await client.ping()
        finally:
            await client.aclose()
    assert server.connections == drops + answered


@pytest.mark.asyncio
async def test_closing_the_client_closes_its_connections(
    redis: "aioredis.Redis", redis_url: str
) -> None:
    async def connected() -> int:
        return int((await redis.info("clients"))["connected_clients"])

    before = await connected()
    client = create_client(RedisSettings(), redis_url)
    await asyncio.gather(*(client.ping() for _ in range(3)))  # more than one connection
    assert await connected() > before

    await client.aclose()

    assert await connected() == before
