"""Routes answer with and without the trailing slash, without a redirect."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter


class SlashOptionalRouter(APIRouter):
    """Registers `/path/` for the schema and `/path` as a hidden twin."""

    def add_api_route(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        twin = path.rstrip("/")
        # `/orders/` is the prefix and "/": its twin is the prefix with an empty path.
        if (twin or self.prefix) and twin != path:
            super().add_api_route(twin, endpoint, **{**kwargs, "include_in_schema": False})
