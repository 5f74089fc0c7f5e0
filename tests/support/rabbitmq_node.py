"""A private RabbitMQ node that a drill may stop and start again; the shared broker is untouched.

Its own node name, AMQP and distribution ports, data and log directories, no plugins (so no
clash on the management port) and its own config file (Debian's /etc/rabbitmq/rabbitmq.conf
pins the listener to 5672). As root the node runs as the `rabbitmq` user, as Debian's wrapper
does; both the node and `rabbitmqctl` then find the same Erlang cookie in that user's HOME.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.processes import free_port
from tests.support.redis_server import port_open
from tests.support.services import service_unavailable

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def _binary(name: str) -> str | None:
    if (RABBITMQ_BIN / name).exists():
        return str(RABBITMQ_BIN / name)
    return shutil.which(name)


class RabbitMQNode:
    def __init__(self) -> None:
        self.port = free_port()
        self._dist_port = free_port()
        self.node = f"oms-chaos-{uuid.uuid4().hex[:10]}@localhost"
        self._root = Path(tempfile.mkdtemp(prefix="oms-rabbitmq-"))
        self._server = _binary("rabbitmq-server")
        self._ctl = _binary("rabbitmqctl")
        self._as_user = ["runuser", "-u", "rabbitmq", "--"] if os.geteuid() == 0 else []
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self._root / "stdout.log"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        """The Erlang VM's pid while the node runs."""
        try:
            return int((self._root / "node.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_MNESIA_BASE": str(self._root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self._root / "log"),
            "RABBITMQ_PID_FILE": str(self._root / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self._root / "rabbitmq.conf"),
        }

    def start(self, within: float = 120) -> float:
        """Start the node and wait for its AMQP port; returns the seconds it took."""
        if self._server is None or self._ctl is None:
            service_unavailable("RabbitMQ", FileNotFoundError("rabbitmq-server not found"))
            raise AssertionError("unreachable")
        if not (self._root / "rabbitmq.conf").exists():
            (self._root / "enabled_plugins").write_text("[].\n")
            (self._root / "rabbitmq.conf").write_text(
                f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
            )
            if self._as_user:
                subprocess.run(["chown", "-R", "rabbitmq", str(self._root)], check=True)
        started = time.monotonic()
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [*self._as_user, self._server], env=self._env(), stdout=log, stderr=log
            )
        while not port_open(self.port):
            if self._process.poll() is not None or time.monotonic() - started > within:
                raise RuntimeError(f"private RabbitMQ did not start:\n{self.output()}")
            time.sleep(0.1)
        return time.monotonic() - started

    def stop(self) -> None:
        """A clean node shutdown (`rabbitmqctl stop`): connections are closed by the broker."""
        assert self._ctl is not None
        subprocess.run(
            [*self._as_user, self._ctl, "-n", self.node, "stop"],
            env=self._env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if self._process is not None:
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None

    def output(self) -> str:
        return self._log.read_text(errors="replace")[-4000:] if self._log.exists() else ""

    def destroy(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.stop()
        shutil.rmtree(self._root, ignore_errors=True)
