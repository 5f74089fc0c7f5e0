"""Routes answer with and without the trailing slash, without a redirect; a request's route
template, the one label the metrics, the access log and the rate limits key on."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.types import Scope

from oms.metrics import UNMATCHED_ROUTE


class SlashOptionalRouter(APIRouter):
    """Registers `/path/` for the schema and `/path` as a hidden twin."""

    def add_api_route(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        twin = path.rstrip("/")
        # `/orders/` is the prefix and "/": its twin is the prefix with an empty path.
        if (twin or self.prefix) and twin != path:
            super().add_api_route(twin, endpoint, **{**kwargs, "include_in_schema": False})


def route_template(scope: Scope) -> str:
    """The matched route's path template, or one label for everything unmatched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # FastAPI's own pages (/docs, /openapi.json) match without setting `route`; they have no
    # path parameters, so their path is their template.
    if scope.get("endpoint") is not None and not scope.get("path_params"):
        static_path: str = scope["path"]
        return static_path
    return UNMATCHED_ROUTE
