"""Pure ASGI middleware (no BaseHTTPMiddleware: it turns raised HTTP errors into 500s)."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oms.metrics import UNMATCHED_ROUTE, observe_http_request
from oms.ratelimit import STATE_KEY as RATE_LIMIT_STATE_KEY
from oms.ratelimit import RateLimitDecision
from oms.routing import route_template

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_HEADER_BYTES = b"x-request-id"
# Anything else (control characters, 10 kB values) is replaced, never logged nor echoed.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MAX_LOGGED_PATH = 200

access_logger = structlog.get_logger("oms.access")


class RequestMiddleware:
    """Everything the service does around each HTTP request, in one layer (each pure-ASGI layer
    costs a coroutine and a wrapped `send` per request, measurable at this service's rates):

    - accepts a well-formed `X-Request-ID` or makes one, binds it to the logs, echoes it;
    - adds the `RateLimit-*` headers of the request's rate-limit decision (`oms.ratelimit`,
      left in the request state), 429s included;
    - writes one access log line and one metrics observation. Labels use the route template
      (`/orders/{order_id}/`), never the raw path.

    Outermost, so 413s and CORS refusals are logged and carry the request id too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope) or secrets.token_hex(16)  # a third of uuid4().hex
        echoed = (REQUEST_ID_HEADER_BYTES, request_id.encode("ascii"))
        state: dict[str, Any] = scope.setdefault("state", {})
        # Stays 500 when the app raises before answering: Starlette's outer error handler
        # then sends the 500 without passing through here.
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), echoed]
                decision: RateLimitDecision | None = state.get(RATE_LIMIT_STATE_KEY)
                if decision is not None:
                    headers += decision.raw_headers
                message["headers"] = headers
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_headers)
            finally:
                elapsed = time.perf_counter() - started
                route = route_template(scope)
                method: str = scope["method"]
                observe_http_request(method, route, status, elapsed)
                extra = {} if route != UNMATCHED_ROUTE else {"path": _loggable_path(scope)}
                client = scope.get("client")
                access_logger.info(
                    "http_request",
                    method=method,
                    route=route,
                    status=status,
                    latency_ms=round(elapsed * 1000, 2),
                    client=client[0] if client else None,
                    **extra,
                )


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER_BYTES:
            candidate = value.decode("latin-1")
            return candidate if _VALID_REQUEST_ID.match(candidate) else None
    return None


def _loggable_path(scope: Scope) -> str:
    path: str = scope["path"][:_MAX_LOGGED_PATH]
    return path if path.isprintable() else path.encode("unicode_escape").decode("ascii")


class BodySizeLimitMiddleware:
    """Answers 413 once a request body exceeds the limit, declared or streamed."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            if name == b"transfer-encoding":
                chunked = True
        if not chunked and scope.get("http_version") in ("1.0", "1.1"):
            # HTTP/1 without Transfer-Encoding: the body is at most its Content-Length (the
            # server frames it so), checked above, or empty. Nothing to count.
            await self.app(scope, receive, send)
            return

        received = 0
        response_started = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes and not response_started:
                    # Answer now; the app sees a disconnect and its own reply is dropped.
                    rejected = True
                    await self._too_large(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"Request body exceeds {self.max_body_bytes} bytes"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
