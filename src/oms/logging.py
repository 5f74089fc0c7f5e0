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
from typing import Any, TextIO

import orjson
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
    """Masks secret-looking keys and passwords embedded in URLs, at any nesting depth.

    Runs on every line (the access line of every request): the top level is rewritten in place,
    with the common cases (numbers, plain strings) costing one cached lookup each.
    """
    for key, value in event_dict.items():
        if value is None:
            continue
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            if "://" in value:
                event_dict[key] = _redact_url(value)
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = _redact_value(value)
    return event_dict


@lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def _redact_url(text: str) -> str:
    return _URL_PASSWORD.sub(r"\g<prefix>" + REDACTED + "@", text)


def _redact_value(value: Any) -> Any:
    """A redacted copy: nested containers may belong to the caller and are not modified."""
    if isinstance(value, str):
        return _redact_url(value) if "://" in value else value
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if item is not None and isinstance(key, str) and _is_secret_key(key)
            else _redact_value(item)
            for key, item in value.items()
        }
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
]
# Last before rendering, so tracebacks and stdlib messages are covered too.
_FINAL_PROCESSORS: list[structlog.types.Processor] = [
    structlog.processors.format_exc_info,
    redact_secrets,
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


def _orjson_text(value: Any, **options: Any) -> str:
    """structlog's JSON lines through orjson: the standard library's encoder was about a
    quarter of the cost of the access line every request writes."""
    return orjson.dumps(
        value, default=options.get("default"), option=orjson.OPT_NON_STR_KEYS
    ).decode()


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's direct writer, carrying the name `add_logger_name` reports."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library (uvicorn, SQLAlchemy, Celery...) to stdout.

    structlog's own loggers render and write directly (about 4 times cheaper per line than going
    through `logging`, which matters for the access line of every request); standard library
    records get the same processors through `ProcessorFormatter`. Both write whole lines to the
    same stdout.
    """
    renderer: structlog.types.Processor
    if settings.effective_log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_text)
    stream = sys.stdout

    def logger_factory(*args: Any) -> _NamedWriteLogger:
        # `structlog.get_logger(__name__)` passes the module name through.
        return _NamedWriteLogger(stream, args[0] if args and isinstance(args[0], str) else "oms")

    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            *_FINAL_PROCESSORS,
            renderer,
        ],
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(settings.log_level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.ExtraAdder(), drop_noise],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_FINAL_PROCESSORS,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "alembic"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # uvicorn's access line lacks the request id and the route: RequestMiddleware logs its own.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    quiet_level = max(logging.WARNING, logging.getLevelName(settings.log_level))
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet_level)
