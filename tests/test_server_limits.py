"""What `oms api` allows one client (oms.server): real sockets against a real server process.

Header size and header/body/idle deadlines are set small here so that a test waits a second,
not the production ten; each test asserts what the client sees (a status, a closed connection),
never how long it took.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import RunningApi, api_environment, running_api

MAX_HEADER_BYTES = 16 * 1024
GUARD_SECONDS = 15  # far beyond every deadline below: a socket that hangs fails the test
REQUEST_LINE = b"GET /health HTTP/1.1\r\nHost: test\r\n"


@pytest.fixture(scope="module")
def api(postgres_url: str) -> Iterator[RunningApi]:
    env = api_environment(
        postgres_url,
        max_header_bytes=str(MAX_HEADER_BYTES),
        header_timeout_seconds="1",
        body_timeout_seconds="1",
        keep_alive_seconds="1",
    )
    with running_api(env) as running:
        yield running


def connect(api: RunningApi) -> socket.socket:
    host, port = api.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=GUARD_SECONDS)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def send_ignoring_close(sock: socket.socket, data: bytes) -> None:
    """Sends what the server still accepts: it may answer and close halfway."""
    try:
        for start in range(0, len(data), 65536):
            sock.sendall(data[start : start + 65536])
    except (BrokenPipeError, ConnectionResetError):
        pass


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_headers_within_the_limit_are_served(api: RunningApi) -> None:
    with connect(api) as sock:
        padding = b"x" * (MAX_HEADER_BYTES - 1024)
        sock.sendall(REQUEST_LINE + b"X-Padding: " + padding + b"\r\nConnection: close\r\n\r\n")
        assert status_of(read_until_closed(sock)) == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"X-Big: " + b"x" * 100_000 + b"\r\n", id="one 100 KB header"),
        pytest.param(b"X-Big: " + b"x" * 10_000_000 + b"\r\n", id="one 10 MB header"),
        pytest.param(b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)), id="10 000 headers"),
    ],
)
def test_headers_beyond_the_limit_get_431_and_a_closed_connection(
    api: RunningApi, headers: bytes
) -> None:
    with connect(api) as sock:
        send_ignoring_close(sock, REQUEST_LINE + headers + b"\r\n")
        response = read_until_closed(sock)
    assert status_of(response) == 431
    assert b"connection: close" in response.lower()


def test_a_body_in_the_same_read_as_the_headers_is_not_counted_as_headers(
    api: RunningApi,
) -> None:
    body = b'{"email": "not-an-email", "password": "' + b"p" * 40_000 + b'"}'
    request = (
        b"POST /register/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with connect(api) as sock:
        sock.sendall(request + body)
        assert status_of(read_until_closed(sock)) == 422


def test_a_client_sending_its_headers_slowly_is_cut_off(api: RunningApi) -> None:
    with connect(api) as sock:
        sock.sendall(REQUEST_LINE)
        cut_off = False
        for _ in range(GUARD_SECONDS * 10):  # a byte every 0.1 s, never finishing
            sock.settimeout(0.1)
            try:
                if sock.recv(65536) == b"":
                    cut_off = True
                    break
                # 408 arrived: the close follows
            except TimeoutError:
                pass
            except ConnectionResetError:
                cut_off = True
                break
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
        assert cut_off


def test_a_client_sending_its_body_slowly_is_cut_off(api: RunningApi) -> None:
    with connect(api) as sock:
        sock.sendall(
            b"POST /register/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        assert read_until_closed(sock) == b""  # closed, no answer: the body never came


def test_an_idle_keep_alive_connection_is_closed(api: RunningApi) -> None:
    with connect(api) as sock:
        sock.sendall(REQUEST_LINE + b"\r\n")
        response = read_until_closed(sock)  # returns only once the server closes
    assert status_of(response) == 200
    assert response.count(b"HTTP/1.1") == 1


def test_a_silent_connection_is_closed(api: RunningApi) -> None:
    with connect(api) as sock:
        assert status_of(read_until_closed(sock)) == 408


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def patient_api(postgres_url: str) -> Iterator[RunningApi]:
    """Deadlines long enough that slow clients stay connected during the test."""
    env = api_environment(
        postgres_url, max_header_bytes=str(MAX_HEADER_BYTES), header_timeout_seconds="60"
    )
    with running_api(env) as running:
        yield running


def test_200_slow_clients_neither_grow_memory_nor_block_health(patient_api: RunningApi) -> None:
    """The issue's probe: unfinished requests dribbling megabytes of headers. Each is cut off at
    the header limit, so 200 of them cost little memory, and /health answers while they hang."""
    before = rss_mb(patient_api.pid)
    clients = [connect(patient_api) for _ in range(200)]
    try:
        for sock in clients:  # each halfway through its headers, then silent
            sock.sendall(REQUEST_LINE + b"X-Slow: " + b"x" * (MAX_HEADER_BYTES // 2))
        response = httpx.get(f"{patient_api.url}/health", timeout=GUARD_SECONDS)
        assert response.status_code == 200

        for sock in clients:  # then each tries to send 1 MB more
            send_ignoring_close(sock, b"x" * 1_000_000)
        for sock in clients:
            assert status_of(read_until_closed(sock)) == 431
        grown = rss_mb(patient_api.pid) - before
    finally:
        for sock in clients:
            sock.close()
    # 200 clients x 1 MB would be 200 MB; the limit keeps each to 16 KB (3 MB in all).
    assert grown < 40, f"RSS grew by {grown:.0f} MB"


@pytest.fixture
def small_api(postgres_url: str) -> Iterator[RunningApi]:
    env = api_environment(postgres_url, max_connections="20", header_timeout_seconds="60")
    with running_api(env) as running:
        yield running


def test_connections_beyond_the_cap_get_503(small_api: RunningApi) -> None:
    idle = [connect(small_api) for _ in range(20)]
    try:
        with connect(small_api) as extra:
            extra.sendall(REQUEST_LINE + b"\r\n")
            response = read_until_closed(extra)
        assert status_of(response) == 503
        assert response.endswith(b'{"detail":"Too many connections"}')
    finally:
        for sock in idle:
            sock.close()
    # Once they are gone, new connections are served again.
    for _ in range(50):
        time.sleep(0.1)  # the server notices the closes in its own time
        try:
            if httpx.get(f"{small_api.url}/health", timeout=GUARD_SECONDS).status_code == 200:
                break
        except httpx.TransportError:
            pass
    else:
        raise AssertionError("the server never served a connection again")
