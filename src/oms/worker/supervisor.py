"""`oms worker` is a small supervising parent around the Celery worker, which runs as its child.

Why a parent: when the Celery worker stops consuming (see `oms.worker.watchdog`) the fix is a
fresh process, and an exit alone is no recovery where the supervisor reacts badly to one (under
`make stack` honcho stops every role when one exits). So the parent restarts the child whenever
it exits, with a backoff that grows while the child keeps dying young, and never exits on its
own. Signals: SIGTERM or SIGINT to the parent is a warm shutdown of the child (tasks in progress
finish), then the parent exits 0; SIGQUIT is passed on (Celery's cold shutdown). The child runs in
its own process group, so a terminal's Ctrl+C reaches it once, through the parent, and dies with
the parent (PR_SET_PDEATHSIG) if the parent is killed outright: no orphan keeps consuming.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType, TracebackType

import structlog

log = structlog.get_logger(__name__)

# Set in the child's environment: `oms worker` then runs Celery itself instead of supervising.
CHILD_ENV = "OMS_WORKER_CHILD"
# How often the child was restarted before this one started (for its metrics and logs).
RESTARTS_ENV = "OMS_WORKER_RESTARTS"

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# A child that ran this long was healthy: the next restart starts from the first backoff again.
HEALTHY_RUN_SECONDS = 60.0

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child before exec
    """Linux: the kernel SIGKILLs the child when the parent dies (no orphan keeps consuming)."""
    # Not Linux: the parent's SIGTERM forwarding still covers every orderly stop.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    log.error("Worker supervisor failed", exc_info=(kind, error, traceback))


class Supervisor:
    def __init__(self, child_args: Sequence[str]) -> None:
        self._command = [sys.executable, "-m", "oms.cli", "worker", *child_args]
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._restarts = 0

    def run(self) -> int:
        sys.excepthook = _log_uncaught  # one JSON line, never a raw traceback
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        backoff = FIRST_BACKOFF_SECONDS
        while not self._stopping:
            started = time.monotonic()
            code = self._run_child()
            if self._stopping:
                break
            ran = time.monotonic() - started
            if ran >= HEALTHY_RUN_SECONDS:
                backoff = FIRST_BACKOFF_SECONDS
            log.warning(
                "Celery worker exited; restarting it",
                exit_code=code,
                ran_seconds=round(ran, 1),
                restart_in_seconds=backoff,
                restarts=self._restarts,
            )
            self._sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            self._restarts += 1
        log.info("Worker stopped")
        return 0

    def _run_child(self) -> int:
        env = {**os.environ, CHILD_ENV: "1", RESTARTS_ENV: str(self._restarts)}
        self._child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self._command, env=env, process_group=0, preexec_fn=_die_with_parent
        )
        log.info("Celery worker started", pid=self._child.pid, restarts=self._restarts)
        if self._stopping:  # a signal arrived while it was starting
            self._child.send_signal(signal.SIGTERM)
        code = self._child.wait()
        self._child = None
        return code

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum != signal.SIGQUIT:
            signum = signal.SIGTERM  # Celery's warm shutdown, once, whatever the parent got
            if self._stopping:
                return
        self._stopping = True
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.1)
