"""/docs and /redoc load their scripts and styles from the app, never from a CDN."""

from __future__ import annotations

import re

import httpx
import pytest


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_pages_reference_only_the_apps_own_assets(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", response.text)
    sources += re.findall(r"""url\s*:\s*['"]([^'"]+)['"]""", response.text)  # the schema
    assert sources
    assert [s for s in sources if not s.startswith("/")] == [], sources
    for source in sources:
        assert (await client.get(source)).status_code == 200, source


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")],
)
async def test_assets_are_served_with_their_type(
    client: httpx.AsyncClient, name: str, media_type: str
) -> None:
    response = await client.get(f"/docs/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert len(response.content) > 10_000


@pytest.mark.parametrize("name", ["nope.js", "..%2F..%2Fconfig.py", "index.html"])
async def test_only_the_known_assets_are_served(client: httpx.AsyncClient, name: str) -> None:
    assert (await client.get(f"/docs/assets/{name}")).status_code == 404
