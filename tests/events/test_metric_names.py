"""The alert rules and the Grafana dashboard query only metrics the real processes export.

api, relay, consumer and worker run as real processes, one order goes through them, and every
`oms_*` name in deploy/observability/ must be a series of one of their /metrics endpoints.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.events.conftest import Pipeline
from tests.support.observability import referenced_metrics
from tests.support.processes import eventually, free_port

# Being added by the pipeline rework under exactly these names: allowed while no role exports
# them yet. Once every one is exported, empty this set.
PENDING = frozenset(
    {
        "oms_celery_queue_depth",
        "oms_oldest_unprocessed_order_age_seconds",
        "oms_orders_redispatched_total",
        "oms_worker_last_task_received_timestamp_seconds",
    }
)
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def series_names(exposition: str) -> set[str]:
    """Every series name a scrape of this text yields (families without samples included)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def test_rules_and_dashboard_use_only_exported_metrics(pipeline: Pipeline) -> None:
    ports = {role: free_port() for role in ("api", "relay", "consumer", "worker")}
    pipeline.start("api", "--host", "127.0.0.1", "--port", str(ports["api"]))
    for role in ("relay", "consumer", "worker"):
        pipeline.start(role, METRICS_PORT=str(ports[role]))
    (order_id,) = await pipeline.create_orders(1)
    await pipeline.wait_processed([order_id], within=60)

    exported: dict[str, set[str]] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for role, port in ports.items():

            async def scrape(port: int = port) -> str | None:
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/metrics")
                except httpx.TransportError:
                    return None
                return response.text if response.status_code == 200 else None

            text = await eventually(scrape, within=30, message=pipeline.logs)
            exported[role] = series_names(text)
    # Each role serves its own metrics: the API's HTTP series are not only in the test process.
    assert "oms_http_requests_total" in exported["api"]
    assert "oms_outbox_oldest_unpublished_age_seconds" in exported["relay"]
    assert "oms_events_consumed_total" in exported["consumer"]
    assert "oms_tasks_processed_total" in exported["worker"]

    every = set().union(*exported.values())
    used = referenced_metrics()
    unknown = {name: sorted(where) for name, where in used.items() if name not in every}
    assert set(unknown) <= PENDING, f"queried but exported by no role: {unknown}"
    assert set(used) >= PENDING, "a pending name is no longer used: drop it from PENDING"
