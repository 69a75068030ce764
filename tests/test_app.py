"""The app shell: health, metrics, error rendering and request ids, on a real Redis."""

import contextlib
import gc
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
import threadpoolctl
from litestar import get, post
from litestar.params import JSONBody, Parameter
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from recommender.app import create_app
from recommender.config import EmbeddedRedisSettings, RedisSettings, Settings
from recommender.platform.embedded import EmbeddedRedis, redis_server_binary
from recommender.platform.errors import ConflictError, StartupError
from recommender.platform.redis import Keyspace
from recommender.platform.streams import StreamRunner


@pytest.mark.asyncio
async def test_live_and_ready(client: AsyncTestClient) -> None:
    live = await client.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "checks": {"redis": "ok", "search_module": "ok"},
        "failing": [],
    }


@pytest.mark.asyncio
async def test_ready_fails_when_a_consumer_is_not_running(
    client: AsyncTestClient, redis: "aioredis.Redis", settings: Settings
) -> None:
    keys = Keyspace(settings.redis.namespace)

    async def ignore(_: object) -> None:
        return None

    runner = StreamRunner(
        redis, stream=keys.key("s"), group="g", handler=ignore,
        dead_letter_stream=keys.key("dead"), settings=settings.streams,
    )  # fmt: skip
    client.app.state.runners.append(runner)
    response = await client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["failing"] == [f"consumer:{runner.stream}:g"]


@pytest.mark.asyncio
async def test_start_up_takes_what_it_built_out_of_full_collections(settings: Settings) -> None:
    gc.unfreeze()
    async with AsyncTestClient(create_app(settings)):
        assert gc.get_freeze_count() > 0


@pytest.mark.asyncio
async def test_the_service_runs_blas_on_one_thread(settings: Settings) -> None:
    if os.cpu_count() == 1:
        pytest.skip("one core: BLAS runs one thread whatever the app does")

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpoolctl.threadpool_info()
                if pool["user_api"] == "blas"}  # fmt: skip

    async with AsyncTestClient(create_app(settings)):
        assert blas_threads() == {1}
    assert max(blas_threads()) > 1  # given back on shutdown


@pytest.mark.asyncio
async def test_ready_fails_when_redis_goes_away(tmp_path: Path, namespace: str) -> None:
    server = EmbeddedRedis(EmbeddedRedisSettings(data_dir=str(tmp_path))).start()
    # Requests reconnect for 4.5 s (7 retries, backoff 0.1 s doubling to 1 s), past the probe's
    # 2 s patience: the probe does not.
    settings = Settings(redis=RedisSettings(url=server.url, namespace=namespace, retries=7))
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200
        server.close()
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["failing"] == ["redis", "search_module"]
        assert response.json()["checks"]["redis"].startswith("unreachable: Error")  # not timed out


@pytest.fixture
def redis_without_search(tmp_path: Path) -> Iterator[str]:
    """The same redis-server without the module, as a plain or too old Redis would be."""
    sock = tmp_path / "plain.sock"
    binary = redis_server_binary(EmbeddedRedisSettings())
    command = [str(binary), "--port", "0", "--unixsocket", str(sock), "--dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    client = redis.Redis(unix_socket_path=str(sock))
    for _ in range(200):
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                break
        time.sleep(0.05)
    yield f"unix://{sock}"
    process.kill()
    process.wait()


@pytest.mark.asyncio
async def test_redis_without_search_module_is_refused_at_start_up(
    redis_without_search: str, namespace: str
) -> None:
    settings = Settings(redis=RedisSettings(url=redis_without_search, namespace=namespace))
    with pytest.raises(ExceptionGroup) as raised:  # the test client's task group wraps it
        async with AsyncTestClient(create_app(settings)):
            pass
    assert raised.group_contains(StartupError, match="has no search module")


@pytest.mark.asyncio
async def test_metrics_expose_http_histograms_by_route_template(client: AsyncTestClient) -> None:
    await client.get("/health/live")
    text = (await client.get("/metrics")).text
    assert re.search(
        r'^recommender_request_duration_seconds_bucket\{[^}]*path="/health/live"', text, re.M
    )
    assert "# TYPE recommender_redis_errors_total counter" in text
    assert "# TYPE recommender_stream_pending gauge" in text


@get("/test/flaky/{attempt:int}", sync_to_thread=False)
def flaky(attempt: Annotated[int, Parameter(ge=1)]) -> dict[str, int]:
    if attempt % 3 == 0:
        raise RuntimeError("every third attempt fails")
    return {"attempt": attempt}


def _sample(text: str, name: str, status: int) -> float | None:
    """The value of `name` for the flaky route and `status`; None when there is no such series."""
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
        and sample.labels.get("path") == "/test/flaky/{attempt}"
        and sample.labels.get("status_code") == str(status)
    ]
    return values[0] if values else None


