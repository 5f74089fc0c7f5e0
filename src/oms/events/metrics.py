"""Prometheus metrics of the event pipeline, served per process on `METRICS_PORT`."""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Gauge, start_http_server

from oms.config import Settings

log = structlog.get_logger(__name__)

OUTBOX_BACKLOG = Gauge("oms_outbox_backlog", "Outbox events not yet published")
OUTBOX_OLDEST_AGE = Gauge(
    "oms_outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox event"
)
EVENTS_PUBLISHED = Counter(
    "oms_events_published_total", "Events published and confirmed by the broker", ["event_type"]
)
PUBLISH_FAILURES = Counter("oms_events_publish_failures_total", "Events whose publish failed")
EVENTS_CONSUMED = Counter(
    "oms_events_consumed_total", "Events taken off the bus, by outcome", ["outcome"]
)
EVENTS_DEAD_LETTERED = Counter(
    "oms_events_dead_lettered_total", "Events moved to the dead-letter queue", ["reason"]
)
ORDERS_REDISPATCHED = Counter(
    "oms_orders_redispatched_total", "Orders the sweeper handed to process_order again"
)
ORDERS_UNPROCESSED = Gauge("oms_orders_unprocessed", "Orders the worker has not processed yet")
OLDEST_UNPROCESSED_AGE = Gauge(
    "oms_oldest_unprocessed_order_age_seconds", "Age of the oldest order not processed yet"
)
CELERY_QUEUE_DEPTH = Gauge(
    "oms_celery_queue_depth", "process_order tasks waiting in the Celery queue (Redis)"
)
TASKS_RUNNING = Gauge("oms_tasks_running", "process_order tasks taken by a worker and not done")
ORDERS_SEEN_PENDING = Counter(
    "oms_sweeper_orders_pending_total",
    "Overdue orders the sweeper left alone because their task still waits or runs",
)


def serve_metrics(settings: Settings) -> None:
    """Expose this process's metrics on its own port, if one is configured."""
    if settings.metrics_port is None:
        return
    start_http_server(settings.metrics_port)
    log.info("Serving Prometheus metrics", port=settings.metrics_port)
