"""The `oms` command: one entry point for every role."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import uvicorn
import uvloop
from pydantic import ValidationError

from oms import migrate
from oms.config import Settings, get_settings
from oms.logging import configure_logging


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    """Everything in one process with embedded defaults, for a first look."""
    from oms.events.embedded import with_embedded_pipeline
    from oms.main import create_app

    migrate.upgrade(settings.database_url)
    print(f"OMS dev server: http://{args.host}:{args.port}/docs", file=sys.stderr)
    app = with_embedded_pipeline(create_app(settings), settings)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0


def _api(settings: Settings, args: argparse.Namespace) -> int:
    uvicorn.run(
        "oms.main:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        proxy_headers=True,
        forwarded_allow_ips=",".join(settings.forwarded_allow_ips),
        timeout_graceful_shutdown=20,
        log_config=None,
    )
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    if args.downgrade:
        migrate.downgrade(settings.database_url, args.downgrade)
    else:
        migrate.upgrade(settings.database_url, args.revision)
    return 0


def _run_async(main: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _relay(settings: Settings, args: argparse.Namespace) -> int:
    from oms.events.relay import run_relay

    if not settings.rabbitmq_url:
        print("oms relay needs RABBITMQ_URL (oms dev embeds an in-process bus)", file=sys.stderr)
        return 2
    return _run_async(run_relay(settings))


def _consumer(settings: Settings, args: argparse.Namespace) -> int:
    from oms.events.consumer import run_consumer

    if not settings.rabbitmq_url:
        print("oms consumer needs RABBITMQ_URL", file=sys.stderr)
        return 2
    return _run_async(run_consumer(settings))


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    """The Celery worker; SIGTERM is Celery's warm shutdown (tasks in progress finish)."""
    from oms.events.metrics import serve_metrics
    from oms.worker.celery_app import configure_celery

    if not settings.celery_broker_url:
        print("oms worker needs CELERY_BROKER_URL", file=sys.stderr)
        return 2
    app = configure_celery(settings)
    serve_metrics(settings)
    argv = [
        "--quiet",  # no banner: stdout carries JSON log lines only
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={args.concurrency or settings.worker_concurrency}",
        f"--pool={settings.worker_pool}",
        f"--queues={settings.celery_queue}",
        f"--hostname=oms-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    try:
        app.worker_main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oms", description="Order management service")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser(
        "dev", help="all roles in one process (SQLite and in-process by default)"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(handler=_dev)

    api = commands.add_parser("api", help="serve the HTTP API with uvicorn")
    api.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a server binds all interfaces
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(handler=_api)

    relay = commands.add_parser(
        "relay", help="publish the outbox to RabbitMQ and re-dispatch overdue orders"
    )
    relay.set_defaults(handler=_relay)

    consumer = commands.add_parser(
        "consumer", help="consume new_order events and queue process_order tasks"
    )
    consumer.set_defaults(handler=_consumer)

    worker = commands.add_parser("worker", help="run the Celery worker (process_order)")
    worker.add_argument("--concurrency", type=int, default=None, help="default: WORKER_CONCURRENCY")
    worker.set_defaults(handler=_worker)

    mig = commands.add_parser(
        "migrate", help="apply database migrations (safe to run concurrently)"
    )
    mig.add_argument("revision", nargs="?", default="head")
    mig.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")
    mig.set_defaults(handler=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            variable = ".".join(str(part) for part in error["loc"]).upper() or "configuration"
            print(f"Invalid configuration: {variable}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings)
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    return handler(settings, args)


if __name__ == "__main__":
    sys.exit(main())