@pytest.mark.asyncio
async def test_metrics_count_each_route_by_status_and_errors_only_for_5xx(
    client: AsyncTestClient,
) -> None:
    client.app.register(flaky)
    for attempt in range(1, 7):  # 1, 2, 4, 5 answer; 3 and 6 fail
        await client.get(f"/test/flaky/{attempt}")
    text = (await client.get("/metrics")).text

    assert _sample(text, "recommender_requests_total", 200) == 4
    assert _sample(text, "recommender_requests_total", 500) == 2
    assert _sample(text, "recommender_request_duration_seconds_count", 500) == 2
    assert _sample(text, "recommender_requests_error_total", 500) == 2
    assert _sample(text, "recommender_requests_error_total", 200) is None
    assert _sample(text, "recommender_requests_in_progress", 200) == 0


class Thing(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(max_length=5)]
    count: Annotated[int, msgspec.Meta(ge=0)] = 0


@post("/test/things", sync_to_thread=False)
def create_thing(data: JSONBody[Thing]) -> Thing:
    return data


@get("/test/conflict", sync_to_thread=False)
def conflict() -> None:
    raise ConflictError("thing 'a' already exists")


@get("/test/bug", sync_to_thread=False)
def bug() -> None:
    raise RuntimeError("boom")


@pytest.mark.asyncio
async def test_errors_render_code_and_detail(client: AsyncTestClient) -> None:
    for handler in (create_thing, conflict, bug):
        client.app.register(handler)

    invalid = await client.post("/test/things", json={"name": "too long", "count": -1})
    assert invalid.status_code == 400
    assert invalid.json()["error"] == "validation_error"
    assert "name" in invalid.json()["detail"]
    assert "length <= 5" in invalid.json()["detail"]

    taken = await client.get("/test/conflict")
    assert (taken.status_code, taken.json()) == (
        409,
        {"error": "conflict", "detail": "thing 'a' already exists"},
    )

    crashed = await client.get("/test/bug")
    assert crashed.status_code == 500
    assert crashed.json()["error"] == "internal_error"
    assert "boom" not in crashed.text  # internals stay in the log
    metrics = (await client.get("/metrics")).text
    assert re.search(
        r'^recommender_requests_total\{[^}]*path="/test/bug",status_code="500"', metrics, re.M
    )

    missing = await client.get("/nothing-here")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


@pytest.mark.asyncio
async def test_request_id_is_returned_and_a_safe_one_is_echoed(client: AsyncTestClient) -> None:
    generated = await client.get("/health/live")
    assert len(generated.headers["x-request-id"]) == 32
    echoed = await client.get("/health/live", headers={"X-Request-ID": "shop-42.abc"})
    assert echoed.headers["x-request-id"] == "shop-42.abc"
    forged = await client.get("/health/live", headers={"X-Request-ID": 'a" injected=1'})
    assert forged.headers["x-request-id"] != 'a" injected=1'


@pytest.mark.asyncio
async def test_openapi_docs_are_served(client: AsyncTestClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    schema = (await client.get("/docs/openapi.json")).json()
    assert "/health/ready" in schema["paths"]
