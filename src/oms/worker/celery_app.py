"""The Celery application: Redis (db 1) as broker, JSON only, no result backend.

RabbitMQ is only the event bus; Celery never touches it (SPEC 1).
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Any

import structlog
from celery import Celery, signals

from oms.config import Settings
from oms.worker.waiting import BROKER_SOCKET_TIMEOUT_SECONDS

PROCESS_ORDER = "oms.process_order"

app = Celery("oms", include=["oms.worker.tasks"])
_configured: Settings | None = None


@signals.setup_logging.connect
def _keep_structlog(**_kwargs: Any) -> None:
    """A receiver here stops Celery from replacing the structlog handlers `oms` installed."""


def log_like_oms() -> None:
    """Everything the worker process says becomes one JSON line through structlog.

    Celery's logging already goes through `oms.logging`'s handler (exceptions in a field), but a
    few messages bypass logging: the shutdown notices are written straight to the terminal by
    `celery.apps.worker.safe_say`, and an exception escaping a thread or the main module is
    printed as a raw multi-line traceback by the interpreter's hooks.
    """
    import celery.apps.worker

    celery_log = structlog.get_logger("celery.apps.worker")
    hook_log = structlog.get_logger("oms.worker")

    def say(message: str, *_args: Any, **_kwargs: Any) -> None:
        celery_log.info(str(message).strip())

    def uncaught(
        kind: type[BaseException], error: BaseException, traceback: TracebackType | None
    ) -> None:
        hook_log.error("Uncaught exception", exc_info=(kind, error, traceback))

    def uncaught_in_thread(hook: threading.ExceptHookArgs) -> None:
        if hook.exc_value is None:
            return
        hook_log.error(
            "Uncaught exception in a thread",
            thread=hook.thread.name if hook.thread else None,
            exc_info=(hook.exc_type, hook.exc_value, hook.exc_traceback),
        )

    # Celery's own per-task lines (received, succeeded) repeat the task's lines, and the
    # "received" one is rendered in the single consumer loop that bounds the worker's rate.
    for per_task in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(per_task).setLevel(max(logging.WARNING, logging.root.level))
    celery.apps.worker.safe_say = say  # type: ignore[attr-defined]
    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread


def configure_celery(settings: Settings) -> Celery:
    """Configure the process's Celery app from settings (one configuration per process)."""
    global _configured
    if not settings.celery_broker_url:
        raise ValueError("CELERY_BROKER_URL is not set")
    if _configured is not None and _configured != settings:
        raise RuntimeError("the Celery app is already configured with other settings")
    _configured = settings
    app.conf.update(
        broker_url=settings.celery_broker_url,
        # Never give up on the broker: after a Redis restart the worker reconnects and goes
        # on consuming (Celery >= 5.5 fixed the worker that stopped consuming, celery#8091).
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=settings.celery_publish_timeout_seconds,
        broker_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout_seconds,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": min(2.0, settings.celery_publish_timeout_seconds),
            "socket_keepalive": True,
            "health_check_interval": 10,
            # Look for tasks of dead workers every 10 s instead of every 100 s.
            "unacked_restore_throttle": 1,
        },
        broker_pool_limit=32,
        task_default_queue=settings.celery_queue,
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_pool=settings.worker_pool,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        # No pidbox fan-out on Redis: nothing to re-subscribe after a Redis restart.
        worker_enable_remote_control=False,
        # Tasks running when the broker connection drops finish (the effect is idempotent and
        # exactly once in the database); said explicitly, this also silences Celery's
        # multi-line CPendingDeprecationWarning at every reconnection.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    return app


def configured_settings() -> Settings:
    if _configured is None:
        raise RuntimeError("configure_celery() was not called in this process")
    return _configured
