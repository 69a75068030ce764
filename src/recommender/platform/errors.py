"""Typed errors and the one place that turns any error into `{"error": code, "detail": message}`.

Expected failures are `AppError`s with a 4xx (or 503) status; anything else is a bug, answered
with a 500 and logged with the request id.
"""

from typing import Any, ClassVar

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recommender.platform import metrics

log = structlog.get_logger()


class StartupError(Exception):
    """The service cannot start as configured (missing binary, unwritable directory, no module)."""


class AppError(Exception):
    status_code: ClassVar[int] = HTTP_400_BAD_REQUEST
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotFoundError(AppError):
    status_code = HTTP_404_NOT_FOUND
    code = "not_found"


class ConflictError(AppError):
    status_code = HTTP_409_CONFLICT
    code = "conflict"


class InvalidInputError(AppError):
    status_code = HTTP_422_UNPROCESSABLE_ENTITY
    code = "invalid_input"


class StoreUnavailableError(AppError):
    status_code = HTTP_503_SERVICE_UNAVAILABLE
    code = "store_unavailable"


def _body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def app_error_handler(_: Request[Any, Any, Any], error: AppError) -> Response[dict[str, Any]]:
    return Response(
        _body(error.code, error.detail), status_code=error.status_code, headers=error.headers
    )


def validation_error_handler(
    _: Request[Any, Any, Any], error: ValidationException
) -> Response[dict[str, Any]]:
    """Name each offending field and its rule: `name: Expected `str` of length <= 500`."""
    problems = [
        f"{item.get('key') or item.get('source') or 'body'}: {item.get('message')}"
        for item in (error.extra if isinstance(error.extra, list) else [])
        if isinstance(item, dict)
    ]
    detail = "; ".join(problems) or str(error.detail)
    return Response(_body("validation_error", detail), status_code=error.status_code)


def http_error_handler(_: Request[Any, Any, Any], error: HTTPException) -> Response[dict[str, Any]]:
    code = error.__class__.__name__.removesuffix("Exception").removesuffix("Error")
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in code).lstrip("_")
    return Response(
        _body(snake or "http_error", str(error.detail)),
        status_code=error.status_code,
        headers=error.headers,
    )


def redis_error_handler(
    request: Request[Any, Any, Any], error: RedisConnectionError | RedisTimeoutError
) -> Response[dict[str, Any]]:
    """Redis unreachable or too slow: 503, so clients retry. (A command Redis refuses is a bug
    of ours and goes to the 500 handler.)"""
    metrics.REDIS_ERRORS.labels(source="http").inc()
    log.warning("redis_unavailable", path=request.url.path, error=str(error))
    return Response(
        _body("store_unavailable", "the data store is not reachable; retry shortly"),
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


def internal_error_handler(
    request: Request[Any, Any, Any], error: Exception
) -> Response[dict[str, Any]]:
    log.exception("unhandled_error", path=request.url.path, exc_info=error)
    return Response(
        _body("internal_error", "an unexpected error occurred; it has been logged"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


EXCEPTION_HANDLERS = {
    AppError: app_error_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
    RedisConnectionError: redis_error_handler,
    RedisTimeoutError: redis_error_handler,
    Exception: internal_error_handler,
}
