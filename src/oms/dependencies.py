"""Accessors for the per-process resources the lifespan puts on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from oms.config import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(get_settings)]
