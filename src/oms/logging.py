"""Structured logging for every role: JSON lines, or console rendering in `local`.

`configure_logging(settings)` is the one entry point: the API, the relay, the consumer, the Celery
worker and the command line call it once at start. structlog and the standard library loggers
(uvicorn, SQLAlchemy, Alembic, Celery, aio-pika/aiormq) then share one handler on stdout, one
format and the same processors, so every line carries the bound context (`request_id`,
`order_id`, `event_id`) and no secret.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from oms.config import Settings

REDACTED = "[REDACTED]"
# Keys whose values never reach a log line, whatever logged them.
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|authorization|api[_-]?key|cookie|credential", re.IGNORECASE
)
# `scheme://user:password@host` -> `scheme://user:[REDACTED]@host` inside any logged string.
_URL_PASSWORD = re.compile(r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
# Extras that duplicate the message for other renderers (uvicorn's coloured copy).
_NOISE_KEYS = ("color_message",)


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Masks secret-looking keys and passwords embedded in URLs, at any nesting depth."""
    return _redact_mapping(event_dict)


@lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def _redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: REDACTED
        if isinstance(key, str) and value is not None and _is_secret_key(key)
        else _redact_value(value)
        for key, value in values.items()
    }


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<prefix>" + REDACTED + "@", value) if "://" in value else value
    if isinstance(value, Mapping):
        return _redact_mapping(value)
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


def drop_noise(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in _NOISE_KEYS:
        event_dict.pop(key, None)
    return event_dict


_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
    drop_noise,
]

# Chatty below WARNING whatever LOG_LEVEL says: SQLAlchemy would log every statement at INFO.
_QUIET_LOGGERS = (
    "sqlalchemy",
    "aiormq",
    "aio_pika",
    "asyncio",
    "multipart",
    "alembic.runtime.plugins",
)


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library (uvicorn, SQLAlchemy, Celery...) to stdout."""
    renderer: structlog.types.Processor
    if settings.effective_log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            # Last before rendering, so tracebacks and stdlib messages are covered too.
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "alembic"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # uvicorn's access line lacks the request id and the route: AccessLogMiddleware logs its own.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    quiet_level = max(logging.WARNING, logging.getLevelName(settings.log_level))
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet_level)
    _keep_celery_off_the_root_logger()


def _keep_celery_off_the_root_logger() -> None:
    """A Celery worker replaces the root handlers unless someone answers `setup_logging`.

    Answering it (doing nothing: this module already configured everything) keeps Celery's and
    the tasks' records on this handler and format. Importing Celery costs about 0.4 s, so only a
    process that already imported it (the worker: import the Celery app, then call
    `configure_logging`) connects the receiver.
    """
    if "celery" not in sys.modules:
        return
    from celery import signals

    signals.setup_logging.connect(_logging_already_configured, weak=False)


def _logging_already_configured(**_: Any) -> None:
    return None
