"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class DependencyCheck:
    """A readiness probe. A critical dependency down makes the service unready (503);
    any other only degrades it."""

    name: str
    probe: Callable[[], Awaitable[Any]]
    critical: bool


def database_check(engine: AsyncEngine) -> DependencyCheck:
    async def probe() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return DependencyCheck("database", probe, critical=True)


def broker_check(rabbitmq_url: str) -> DependencyCheck:
    """RabbitMQ is reachable. The API never talks to it (the outbox decouples them), so a TCP
    connect is all readiness needs; a broker outage only degrades the service."""
    url = urlsplit(rabbitmq_url)
    host, port = url.hostname or "localhost", url.port or 5672

    async def probe() -> None:
        _reader, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()

    return DependencyCheck("rabbitmq", probe, critical=False)


@router.get("/health", summary="Liveness: the process serves requests")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    summary="Readiness: each dependency's state",
    responses={503: {"description": "The database is unreachable"}},
)
async def ready(request: Request) -> JSONResponse:
    checks: list[DependencyCheck] = request.app.state.readiness_checks
    results = await asyncio.gather(*(_run(check) for check in checks))
    states = {check.name: ok for check, ok in zip(checks, results, strict=True)}
    if not all(ok for check, ok in zip(checks, results, strict=True) if check.critical):
        overall, code = "unavailable", 503
    elif not all(results):
        overall, code = "degraded", 200
    else:
        overall, code = "ok", 200
    body = {
        "status": overall,
        "dependencies": {name: "ok" if ok else "unavailable" for name, ok in states.items()},
    }
    return JSONResponse(body, status_code=code)


async def _run(check: DependencyCheck) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await check.probe()
    except Exception:
        return False
    return True
