"""A private PostgreSQL cluster that a drill may stop, crash and start again.

The shared server on 5432 is never touched. PostgreSQL refuses to run as root, so as root the
cluster belongs to the `postgres` user (`runuser`); as anyone else it runs as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import free_port
from tests.support.redis_server import port_open
from tests.support.services import service_unavailable


def _bin_dir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """`initdb` into a temporary directory, trust auth on 127.0.0.1, no fsync (test data)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._root = Path(tempfile.mkdtemp(prefix="oms-pg-"))
        self._data = self._root / "data"
        self._bin = _bin_dir()
        self._as_user: list[str] = []

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            return int((self._data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, *args: str, timeout: float = 60) -> None:
        assert self._bin is not None
        command = [*self._as_user, str(self._bin / args[0]), *args[1:]]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)

    def init(self) -> PostgresCluster:
        if self._bin is None:
            service_unavailable("PostgreSQL", FileNotFoundError("initdb not found"))
            raise AssertionError("unreachable")
        if os.geteuid() == 0:
            shutil.chown(self._root, "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres", "--no-sync")
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c max_connections=200"
        )
        log = str(self._root / "postgres.log")
        self._run("pg_ctl", "-D", str(self._data), "-o", options, "-l", log, "-w", "start")
        deadline = time.monotonic() + 20
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("private PostgreSQL did not start")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """`fast`: sessions ended, clean shutdown; `immediate`: a crash (recovery on start)."""
        self._run("pg_ctl", "-D", str(self._data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if self._bin is not None and (self._data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self._root, ignore_errors=True)
