"""Swagger UI and ReDoc served from the app itself: no CDN, so `/docs` works offline.

FastAPI's default pages load their JavaScript and CSS from a CDN, which leaves a blank page on
a machine without internet access. The assets come from the `fastapi-offline` package, which
ships Swagger UI 5 and ReDoc builds; the pages are FastAPI's own HTML pointed at them.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
# Only these files are served: a fixed set, not a directory listing or a path from the client.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
# The assets change only with the package version, which is part of their URL's cache key
# through the page that links them; a day keeps reloads cheap without pinning a stale UI for long.
_CACHE_CONTROL = "public, max-age=86400"


def _assets_directory() -> Path:
    # The package is installed as files (a wheel, not a zip): as_file yields their real path,
    # which stays valid after the block.
    with as_file(files("fastapi_offline") / "static") as directory:
        return Path(directory)


def add_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI), `/redoc` and their assets; the app is created with docs_url=None."""
    directory = _assets_directory()
    missing = [name for name in ASSETS if not (directory / name).is_file()]
    if missing:  # a broken install would otherwise show a blank page at runtime
        raise RuntimeError(f"fastapi-offline ships no {missing} in {directory}")
    router = APIRouter(include_in_schema=False)

    def asset_url(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"

    @router.get(DOCS_URL)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=asset_url(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset_url(request, "swagger-ui.css"),
            swagger_favicon_url=asset_url(request, "favicon.png"),
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @router.get(OAUTH2_REDIRECT_URL)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(REDOC_URL)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset_url(request, "redoc.standalone.js"),
            redoc_favicon_url=asset_url(request, "favicon.png"),
            with_google_fonts=False,
        )

    @router.get(ASSETS_URL + "/{name}")
    async def asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="Not Found")
        return FileResponse(
            directory / name, media_type=media_type, headers={"Cache-Control": _CACHE_CONTROL}
        )

    app.include_router(router)
