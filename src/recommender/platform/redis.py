"""The async Redis client and the key namespace every module's keys live under."""

import re
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recommender.config import RedisSettings
from recommender.platform.errors import StartupError

_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")


class Keyspace:
    """Builds keys under one prefix, so tenants and tests can share a server without collisions."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def pattern(self) -> str:
        """A SCAN MATCH pattern for every key of this namespace."""
        return self.escape(self.prefix) + "*"

    @staticmethod
    def escape(text: str) -> str:
        """`text` as a literal inside a SCAN MATCH pattern (glob characters escaped)."""
        return _GLOB_SPECIALS.sub(r"\\\1", text)


def create_client(settings: RedisSettings, url: str) -> "aioredis.Redis":
    """A pooled client that retries with capped backoff when the connection drops."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_seconds,
        socket_timeout=settings.socket_timeout_seconds,
        socket_connect_timeout=settings.connect_timeout_seconds,
        health_check_interval=30,
    )
    return aioredis.Redis(
        connection_pool=pool,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), settings.retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


# A script's keys and arguments for one run.
ScriptCall = tuple[Sequence[Any], Sequence[Any]]


async def run_script_many(
    client: "aioredis.Redis", script: AsyncScript, calls: Sequence[ScriptCall]
) -> list[Any]:
    """Run the script once per call, in order and in one round trip; the replies in order.

    A redis-py pipeline that runs a script first asks SCRIPT EXISTS: a second round trip every
    time. Here the EVALSHAs go straight; a call that found the server without the script (it
    ran nothing: a restart emptied the script cache) runs again through the script, which
    loads it. The first error is raised once every call has run, as a pipeline does.
    """
    if not calls:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    for position, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            keys, args = calls[position]
            replies[position] = await script(keys=list(keys), args=list(args))
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def search_module_loaded(client: "aioredis.Redis") -> bool:
    """True when the server answers RediSearch commands (Redis 8 built in, or the module)."""
    try:
        await client.execute_command("FT._LIST")  # type: ignore[no-untyped-call]
    except ResponseError:
        return False
    return True


async def require_search_module(client: "aioredis.Redis", where: str) -> None:
    try:
        loaded = await search_module_loaded(client)
    except (RedisConnectionError, RedisTimeoutError) as error:
        raise StartupError(f"cannot reach Redis at {where}: {error}") from error
    if not loaded:
        raise StartupError(
            f"the Redis at {where} has no search module: use Redis 8 with the Query Engine, "
            "Redis Stack 7.2+, or leave redis.url empty for the embedded default"
        )
