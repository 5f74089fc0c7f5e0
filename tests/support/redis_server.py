"""A private `redis-server` for one test: it can be restarted without touching the shared one."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.processes import free_port
from tests.support.services import service_unavailable


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class RedisServer:
    """No persistence (`--save "" --appendonly no`): a restart loses every key, like CI's."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self._dir = directory
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            service_unavailable("redis-server", FileNotFoundError("redis-server not on PATH"))
            raise AssertionError("unreachable")
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def shutdown(self) -> None:
        """`SHUTDOWN NOSAVE`, as an operator stops it: clients see the connection closed."""
        if self._process is None:
            return
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=2) as connection,
        ):
            connection.sendall(b"SHUTDOWN NOSAVE\r\n")
            connection.recv(64)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        """Crash and start again on the same port: everything queued is gone."""
        self.kill()
        self.start()
