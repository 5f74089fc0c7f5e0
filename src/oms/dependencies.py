"""Accessors for the per-process resources the lifespan puts on `app.state`.

Dependencies that only read `app.state` are `async def`: FastAPI runs a plain `def` dependency in
its thread pool, a thread hand-off per request for a dictionary lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from oms.config import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(get_settings)]
