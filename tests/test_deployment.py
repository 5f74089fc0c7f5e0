"""What ships: the wheel (with its migrations), the image recipe, the compose file, .env.example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from oms.config import Settings
from tests.support.services import service_unavailable

ROOT = Path(__file__).resolve().parents[1]
OMS_ROLES = ("migrate", "api", "relay", "consumer", "worker")
COMPOSE_ENV = {
    "OMS_ENV_FILE": ".env.example",
    "POSTGRES_PASSWORD": "test-placeholder",
    "RABBITMQ_PASSWORD": "test-placeholder",
}


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(path) for path in (ROOT / ".tools" / "bin" / name,) if path.exists()), None
    )
    if found is None:
        service_unavailable(name, FileNotFoundError(f"{name} is not installed"))
    assert found is not None
    return found


def _docker_compose(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    binary = _tool("docker-compose")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POSTGRES_", "RABBITMQ_", "COMPOSE_"))
    }
    return subprocess.run(
        [binary, "-f", "docker-compose.yml", *args],
        cwd=ROOT,
        env={**env, **COMPOSE_ENV, **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_validates() -> None:
    result = _docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_generated_passwords() -> None:
    result = _docker_compose("config", "-q", POSTGRES_PASSWORD="")
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = _docker_compose("config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_every_role_runs_a_tested_command_after_migrating(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # The suite runs each of these as a plain process (migrate and api --workers 2 here).
    assert {role: services[role]["command"] for role in OMS_ROLES} == {
        "migrate": ["migrate"],
        "api": ["api", "--workers", "2"],
        "relay": ["relay"],
        "consumer": ["consumer"],
        "worker": ["worker"],
    }
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for role in OMS_ROLES[1:]:
        assert services[role]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert services[role]["healthcheck"]["test"][:3] == ["CMD", "oms", "probe"]
    for backend in ("postgres", "redis", "rabbitmq"):
        assert services[backend]["healthcheck"]["test"]
    assert services["api"]["healthcheck"]["test"][-1].endswith("/health/ready")
    assert "management" in services["rabbitmq"]["image"]
    # prometheus-data belongs to the `observability` profile (tests/test_observability_deploy.py).
    assert set(compose["volumes"]) == {
        "postgres-data", "redis-data", "rabbitmq-data", "prometheus-data",
    }  # fmt: skip


def test_cache_and_celery_broker_use_separate_redis_databases(compose: dict[str, Any]) -> None:
    environment = compose["services"]["worker"]["environment"]
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    assert environment["CELERY_BROKER_URL"] == "redis://redis:6379/1"


def _documented_variables() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_env_example_documents_every_setting() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    assert settings - _documented_variables() == set()


def test_env_example_holds_no_usable_secret() -> None:
    assigned = dict(
        re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    )
    for name in ("SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD"):
        assert name not in assigned
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(_env_file=ROOT / ".env.example", app_env="production")  # type: ignore[call-arg]


def test_the_wheel_ships_the_migrations(tmp_path: Path) -> None:
    """The image installs the wheel, not the checkout: `oms migrate` needs the scripts inside."""
    uv = _tool("uv")
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path), "--quiet"],
        cwd=ROOT,
        check=True,
        timeout=300,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("oms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    assert {"oms/_migrations/env.py", "oms/_migrations/script.py.mako"} <= names
    versions = {Path(name).name for name in names if name.startswith("oms/_migrations/versions/")}
    assert versions == {path.name for path in (ROOT / "migrations" / "versions").glob("*.py")}
    assert not any("__pycache__" in name for name in names)


def test_the_image_runs_as_a_non_root_user_from_the_lock_file() -> None:
    """The recipe; tests/test_image.py builds it and runs every role from it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", dockerfile, flags=re.M)
    instructions = re.findall(r"^([A-Z]+) (.*)$", dockerfile, flags=re.M)
    runtime = dockerfile.split("AS runtime", 1)[1]

    assert [name for _, name in stages] == ["uv", "build", "runtime"]
    assert "uv sync --locked --no-dev --no-editable" in dockerfile
    assert re.search(r"^USER (?!root|0\b)\S+", runtime, flags=re.M)
    assert "HEALTHCHECK" in runtime
    assert 'CMD ["oms", "probe", "--api"]' in runtime  # the port the API's --port gives
    assert re.search(r'^ENTRYPOINT \["oms"\]', runtime, flags=re.M)
    assert not [args for verb, args in instructions if verb in {"ENV", "ARG"} and "SECRET" in args]
    assert "COPY --from=build /opt/oms /opt/oms" in runtime


def _compose_roles_with(env_file: Path) -> dict[str, dict[str, str]]:
    """Each OMS role's environment as Compose would give it, with `env_file` as the project's
    `.env` (both for `${...}` in the compose file and for `env_file:`), nothing from the shell."""
    binary = _tool("docker-compose")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POSTGRES_", "RABBITMQ_", "COMPOSE_", "APP_ENV", "SECRET_KEY"))
    }
    result = subprocess.run(
        [binary, "--env-file", str(env_file), "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        env={**env, "OMS_ENV_FILE": str(env_file)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    return {
        role: {name: str(value) for name, value in services[role]["environment"].items()}
        for role in OMS_ROLES
    }


def _settings_in(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_copied_env_example_never_runs_a_role_on_the_development_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual set-up: `cp .env.example .env`, fill in the two passwords the compose file asks
    for, `docker compose up`. Even a `.env` saying APP_ENV=local (an older example did) leaves
    every role a deployment, which refuses to start without a SECRET_KEY of its own."""
    env_file = tmp_path / ".env"
    example = (ROOT / ".env.example").read_text()
    env_file.write_text(
        example + "\nAPP_ENV=local\nPOSTGRES_PASSWORD=pg-pass\nRABBITMQ_PASSWORD=mq-pass\n"
    )
    roles = _compose_roles_with(env_file)

    assert {role: environment["APP_ENV"] for role, environment in roles.items()} == dict.fromkeys(
        OMS_ROLES, "production"
    )
    for environment in roles.values():
        assert "SECRET_KEY" not in environment
        with pytest.raises(ValidationError) as refused:
            _settings_in(environment, monkeypatch)
        message = str(refused.value)
        assert "SECRET_KEY is not set" in message
        assert "openssl rand -hex 32" in message


def test_the_env_make_up_generates_runs_every_role_on_its_own_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(
        ["make", "--silent", "-C", str(tmp_path), "-f", str(ROOT / "Makefile"), ".env",
         f"PYTHON={sys.executable}"],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    env_file = tmp_path / ".env"
    assert "APP_ENV" not in env_file.read_text()
    roles = _compose_roles_with(env_file)

    secrets = {environment["SECRET_KEY"] for environment in roles.values()}
    assert len(secrets) == 1
    for environment in roles.values():
        assert environment["APP_ENV"] == "production"
        configured = _settings_in(environment, monkeypatch)
        assert configured.app_env == "production"
        assert configured.deployment_key_problem() is None
