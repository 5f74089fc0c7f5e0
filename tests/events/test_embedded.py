"""`oms dev` with nothing configured: SQLite, in-process bus, the task in a thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from oms import migrate
from oms.events.embedded import with_embedded_pipeline
from oms.main import create_app
from tests.conftest import create_order, make_settings, register_and_login
from tests.support.processes import eventually


async def test_embedded_pipeline_processes_an_order_and_refreshes_the_cache(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    settings = make_settings(url, relay_poll_interval_seconds=0.1)
    assert settings.rabbitmq_url is None
    assert settings.celery_broker_url is None
    app = with_embedded_pipeline(create_app(settings), settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            user = await register_and_login(client)
            order = await create_order(client, user)
            assert order["processed_at"] is None

            async def processed() -> bool:
                response = await client.get(f"/orders/{order['id']}/", headers=user.headers)
                return response.json()["processed_at"] is not None

            await eventually(processed, 15)
