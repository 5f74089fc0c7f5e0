"""Prometheus metrics of the HTTP API and the `/metrics` endpoint.

Every role shares prometheus-client's default registry. With several uvicorn workers
(`oms api --workers N`), `PROMETHEUS_MULTIPROC_DIR` must be set before the workers start (`oms
api` does it): each worker then writes its samples to files in that directory and a scrape, which
lands on any one worker, aggregates all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
# The label of every request no route matched: raw paths would make cardinality unbounded.
UNMATCHED_ROUTE = "<unmatched>"

HTTP_REQUESTS = Counter(
    "oms_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "oms_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Label children resolved once per (method, route, status): `.labels()` takes a lock each call.
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_http_request(method: str, route: str, status: int, seconds: float) -> None:
    """Counts one answered request; called once per request by the access middleware."""
    # Arbitrary methods would be another unbounded label; they are folded into one.
    key = (method if method in _KNOWN_METHODS else "OTHER", route, status)
    children = _children.get(key)
    if children is None:
        labels = (key[0], route, str(status))
        children = (HTTP_REQUESTS.labels(*labels), HTTP_REQUEST_DURATION.labels(*labels))
        _children[key] = children
    counter, histogram = children
    counter.inc()
    histogram.observe(seconds)


def render_latest() -> bytes:
    """The exposition text: this process's registry, or every worker's files in multi-process."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


router = APIRouter(tags=["observability"])


@router.get(
    METRICS_PATH,
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics() -> Response:
    # A plain `def`: FastAPI runs it in the thread pool, so reading the multi-process files
    # never blocks the event loop.
    return Response(render_latest(), media_type=CONTENT_TYPE_LATEST)


_METRIC_FILE_PATTERNS = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


@contextmanager
def multiprocess_directory() -> Iterator[Path]:
    """Provides `PROMETHEUS_MULTIPROC_DIR` for the workers about to be started.

    A directory given by the environment is reused and emptied of stale metric files (a previous
    run's counters would otherwise be added to this run's); otherwise a private temporary one is
    created and removed afterwards.
    """
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for pattern in _METRIC_FILE_PATTERNS:
            for stale in directory.glob(pattern):
                stale.unlink(missing_ok=True)
        yield directory
        return
    directory = Path(tempfile.mkdtemp(prefix="oms-prometheus-"))
    os.environ[MULTIPROC_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)
