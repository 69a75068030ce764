"""Property-based fuzzing of every endpoint from the service's own OpenAPI schema (schemathesis).

The service runs as a real process on the test Redis, in its own namespace. For every generated
request: no 5xx; every 4xx is `{"error", "detail"}`; and a rejected request changes nothing
(no entry is added to either event stream, and every write adds one).
"""

import itertools
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from recommender.platform.redis import Keyspace

STREAMS = ("catalog", "behaviour")


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def live_service(redis_url: str) -> Iterator[tuple[str, str]]:
    namespace = "fuzz:"
    port = free_port()
    env = {
        **os.environ,
        "RECOMMENDER_REDIS__URL": redis_url,
        "RECOMMENDER_REDIS__NAMESPACE": namespace,
        "RECOMMENDER_LOGGING__ACCESS_LOG": "false",
        "RECOMMENDER_LOGGING__LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "recommender", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{base}/health/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield base, namespace
    finally:
        process.terminate()
        process.wait(timeout=30)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=Keyspace(namespace).pattern(), count=1000):
            client.delete(key)
        for index in client.execute_command("FT._LIST"):
            if index.decode().startswith(namespace):
                client.execute_command("FT.DROPINDEX", index)


def _added(client: "redis.Redis", stream: str) -> int:
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:  # no such stream yet
        return 0
    return int(info["entries-added"])


@pytest.fixture(scope="module")
def api_schema(live_service: tuple[str, str]) -> schemathesis.BaseSchema:
    base, _ = live_service
    return schemathesis.openapi.from_url(f"{base}/docs/openapi.json")


@pytest.fixture(scope="module")
def stream_lengths(live_service: tuple[str, str], redis_url: str) -> object:
    _, namespace = live_service
    client = redis.Redis.from_url(redis_url)
    keys = Keyspace(namespace)

    def lengths() -> tuple[int, ...]:
        # Entries ever added: unlike XLEN, not lowered when consumers trim what they acked.
        return tuple(_added(client, keys.key("stream", name)) for name in STREAMS)

    return lengths


def where_of(operation: object) -> str:
    return str(getattr(operation, "label", operation))


def test_no_server_errors_and_rejections_change_nothing(
    api_schema: schemathesis.BaseSchema, stream_lengths: object
) -> None:
    # Plain Hypothesis over each operation: schemathesis' pytest plugin predates pytest 9.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for operation, mode in itertools.product(operations, modes):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            before = stream_lengths()  # type: ignore[operator]
            response = case.call()
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text}"
            if 400 <= response.status_code < 500:
                body = response.json()
                assert set(body) == {"error", "detail"}, f"{where}: {body}"
                assert body["detail"], where
                assert stream_lengths() == before, f"{where} changed data: {body}"  # type: ignore[operator]

        try:
            check()
        except Unsatisfiable:
            # An operation with no parameters or body has no invalid input to generate.
            assert mode is schemathesis.GenerationMode.NEGATIVE, where_of(operation)
