"""The one place where errors become HTTP responses. Clients never see a stack trace."""

from __future__ import annotations

import math

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from oms.db import is_database_unavailable
from oms.exceptions import (
    AuthenticationError,
    ConflictError,
    DomainError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableError,
)
from oms.ratelimit import RateLimitExceededError

log = structlog.get_logger(__name__)

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    UnprocessableError: 422,
}
DATABASE_UNAVAILABLE = "Database unavailable; please retry shortly"
RETRY_AFTER_SECONDS = "2"


def error_response(
    status_code: int, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status_code = next(code for cls, code in STATUS_BY_ERROR.items() if isinstance(exc, cls))
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return error_response(status_code, exc.detail, headers)


def _json_safe_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape, but an echoed input such as `1e400` (inf) cannot break the JSON."""
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors(), custom_encoder={float: _json_safe_float})
    return JSONResponse({"detail": errors}, status_code=422)


async def _infrastructure_error(request: Request, exc: Exception) -> JSONResponse:
    if is_database_unavailable(exc):
        log.warning("database_unavailable", error=type(exc).__name__, path=request.url.path)
        return error_response(503, DATABASE_UNAVAILABLE, {"Retry-After": RETRY_AFTER_SECONDS})
    log.error("database_error", error=type(exc).__name__, path=request.url.path, exc_info=exc)
    return error_response(500, "Internal server error")


async def _rate_limited(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimitExceededError)
    # The RateLimit-* headers come from RateLimitHeadersMiddleware, as on every limited route.
    retry_after = exc.decision.retry_after_seconds
    return error_response(
        429,
        f"Rate limit exceeded; retry in {retry_after} s",
        {"Retry-After": str(retry_after)},
    )


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RateLimitExceededError, _rate_limited)
    # An outage surfaces as a driver error, a pool timeout or a socket error;
    # `is_database_unavailable` tells it from a bug.
    for exc_type in (DBAPIError, PoolTimeoutError, OSError):
        app.add_exception_handler(exc_type, _infrastructure_error)
