"""The client's writes, and running one script many times in one round trip."""

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
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


@pytest.mark.asyncio
async def test_a_write_the_server_does_not_take_fails_after_the_socket_timeout() -> None:
    async def answer_small_commands_then_stall(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Answers the handshake and health check (PONG does for both), then stops reading at a
        # large command.
        while (chunk := await reader.read(1 << 16)) and len(chunk) < 1 << 15:
            writer.write(b"+PONG\r\n" * (chunk.startswith(b"*") + chunk.count(b"\r\n*")))
        await asyncio.Event().wait()

    server = await asyncio.start_server(answer_small_commands_then_stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = create_client(
        RedisSettings(socket_timeout_seconds=0.2, retries=0), f"redis://127.0.0.1:{port}"
    )
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeoutError, match="writing"):
            await client.set("key", b"x" * (64 << 20))  # more than the socket buffers hold
        assert asyncio.get_running_loop().time() - started < 5  # the timeout, not a hang
    finally:
        await client.aclose()
        server.close()
