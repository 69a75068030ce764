"""API keys and rate limits.

Keys are configured as SHA-256 digests, never in clear, and compared in constant time. A route
says what it needs with `opt={"access": ...}`: "public" (health, metrics), "read" (the default;
a key only if `require_key_for_reads`), "write" (any change, imports, admin).

Rate limits are a fixed window per API key (or client address) counted with one atomic INCR in
Redis, so every process of the service shares them. Litestar's own RateLimitMiddleware keeps a
JSON list of timestamps per client that it reads and rewrites per request: not atomic across
processes, and its size grows with the limit, so it does not fit a shared, high limit.
"""

import hashlib
import hmac
import math
import time
from typing import Any

import redis.asyncio as aioredis
import structlog
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from recommender.config import SecuritySettings
from recommender.platform.errors import AppError
from recommender.platform.redis import Keyspace

log = structlog.get_logger()

API_KEY_HEADER = "x-api-key"
PUBLIC, READ, WRITE = "public", "read", "write"
# A route's `opt` that asks for a key whenever keys are configured.
WRITES = {"access": WRITE}


class MissingApiKeyError(AppError):
    status_code = 401
    code = "api_key_required"


class ApiKeyRejectedError(AppError):
    status_code = 403
    code = "api_key_rejected"


class RateLimitedError(AppError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


def hash_api_key(key: str) -> str:
    """The form a key takes in the settings: `sha256:<hex digest>`."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    key = connection.headers.get(API_KEY_HEADER)
    if key:
        return key
    authorization = connection.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def key_accepted(key: str, accepted_hashes: tuple[str, ...]) -> bool:
    digest = hash_api_key(key)
    # Compare against every configured hash, in constant time, without stopping early.
    matches = [hmac.compare_digest(digest, accepted) for accepted in accepted_hashes]
    return any(matches)


async def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Litestar guard, installed when keys are configured: the route's access level decides
    whether a key is needed.

    A coroutine although it never awaits: Litestar runs a plain function guard in a thread.
    """
    settings: SecuritySettings = connection.app.state.settings.security
    access = handler.opt.get("access", READ)
    if access == PUBLIC:
        return
    if access == READ and not settings.require_key_for_reads:
        return
    key = presented_key(connection)
    if key is None:
        raise MissingApiKeyError(
            f"this endpoint needs an API key: send it in the {API_KEY_HEADER} header"
        )
    if not key_accepted(key, tuple(settings.api_key_hashes)):
        raise ApiKeyRejectedError("the API key is not accepted")


class RateLimitMiddleware(ASGIMiddleware):
    """A fixed window per client: at most `requests_per_window` per `window_seconds`."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: SecuritySettings) -> None:
        self.settings = settings

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        limit = self.settings.rate_limit_requests
        if not _exempt(scope["path"]):
            state = scope["litestar_app"].state
            await self._count(state.redis, state.keyspace, ASGIConnection(scope), limit)
        await next_app(scope, receive, send)

    async def _count(
        self,
        client: "aioredis.Redis",
        keys: Keyspace,
        connection: ASGIConnection[Any, Any, Any, Any],
        limit: int,
    ) -> None:
        window = self.settings.rate_limit_window_seconds
        now = time.time()
        start = math.floor(now / window) * window
        key = presented_key(connection)
        # The key's hash names the bucket: a key never lands in Redis in clear.
        address = connection.client.host if connection.client else "-"
        who = hash_api_key(key) if key else f"ip:{address}"
        bucket = keys.key("ratelimit", who, str(start))
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr(bucket)
            pipe.expire(bucket, window + 1)
            count, _ = await pipe.execute()
        if int(count) > limit:
            retry_after = max(1, math.ceil(start + window - now))
            raise RateLimitedError(
                f"more than {limit} requests in {window}s; retry in {retry_after}s", retry_after
            )


def _exempt(path: str) -> bool:
    return path.startswith(("/health", "/metrics"))
