"""Pure ASGI middleware (no BaseHTTPMiddleware: it turns raised HTTP errors into 500s)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

import structlog
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oms.metrics import UNMATCHED_ROUTE, observe_http_request
from oms.ratelimit import STATE_KEY as RATE_LIMIT_STATE_KEY
from oms.ratelimit import RateLimitDecision
from oms.routing import route_template

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_HEADER_BYTES = b"x-request-id"
# What Starlette's CORS middleware adds to a response to a request without an Origin header.
_VARY_ORIGIN = (b"vary", b"Origin")
_VARY = b"vary"
# Anything else (control characters, 10 kB values) is replaced, never logged nor echoed.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MAX_LOGGED_PATH = 200

access_logger = structlog.get_logger("oms.access")


class RequestMiddleware:
    """Everything the service does around each HTTP request, in one layer (each pure-ASGI layer
    costs a coroutine and a wrapped `send` per request, measurable at this service's rates):

    - accepts a well-formed `X-Request-ID` or makes one, binds it to the logs, echoes it;
    - CORS (`cors`: Starlette's `CORSMiddleware` arguments): a request with an `Origin` header
      goes through Starlette's middleware; any other gets the one header it would add to it,
      `Vary: Origin`, without the layer;
    - the body limit (`max_body_bytes`, `BodySizeLimitMiddleware`), only for a request whose
      body its framing does not already bound;
    - adds the `RateLimit-*` headers of the request's rate-limit decision (`oms.ratelimit`,
      left in the request state), 429s included;
    - writes one access log line and one metrics observation. Labels use the route template
      (`/orders/{order_id}/`), never the raw path.

    Outermost, so 413s and CORS refusals are logged and carry the request id too.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int | None = None,
        cors: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.body_limit = (
            BodySizeLimitMiddleware(app, max_body_bytes) if max_body_bytes is not None else None
        )
        self.cors = CORSMiddleware(self.body_limit or app, **cors) if cors is not None else None

    def _inner(self, scope: Scope) -> tuple[ASGIApp, bool]:
        """The app to call for this request, and whether the response needs `Vary: Origin`."""
        if self.cors is not None:
            for name, _ in scope["headers"]:
                if name == b"origin":
                    return self.cors, False
        if self.body_limit is not None and self.body_limit.must_watch(scope):
            return self.body_limit, self.cors is not None
        return self.app, self.cors is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope) or secrets.token_hex(16)  # a third of uuid4().hex
        echoed = (REQUEST_ID_HEADER_BYTES, request_id.encode("ascii"))
        app, vary_origin = self._inner(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        # Stays 500 when the app raises before answering: Starlette's outer error handler
        # then sends the 500 without passing through here.
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), echoed]
                if vary_origin:
                    _vary_by_origin(headers)
                decision: RateLimitDecision | None = state.get(RATE_LIMIT_STATE_KEY)
                if decision is not None:
                    headers += decision.raw_headers
                message["headers"] = headers
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await app(scope, receive, send_with_headers)
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


def _vary_by_origin(headers: list[tuple[bytes, bytes]]) -> None:
    """Adds `Origin` to the response's `Vary` as Starlette's CORS layer does: in the one header
    (some caches read only the first `Vary` line), or as a header of its own."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == _VARY:
            headers[index] = (name, value + b", Origin")
            return
    headers.append(_VARY_ORIGIN)


class BodySizeLimitMiddleware:
    """Answers 413 once a request body exceeds the limit, declared or streamed."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _framing(self, scope: Scope) -> tuple[bool, bool]:
        """(declared larger than the limit, not bounded by its framing). An HTTP/1 body without
        `Transfer-Encoding` is at most its `Content-Length` (the server frames it so) or empty."""
        too_large = chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                too_large = True
            elif name == b"transfer-encoding":
                chunked = True
        return too_large, chunked or scope.get("http_version") not in ("1.0", "1.1")

    def must_watch(self, scope: Scope) -> bool:
        """Whether this request needs the guard at all (callers may skip the layer if not)."""
        too_large, unbounded = self._framing(scope)
        return too_large or unbounded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large, unbounded = self._framing(scope)
        if too_large:
            await self._too_large(scope, receive, send)
            return
        if not unbounded:
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
