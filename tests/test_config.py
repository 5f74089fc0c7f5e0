from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from oms.config import DEV_SECRET_KEY, Settings, is_loopback
from tests.support.processes import OmsProcess, eventually, free_port, oms_env


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_local_defaults_need_no_configuration() -> None:
    defaults = settings()
    assert defaults.app_env == "local"
    assert defaults.database_url == "sqlite+aiosqlite:///./oms.db"
    assert defaults.cache_ttl_seconds == 300
    assert defaults.access_token_expire_minutes == 30
    assert defaults.effective_log_format == "console"


@pytest.mark.parametrize(
    "secret",
    [DEV_SECRET_KEY, "short-but-random-Zx81", "change-me-" + "a" * 40, "a" * 64, "ab" * 20],
)
def test_production_refuses_weak_secrets(secret: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings(app_env="production", secret_key=secret)


def test_production_accepts_a_random_secret() -> None:
    configured = settings(app_env="production", secret_key=secrets.token_urlsafe(48))
    assert configured.effective_log_format == "json"


def test_plain_database_urls_get_async_drivers() -> None:
    assert settings(database_url="postgresql://u@h/db").database_url == (
        "postgresql+asyncpg://u@h/db"
    )
    assert settings(database_url="sqlite:///x.db").database_url == "sqlite+aiosqlite:///x.db"
    with pytest.raises(ValidationError, match="database_url"):
        settings(database_url="mysql://u@h/db")


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings(_env_file=None).cors_origins == ["https://a.example", "https://b.example"]  # type: ignore[call-arg]


def _oms(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oms.cli", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_value_fails_at_start_naming_the_variable() -> None:
    result = _oms("migrate", CACHE_TTL_SECONDS="soon")
    assert result.returncode == 2
    assert "Invalid configuration: CACHE_TTL_SECONDS" in result.stderr


def test_production_with_the_dev_secret_refuses_to_start() -> None:
    result = _oms("migrate", APP_ENV="production")
    assert result.returncode == 2
    assert "SECRET_KEY" in result.stderr
    assert DEV_SECRET_KEY not in result.stderr


@pytest.mark.parametrize(
    "command",
    [("api", "--port", "1"), ("dev", "--host", "0.0.0.0", "--port", "1")],  # noqa: S104
    ids=["api", "dev-on-all-interfaces"],
)
def test_serving_others_refuses_the_development_key_whatever_app_env_says(
    command: tuple[str, ...],
) -> None:
    """APP_ENV=local (a copied .env.example, a container's env file) does not make a served API
    safe to sign tokens with the key everyone can read in the source."""
    for extra in ({}, {"SECRET_KEY": "too-short"}):
        result = _oms(*command, APP_ENV="local", **extra)
        assert result.returncode == 2, result.stderr
        assert "Invalid configuration: SECRET_KEY" in result.stderr
        assert "openssl rand -hex 32" in result.stderr
        assert DEV_SECRET_KEY not in result.stderr


def test_the_deployment_app_factory_refuses_the_development_key() -> None:
    """Any ASGI server pointed at `oms.main:create_app_from_env` (not only `oms api`)."""
    result = subprocess.run(
        [sys.executable, "-c", "from oms.main import create_app_from_env; create_app_from_env()"],
        env={"PATH": "/usr/bin:/bin", "APP_ENV": "local"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Invalid configuration: SECRET_KEY is not set" in result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_only_loopback_addresses_are_private(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])  # noqa: S104
def test_other_addresses_are_public(host: str) -> None:
    assert not is_loopback(host)


async def test_oms_dev_on_loopback_still_needs_no_configuration(tmp_path: Path) -> None:
    port = free_port()
    env = oms_env(database_url=f"sqlite:///{tmp_path / 'dev.db'}")
    dev = OmsProcess("dev", env, tmp_path, "--host", "127.0.0.1", "--port", str(port)).start()

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                response = await client.get(f"http://127.0.0.1:{port}/health")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    try:
        await eventually(healthy, within=30, message=dev.output)
    finally:
        dev.stop()
