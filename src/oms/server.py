"""What `oms api` allows one client: uvicorn's httptools protocol with the limits it lacks.

uvicorn (with httptools) bounds neither the size of a request's headers nor the time a client may
take to send them or its body, so a client dribbling a 10 MB header, or hundreds of half-sent
requests, holds memory and connections indefinitely. This protocol adds, per connection:

- `MAX_HEADER_BYTES` for the request line and headers together: beyond it, 431 and close. The
  bytes are counted as they arrive, before the parser buffers them; a request's headers may
  exceed the limit by at most what the same read brought after the previous request ended.
- `HEADER_TIMEOUT_SECONDS` to send them, from the connection's start or the request's first byte:
  then 408 and close. `BODY_TIMEOUT_SECONDS` for the body once the headers are in: then the
  connection is closed (the application sees a disconnect).
- `MAX_CONNECTIONS` open connections per process: a connection beyond it gets 503 at once and is
  closed, before anything is parsed. Idle keep-alive connections close after
  `KEEP_ALIVE_SECONDS` (uvicorn's own `timeout_keep_alive`).
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from oms.config import Settings, get_settings


def _plain_response(status: str, detail: str) -> bytes:
    body = b'{"detail":"' + detail.encode("ascii") + b'"}'
    return b"".join(
        (
            b"HTTP/1.1 " + status.encode("ascii") + b"\r\n",
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        )
    )


_HEADERS_TOO_LARGE = _plain_response(
    "431 Request Header Fields Too Large", "Request headers too large"
)
_HEADERS_TOO_SLOW = _plain_response("408 Request Timeout", "Request headers not received in time")
_TOO_MANY_CONNECTIONS = _plain_response("503 Service Unavailable", "Too many connections")


class _Phase(enum.Enum):
    IDLE = "idle"  # between requests
    HEADERS = "headers"  # a request's line and headers are arriving
    BODY = "body"  # its body is


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits above (settings read once per process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings: Settings = get_settings()
        self._max_header_bytes = settings.max_header_bytes
        self._header_timeout = settings.header_timeout_seconds
        self._body_timeout = settings.body_timeout_seconds
        self._max_connections = settings.max_connections
        # Bytes the current request's line and headers may still take; None once they are in.
        self._header_budget: int | None = self._max_header_bytes
        self._headers_received = 0  # requests whose headers were complete, on this connection
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = _Phase.HEADERS  # a new connection waits for its first request's headers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            # Refused before it costs anything more: not registered, nothing parsed.
            self.transport = transport
            transport.write(_TOO_MANY_CONNECTIONS)
            transport.close()
            self.parser = None  # type: ignore[assignment]
            return
        super().connection_made(transport)
        self._arm(self._header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.parser is None:  # refused in connection_made
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.parser is None or self.transport.is_closing():
            return
        self._feed(data)
        # Deadlines are armed only when a read ends mid-request: a request read whole in one
        # go (the usual case) creates no timer at all.
        if self._deadline is None and not self.transport.is_closing():
            if self._phase is _Phase.HEADERS:
                self._arm(self._header_timeout, self._headers_too_slow)
            elif self._phase is _Phase.BODY:
                self._arm(self._body_timeout, self._body_too_slow)

    def _feed(self, data: bytes) -> None:
        budget = self._header_budget
        if budget is None:
            super().data_received(data)
        elif len(data) <= budget:
            self._header_budget = budget - len(data)
            super().data_received(data)
        else:
            # The headers may end within the budget, the rest of the read being body or the
            # next request: feed only that much, and go on only if they did.
            headers_before = self._headers_received
            self._header_budget = 0
            super().data_received(data[:budget])
            if self.transport.is_closing():
                return
            if self._headers_received == headers_before:
                self._reject(_HEADERS_TOO_LARGE)
                return
            self._feed(data[budget:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _Phase.HEADERS

    def on_headers_complete(self) -> None:
        self._header_budget = None
        self._headers_received += 1
        self._phase = _Phase.BODY
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._header_budget = self._max_header_bytes  # the next request's
        self._phase = _Phase.IDLE  # until its first byte (uvicorn's keep-alive timeout)
        super().on_message_complete()

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self._reject(_HEADERS_TOO_SLOW)
        else:  # an earlier request's response is still being written: just stop
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._deadline = None
        if self.transport.get_protocol() is self:  # not handed over (a WebSocket upgrade)
            self.transport.close()

    def _reject(self, response: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()
