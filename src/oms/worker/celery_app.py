"""The Celery application: Redis (db 1) as broker, JSON only, no result backend.

RabbitMQ is only the event bus; Celery never touches it (SPEC 1).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from oms.config import Settings

PROCESS_ORDER = "oms.process_order"

app = Celery("oms", include=["oms.worker.tasks"])
_configured: Settings | None = None


@signals.setup_logging.connect
def _keep_structlog(**_kwargs: Any) -> None:
    """A receiver here stops Celery from replacing the structlog handlers `oms` installed."""


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
            "socket_timeout": 5.0,
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
        enable_utc=True,
    )
    return app


def configured_settings() -> Settings:
    if _configured is None:
        raise RuntimeError("configure_celery() was not called in this process")
    return _configured
