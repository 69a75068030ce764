"""Liveness and readiness: is the process up, and can it do its work right now?"""

import asyncio

import msgspec
import redis.asyncio as aioredis
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from redis.exceptions import RedisError

from recommender.platform.redis import search_module_loaded
from recommender.platform.security import PUBLIC
from recommender.platform.streams import StreamRunner


class Liveness(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, str]
    failing: list[str]


class HealthController(Controller):
    path = "/health"
    tags = ["ops"]  # noqa: RUF012 - Litestar reads it as a class attribute
    opt = {"access": PUBLIC}  # noqa: RUF012 - probes carry no key

    @get("/live", summary="The process is up")
    async def live(self) -> Liveness:
        return Liveness(status="ok")

    @get("/ready", summary="Redis reachable, search module loaded, stream consumers running")
    async def ready(
        self, state: State, redis_probe: NamedDependency["aioredis.Redis"]
    ) -> Response[Readiness]:
        checks: dict[str, str] = {}
        try:
            # Answer within the probe's patience even while a command waits on a hung server.
            async with asyncio.timeout(2.0):
                await redis_probe.ping()
                has_search = await search_module_loaded(redis_probe)
            checks["redis"] = "ok"
            checks["search_module"] = "ok" if has_search else "not loaded"
        except (RedisError, TimeoutError) as error:
            checks["redis"] = f"unreachable: {error or 'timed out'}"
            checks["search_module"] = "unknown"
        runners: list[StreamRunner] = state.runners
        for runner in runners:
            checks[f"consumer:{runner.stream}:{runner.group}"] = (
                "ok" if runner.alive else "not running"
            )
        failing = sorted(name for name, outcome in checks.items() if outcome != "ok")
        return Response(
            Readiness(status="fail" if failing else "ok", checks=checks, failing=failing),
            status_code=HTTP_503_SERVICE_UNAVAILABLE if failing else HTTP_200_OK,
        )
