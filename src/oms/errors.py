"""The one place where errors become HTTP responses. Clients never see a stack trace, and
every error body, whatever the request held, is JSON (`ErrorResponse`)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)
from starlette.exceptions import HTTPException
from starlette.routing import Match

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


# A lone UTF-16 surrogate (`"\ud800"` in the request's JSON) is a valid Python string that UTF-8
# cannot encode; echoed in a 422 it used to turn the answer into a plain-text 500.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_safe(value: Any) -> Any:
    """`value` with what JSON cannot carry replaced: surrogates by U+FFFD, inf and nan (an
    echoed `1e400`) by their names."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


class ErrorResponse(JSONResponse):
    """The one rendering of every error body: always valid UTF-8 JSON, whatever it echoes."""

    def render(self, content: Any) -> bytes:
        safe = _json_safe(jsonable_encoder(content))
        return json.dumps(safe, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8"
        )


def error_response(
    status_code: int, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return ErrorResponse({"detail": detail}, status_code=status_code, headers=headers)


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status_code = next(code for cls, code in STATUS_BY_ERROR.items() if isinstance(exc, cls))
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return error_response(status_code, exc.detail, headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape; the echoed input goes through the safe rendering."""
    assert isinstance(exc, RequestValidationError)
    return ErrorResponse({"detail": exc.errors()}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (404 no route, 405 method) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return ErrorResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route accepts on this path. Starlette's 405 names only the first
    route's, and `/orders/{id}/` is two routes (GET and PATCH), each with a slash-less twin."""
    allowed = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    }
    return ", ".join(sorted(allowed))


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


DATA_REFUSED = "A value in the request is outside what the service can store"


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """Any error of the database layer: an outage is a 503 to retry; a value the database
    refuses (out of range, or one its driver cannot even encode) is the client's 422; a
    constraint the request broke, a 409. Validation at the edge should leave none of the last
    two, so they are logged as warnings to find the missing rule."""
    if _is_refused_value(exc):
        log.warning("database_refused_value", error=type(exc).__name__, path=request.url.path)
        return error_response(422, DATA_REFUSED)
    if is_database_unavailable(exc):
        log.warning("database_unavailable", error=type(exc).__name__, path=request.url.path)
        return error_response(503, DATABASE_UNAVAILABLE, {"Retry-After": RETRY_AFTER_SECONDS})
    if isinstance(exc, IntegrityError):
        log.warning("database_conflict", error=type(exc).__name__, path=request.url.path)
        return error_response(409, "The request conflicts with the stored data")
    log.error("database_error", error=type(exc).__name__, path=request.url.path, exc_info=exc)
    return error_response(500, "Internal server error")


def _is_refused_value(exc: Exception) -> bool:
    """The database refused a value (SQLSTATE class 22), or its driver did before sending it:
    an OverflowError encoding a 23-digit integer, or asyncpg's "invalid input for query
    argument" (a ValueError, which SQLAlchemy wraps as an InterfaceError: no outage)."""
    if isinstance(exc, DataError):
        return True
    original = exc.orig if isinstance(exc, StatementError) else None
    return isinstance(original, ValueError | TypeError | OverflowError)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: still a JSON 500 (Starlette re-raises it afterwards, so the server logs it)."""
    log.error("unhandled_error", error=type(exc).__name__, path=request.url.path)
    return error_response(500, "Internal server error")


async def _rate_limited(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimitExceededError)
    # The RateLimit-* headers come from RequestMiddleware, as on every limited route.
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
    app.add_exception_handler(HTTPException, _http_error)
    # An outage surfaces as a driver error, a pool timeout or a socket error;
    # `is_database_unavailable` tells it from a bad value or a bug.
    for exc_type in (SQLAlchemyError, OSError):
        app.add_exception_handler(exc_type, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
