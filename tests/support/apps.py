"""Dedicated app instances, for tests that need their own settings."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from oms.config import Settings
from oms.main import create_app


def unique_client_ip() -> str:
    """A peer address of its own, so per-IP rate limits of different tests never mix."""
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2] or 1}"


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with LifespanManager(app):
        yield app


def client_for(app: FastAPI, client_ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, client_ip: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as app, client_for(app, client_ip) as client:
        yield client
