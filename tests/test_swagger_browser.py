"""`/docs` in a real headless Chromium, with every request off the API's origin refused.

Swagger UI must render from the app's own assets (no CDN), log in through *Authorize* with a
real account, and create an order with *Try it out*. Debian's chromium drives it (no browser
download); `.ci/run` installs it when missing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.conftest import PASSWORD, unique_email
from tests.support.server import RunningApi, api_environment, running_api
from tests.support.services import IN_CI

CHROMIUM = os.environ.get("OMS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]
# Set to a directory (docs/) to keep screenshots: swagger-ui.png (the operations, logged in) and
# swagger-ui-try-it-out.png (the order Try it out created).
SCREENSHOTS_ENV = "OMS_DOCS_SCREENSHOTS"
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def api(postgres_url: str) -> Iterator[RunningApi]:
    with running_api(api_environment(postgres_url)) as running:
        yield running


@pytest.fixture
def page(browser: Browser, api: RunningApi) -> Iterator[tuple[Page, list[str]]]:
    """A page that may reach the API only; what it tried elsewhere is listed."""
    origin = urlsplit(api.url).netloc
    refused: list[str] = []

    def only_the_api(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == origin or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.route("**/*", only_the_api)
    yield page, refused
    context.close()


def test_swagger_ui_renders_logs_in_and_creates_an_order(
    api: RunningApi, page: tuple[Page, list[str]]
) -> None:
    browser_page, refused = page
    email = unique_email()
    registered = httpx.post(
        f"{api.url}/register/", json={"email": email, "password": PASSWORD}, timeout=10
    )
    assert registered.status_code == 201

    browser_page.goto(f"{api.url}/docs")
    # The operations render: Swagger UI loaded its script and read /openapi.json.
    expect(browser_page.locator(".opblock").first).to_be_visible()
    paths = browser_page.locator(".opblock-summary-path").all_inner_texts()
    for path in ("/register/", "/token/", "/orders/", "/orders/{order_id}/"):
        assert any(text.replace("\u200b", "") == path for text in paths), paths

    # Authorize: the OAuth2 password flow against /token/ with the real account.
    browser_page.locator("button.authorize").first.click()
    dialog = browser_page.locator(".dialog-ux")
    dialog.locator("#oauth_username").fill(email)
    dialog.locator("#oauth_password").fill(PASSWORD)
    dialog.locator(".auth-btn-wrapper button.authorize").click()
    # "Authorized" and a Logout button appear only once /token/ issued a token.
    expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
    expect(dialog.get_by_role("button", name="Remove authorization")).to_have_text("Logout")
    dialog.get_by_role("button", name="Close").first.click()
    screenshots = os.environ.get(SCREENSHOTS_ENV)
    if screenshots:
        browser_page.screenshot(path=str(Path(screenshots) / "swagger-ui.png"))

    # Try it out: POST /orders/ with a body typed into the editor.
    create = browser_page.locator(".opblock-post").filter(
        has=browser_page.locator('.opblock-summary-path[data-path="/orders/"]')
    )
    create.locator(".opblock-summary").click()
    create.locator("button.try-out__btn").click()
    body = {"items": [{"product_id": "SWAGGER-1", "name": "From the docs", "quantity": 3,
                       "price": 2.5}]}  # fmt: skip
    create.locator("textarea.body-param__text").fill(json.dumps(body))
    create.locator("button.execute").click()
    status = create.locator(".live-responses-table .response .response-col_status").first
    expect(status).to_have_text("201")
    expect(create.locator(".live-responses-table .microlight").first).to_contain_text(
        '"total_price": 7.5'
    )

    if screenshots:
        # The server's answer at the top of the view (the curl line above it shows the token).
        status.evaluate("cell => { cell.scrollIntoView({block: 'start'}); scrollBy(0, -60); }")
        browser_page.screenshot(path=str(Path(screenshots) / "swagger-ui-try-it-out.png"))

    token = httpx.post(
        f"{api.url}/token/", data={"username": email, "password": PASSWORD}, timeout=10
    ).json()["access_token"]
    user_id = registered.json()["id"]
    listed = httpx.get(
        f"{api.url}/orders/user/{user_id}/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    assert [order["items"][0]["product_id"] for order in listed] == ["SWAGGER-1"]
    assert refused == [], "the page tried to load something from outside the app"
