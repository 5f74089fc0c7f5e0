"""Settings: the one place configuration comes from (environment and `.env`)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import limits
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from oms.secret_key import GENERATE_HINT, secret_key_problem

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"  # noqa: S105 - refused outside local
MAX_ORDER_TOTAL = "99999999.99"

AppEnv = Literal["local", "test", "staging", "production"]
LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Every setting of the service; names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    app_env: AppEnv = "local"
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)

    # A password given on its own is put into the URL percent-escaped, so it may hold any
    # character (`@ : / % #` break a URL written by hand). It replaces a password in the URL.
    database_url_password: SecretStr | None = None
    database_url: str = "sqlite+aiosqlite:///./oms.db"
    db_pool_size: int = Field(10, ge=1, le=200)
    # Overflow connections are closed as soon as they are returned: under steady load that is
    # a connect (and new prepared statements) for a fraction of requests. Size the pool instead.
    db_max_overflow: int = Field(0, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(5.0, gt=0, le=60)
    db_connect_timeout_seconds: float = Field(3.0, gt=0, le=60)
    db_statement_timeout_seconds: float = Field(10.0, gt=0, le=600)
    # A pooled connection idle longer than this is pinged before use (0: before every use).
    db_pool_ping_idle_seconds: float = Field(5.0, ge=0, le=3600)

    redis_url: str | None = None
    redis_timeout_seconds: float = Field(0.1, gt=0, le=10)
    redis_max_connections: int = Field(64, ge=1, le=10_000)
    # After a Redis failure, calls skip Redis this long before one call probes it again.
    redis_breaker_cooldown_seconds: float = Field(1.0, gt=0, le=300)
    celery_broker_url: str | None = None
    rabbitmq_url_password: SecretStr | None = None
    rabbitmq_url: str | None = None

    cache_ttl_seconds: int = Field(300, ge=1, le=86_400)
    # false: every order read goes to the database (the bench's uncached GET; troubleshooting).
    cache_enabled: bool = True
    rate_limit_times: int = Field(100, ge=1)
    rate_limit_seconds: int = Field(60, ge=1)
    auth_rate_limit: str = "10/minute"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1"]
    )

    access_token_expire_minutes: int = Field(30, ge=1, le=7 * 24 * 60)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "oms"
    jwt_audience: str = "oms-api"
    # How long a process may remember that a token's user exists (SPEC 2.4): a cached read then
    # needs no database round trip; a deleted user's token is refused within this delay.
    user_recheck_seconds: float = Field(60.0, ge=0, le=3600)

    # OWASP's Argon2id baseline; pwdlib's heavier defaults cap logins near 10/s here.
    argon2_memory_cost_kib: int = Field(19_456, ge=8_192, le=1_048_576)
    argon2_time_cost: int = Field(2, ge=1, le=10)
    argon2_parallelism: int = Field(1, ge=1, le=16)
    password_hash_workers: int = Field(2, ge=1, le=64)

    # Well above the task's own 2 s: a task running longer than this counts as lost.
    processing_timeout_seconds: int = Field(30, ge=5, le=86_400)
    # How long the sweeper trusts a waiting mark when the queue cannot tell whether the task is
    # still in it (a message without the mark's header, from an older release).
    task_max_wait_seconds: int = Field(3600, ge=60, le=7 * 86_400)

    # Event bus (RabbitMQ). Names are settings so parallel test runs never share a queue.
    rabbitmq_exchange: str = Field("oms.events", min_length=1, max_length=200)
    new_order_queue: str = Field("new_order", min_length=1, max_length=200)
    # quorum: replicated over a cluster's nodes, broker-side delivery limit (the default).
    # classic: the queues of earlier releases, until they are moved (README "Deploying").
    rabbitmq_queue_type: Literal["quorum", "classic"] = "quorum"
    # Redeliveries of one message (requeued, or its consumer died) before the broker
    # dead-letters it; quorum queues only.
    rabbitmq_delivery_limit: int = Field(10, ge=1, le=1000)
    rabbitmq_connect_timeout_seconds: float = Field(5.0, gt=0, le=60)
    rabbitmq_publish_timeout_seconds: float = Field(5.0, gt=0, le=60)
    rabbitmq_reconnect_interval_seconds: float = Field(1.0, gt=0, le=60)
    # A process whose broker connection stays down this long exits non-zero for its supervisor.
    rabbitmq_resume_timeout_seconds: float = Field(120.0, gt=0, le=3600)

    relay_batch_size: int = Field(200, ge=1, le=5000)
    relay_poll_interval_seconds: float = Field(1.0, gt=0, le=60)
    relay_max_backoff_seconds: float = Field(3.0, gt=0, le=60)
    sweeper_interval_seconds: float = Field(5.0, gt=0, le=3600)
    sweeper_batch_size: int = Field(500, ge=1, le=10_000)

    # Unacked messages per consumer; about twice the batch size, so the next batch fills while
    # one is handed off. A consumer holds one database connection (one batch at a time).
    consumer_prefetch: int = Field(512, ge=1, le=5000)
    consumer_batch_size: int = Field(256, ge=1, le=2000)
    # How long a batch waits to fill up before it goes out anyway (latency at low rates).
    consumer_batch_wait_seconds: float = Field(0.001, ge=0, le=1)
    consumer_max_attempts: int = Field(5, ge=1, le=100)
    consumer_retry_base_seconds: float = Field(0.5, ge=0, le=60)
    consumer_retry_max_seconds: float = Field(8.0, ge=0, le=600)

    celery_queue: str = Field("oms.orders", min_length=1, max_length=200)
    celery_publish_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Unacked tasks of a worker that died are redelivered after this long (tasks take ~2 s).
    celery_visibility_timeout_seconds: int = Field(120, ge=1, le=86_400)
    # Tasks in flight per `oms worker`: the 2 s task is a wait, so threads are cheap (README
    # "Worker execution model"); the database pool stays DB_POOL_SIZE whatever this is.
    worker_concurrency: int = Field(1000, ge=1, le=4096)
    worker_pool: Literal["threads", "prefork", "solo"] = "threads"
    # The watchdog restarts the Celery worker when tasks have waited in its queue this long
    # while it had free slots and took none, or kept a slot no task held (at least 15 s; a
    # failed ack's: after a Redis restart Celery/kombu can consume with fewer slots, or none,
    # and never recover).
    worker_stall_seconds: float = Field(5.0, ge=1, le=3600)

    # Per-process Prometheus endpoint for the relay, consumer and worker; unset = disabled.
    metrics_port: int | None = Field(None, ge=1, le=65_535)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # What `oms api` allows one client (oms.server): the request line and headers together,
    # the time to send them and then the body, the idle time between keep-alive requests, and
    # the connections one process serves at once (beyond it: 503 and close).
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    header_timeout_seconds: float = Field(10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    keep_alive_seconds: float = Field(5.0, gt=0, le=600)
    max_connections: int = Field(1000, ge=1, le=100_000)

    log_level: LogLevel = "INFO"
    log_format: LogFormat | None = None

    # Tracing (oms.tracing) is on when either is set; the other OTEL_* variables are read by
    # the OpenTelemetry SDK itself. TRACES_FILE: where OTEL_TRACES_EXPORTER=console writes.
    otel_exporter_otlp_endpoint: str | None = None
    otel_traces_exporter: str | None = None
    traces_file: str | None = None

    @field_validator("cors_origins", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value or None

    @field_validator("auth_rate_limit")
    @classmethod
    def _rate_limit_expression(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError as exc:
            raise ValueError("must look like '10/minute' or '5 per 10 seconds'") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str, info: ValidationInfo) -> str:
        password = info.data.get("database_url_password")
        if password is not None and not value.startswith("sqlite"):
            value = with_password(value, password.get_secret_value())
        return async_database_url(value)

    @field_validator("rabbitmq_url")
    @classmethod
    def _rabbitmq_password(cls, value: str | None, info: ValidationInfo) -> str | None:
        password = info.data.get("rabbitmq_url_password")
        if value and password is not None:
            return with_password(value, password.get_secret_value())
        return value or None

    @model_validator(mode="after")
    def _secret_key_outside_local(self) -> Settings:
        if self.app_env != "local" and (problem := self.deployment_key_problem()):
            raise ValueError(f"{problem} (APP_ENV is {self.app_env!r})")
        return self

    def deployment_key_problem(self) -> str | None:
        """Why SECRET_KEY cannot sign the tokens of a deployment, or None.

        Required whenever APP_ENV is not `local`, and by every command that serves the API
        except `oms dev` on a loopback address, whatever APP_ENV says (`oms.cli`,
        `oms.main.create_app_from_env`): the development key is in the source, so anyone could
        forge a token signed with it. The entropy rule lives in oms.secret_key.
        """
        secret = self.secret_key.get_secret_value()
        if secret == DEV_SECRET_KEY:
            return (
                "SECRET_KEY is not set: the built-in development key is a public placeholder, "
                f"only for `oms dev` on a loopback address; {GENERATE_HINT} and set SECRET_KEY "
                "in the environment"
            )
        return secret_key_problem(secret)

    @model_validator(mode="after")
    def _no_wildcard_origin_with_credentials(self) -> Settings:
        if "*" in self.cors_origins and self.cors_allow_credentials:
            raise ValueError(
                "CORS_ORIGINS='*' cannot be combined with CORS_ALLOW_CREDENTIALS=true: "
                "list the allowed origins explicitly"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return "console" if self.app_env == "local" else "json"


def with_password(url: str, password: str) -> str:
    """`url` with `password` in its user info, percent-escaped: every driver here (SQLAlchemy,
    aio-pika, redis-py, kombu) decodes the escapes, so any character survives the trip."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0] if at else ""
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def async_database_url(url: str) -> str:
    """Accept the plain URLs people paste and pick this service's async drivers."""
    for plain, driver in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        raise ValueError("must be a postgresql:// or sqlite:// URL")
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment, for the command line entry points."""
    return Settings()
