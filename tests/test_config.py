from __future__ import annotations

import secrets
import subprocess
import sys

import pytest
from pydantic import ValidationError

from oms.config import DEV_SECRET_KEY, Settings


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
