"""The async Redis client and the key namespace every module's keys live under."""

import asyncio
import re
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
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


class _TimedWrite(AbstractConnection):
    """Writes a command under `asyncio.timeout`, where redis-py uses `asyncio.wait_for`: on
    Python 3.11 that starts a task for every command's write (3.12's starts none), and the
    caller waits two more turns of the event loop for it. Measured at 1,000 req/s, in pairs: when
    the machine was slow, 9-18% less service CPU per request and half the p99 of every read;
    when it was fast, the pairs were mixed."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected or not self.socket_timeout:  # connecting; or nothing to time
            return await super().send_packed_command(command, check_health)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]  # untyped in redis-py
        if isinstance(command, str):
            command = command.encode()
        parts = [command] if isinstance(command, bytes) else command
        try:
            async with asyncio.timeout(self.socket_timeout):
                await self._send_packed_command(parts)
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as error:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {error}") from error
        except BaseException:
            await self.disconnect(nowait=True)  # a half-written command leaves it unusable
            raise


class _TcpConnection(_TimedWrite, Connection):
    pass


class _TlsConnection(_TimedWrite, SSLConnection):
    pass


class _UnixConnection(_TimedWrite, UnixDomainSocketConnection):
    pass


_TIMED_WRITES: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TcpConnection,
    SSLConnection: _TlsConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


def create_client(settings: RedisSettings, url: str) -> "aioredis.Redis":
    """A pooled client that reconnects with capped backoff when the connection drops; closing
    it closes its connections."""
    options: dict[str, Any] = {
        "max_connections": settings.max_connections,
        "timeout": settings.socket_timeout_seconds,
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.connect_timeout_seconds,
        "health_check_interval": 30,
        # A command retries on its connection's policy (a client's own applies only to a pool it
        # made itself): a dropped connection, not a slow command, which might have run.
        "retry": Retry(
            ExponentialBackoff(cap=1.0, base=0.05), settings.retries, (RedisConnectionError,)
        ),
        **parse_url(url),  # the URL's own options win, as in `from_url`
    }
    options["connection_class"] = _TIMED_WRITES[options.get("connection_class", Connection)]
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool(**options))


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
