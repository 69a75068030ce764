"""API keys, rate limits shared through Redis, body limits and log redaction."""

import json
import logging
from collections.abc import AsyncIterator

import msgspec
import pytest
import pytest_asyncio
import structlog
from litestar.testing import AsyncTestClient

from recommender.app import create_app
from recommender.config import LoggingSettings, SecuritySettings, Settings
from recommender.platform.logging import configure_logging
from recommender.platform.security import hash_api_key

KEY = "k3y-for-tests"
PRODUCT = {"id": "p1", "name": "Red scarf"}


def secured(settings: Settings, **security: object) -> Settings:
    return msgspec.structs.replace(settings, security=SecuritySettings(**security))  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def keyed(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    app = create_app(secured(settings, api_key_hashes=[hash_api_key(KEY)]))
    async with AsyncTestClient(app) as client:
        yield client


@pytest.mark.asyncio
async def test_without_configured_keys_everything_is_open(client: AsyncTestClient) -> None:
    assert (await client.post("/api/v1/products", json=PRODUCT)).status_code == 201


@pytest.mark.asyncio
async def test_writes_need_an_accepted_key(keyed: AsyncTestClient) -> None:
    missing = await keyed.post("/api/v1/products", json=PRODUCT)
    assert (missing.status_code, missing.json()["error"]) == (401, "api_key_required")
    assert "X-API-Key" in missing.json()["detail"] or "x-api-key" in missing.json()["detail"]
    wrong = await keyed.post("/api/v1/products", json=PRODUCT, headers={"X-API-Key": "nope"})
    assert (wrong.status_code, wrong.json()["error"]) == (403, "api_key_rejected")
    assert (await keyed.get("/api/v1/products/p1")).status_code == 404  # nothing was written
    created = await keyed.post("/api/v1/products", json=PRODUCT, headers={"X-API-Key": KEY})
    assert created.status_code == 201
    bearer = await keyed.delete("/api/v1/products/p1", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 204
    guarded = [
        ("POST", "/api/v1/events"),
        ("POST", "/api/v1/admin/model/refit"),
        ("GET", "/api/v1/admin/model"),
        ("DELETE", "/api/v1/users/u1"),
    ]
    for method, url in guarded:
        assert (await keyed.request(method, url, json={})).status_code == 401, url


@pytest.mark.asyncio
async def test_reads_and_probes_stay_open_unless_configured(
    keyed: AsyncTestClient, settings: Settings
) -> None:
    assert (await keyed.get("/api/v1/popular")).status_code == 200
    assert (await keyed.get("/health/ready")).status_code == 200
    strict = create_app(
        secured(settings, api_key_hashes=[hash_api_key(KEY)], require_key_for_reads=True)
    )
    async with AsyncTestClient(strict) as client:
        assert (await client.get("/api/v1/popular")).status_code == 401
        with_key = await client.get("/api/v1/popular", headers={"X-API-Key": KEY})
        assert with_key.status_code == 200
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


@pytest.mark.asyncio
async def test_rate_limit_is_shared_across_processes(settings: Settings) -> None:
    limited = secured(settings, rate_limit_requests=3, rate_limit_window_seconds=60)
    async with (
        AsyncTestClient(create_app(limited)) as first,
        AsyncTestClient(create_app(limited)) as second,  # another process on the same Redis
    ):
        assert (await first.get("/api/v1/popular")).status_code == 200
        assert (await second.get("/api/v1/popular")).status_code == 200
        assert (await first.get("/api/v1/popular")).status_code == 200
        refused = await second.get("/api/v1/popular")
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        other_key = await first.get("/api/v1/popular", headers={"X-API-Key": "someone"})
        assert other_key.status_code == 200  # buckets are per key
        assert (await first.get("/health/live")).status_code == 200  # probes are exempt


@pytest.mark.asyncio
async def test_oversized_body_is_refused(settings: Settings) -> None:
    small = secured(settings, max_body_bytes=2048)
    async with AsyncTestClient(create_app(small)) as client:
        big = {**PRODUCT, "description": "x" * 4000}
        response = await client.post("/api/v1/products", json=big)
        assert response.status_code == 413
        assert (await client.get("/api/v1/products/p1")).status_code == 404


def test_secrets_are_redacted_from_logs(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(format="json"))
    structlog.get_logger("test").warning("login", api_key=KEY, Authorization="Bearer x", user="u")
    logging.getLogger("other").warning("plain stdlib lines pass through")
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert lines[0]["api_key"] == "[redacted]"
    assert lines[0]["Authorization"] == "[redacted]"
    assert lines[0]["user"] == "u"
    assert KEY not in json.dumps(lines)
