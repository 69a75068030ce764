"""Running one script many times in one round trip, against a real Redis."""

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from recommender.platform.redis import Keyspace, run_script_many

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
