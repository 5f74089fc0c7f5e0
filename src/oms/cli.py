"""The `oms` command: one entry point for every role.

Heavy modules are imported by the subcommand that needs them: `oms probe` runs as a container
health check every few seconds and must start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from oms.config import Settings, get_settings, is_loopback
from oms.logging import configure_logging

CHECK_TIMEOUT_SECONDS = 3.0


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    """Everything in one process with embedded defaults, for a first look."""
    import uvicorn

    from oms import migrate
    from oms.events.embedded import with_embedded_pipeline
    from oms.main import create_app

    migrate.upgrade(settings.database_url)
    print(f"OMS dev server: http://{args.host}:{args.port}/docs", file=sys.stderr)
    uvicorn.run(
        with_embedded_pipeline(create_app(settings), settings),
        host=args.host,
        port=args.port,
        proxy_headers=True,  # the rate limiter's client IP, from FORWARDED_ALLOW_IPS only
        forwarded_allow_ips=",".join(settings.forwarded_allow_ips),
        log_config=None,
        access_log=False,  # RequestMiddleware writes one line per request instead
    )
    return 0


def _api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from oms.metrics import MULTIPROC_DIR_ENV, multiprocess_directory

    # Several workers share their metrics through files; the directory must exist before they
    # start (they inherit the variable) and is emptied so a restart starts from zero.
    shared_metrics = args.workers > 1 or bool(os.environ.get(MULTIPROC_DIR_ENV))
    with multiprocess_directory() if shared_metrics else nullcontext():
        uvicorn.run(
            "oms.main:create_app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            # httptools plus limits on header size, header and body time, connections.
            http="oms.server:LimitedHttpToolsProtocol",
            timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]
            proxy_headers=True,
            forwarded_allow_ips=",".join(settings.forwarded_allow_ips),
            timeout_graceful_shutdown=20,
            log_config=None,
            access_log=False,  # RequestMiddleware writes one line per request instead
        )
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from oms import migrate

    if args.create_database and migrate.create_database_if_missing(settings.database_url):
        print("Created the database", file=sys.stderr)
    if args.downgrade:
        migrate.downgrade(settings.database_url, args.downgrade)
    else:
        migrate.upgrade(settings.database_url, args.revision)
    return 0


def _run_async(main: Coroutine[Any, Any, int]) -> int:
    import uvloop

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
    """A supervising parent that runs the Celery worker as its child and restarts it when it
    exits (oms.worker.supervisor); in the child, the Celery worker itself."""
    from oms.worker.supervisor import CHILD_ENV, Supervisor

    if not settings.celery_broker_url:
        print("oms worker needs CELERY_BROKER_URL", file=sys.stderr)
        return 2
    if os.environ.get(CHILD_ENV) != "1":
        child_args = [f"--concurrency={args.concurrency}"] if args.concurrency else []
        return Supervisor(child_args).run()
    return _celery_worker(settings, args.concurrency or settings.worker_concurrency)


def _celery_worker(settings: Settings, concurrency: int) -> int:
    """The Celery worker; SIGTERM is Celery's warm shutdown (tasks in progress finish)."""
    from celery import signals

    from oms import tracing
    from oms.events.metrics import serve_metrics
    from oms.worker.celery_app import configure_celery, log_like_oms
    from oms.worker.watchdog import Watchdog

    app = configure_celery(settings)
    log_like_oms()
    # Before the pool starts: the threads pool shares it; prefork children inherit it (the SDK
    # restarts its export thread after a fork).
    tracing.setup(settings, "oms-worker")
    tracing.instrument_celery_worker()
    watchdog = Watchdog(settings, concurrency)
    # Watching starts once the worker consumes; startup time is not a stall.
    signals.worker_ready.connect(lambda sender, **_: watchdog.start(sender), weak=False)
    serve_metrics(settings)
    argv = [
        "--quiet",  # no banner: stdout carries JSON log lines only
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={concurrency}",
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


def _check(settings: Settings, args: argparse.Namespace) -> int:
    from oms import check

    # The table reports connection failures; aiormq would also log each one as an error.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    results = asyncio.run(check.run_checks(settings, timeout_seconds=args.timeout))
    sys.stdout.write(check.format_table(results))
    return check.exit_code(results)


def _runs_oms(program: list[str]) -> bool:
    """`oms` itself (the console script, directly or by its interpreter, or `python -m oms.cli`),
    not an init (`tini -- oms api`) whose command line merely holds it."""
    names = [Path(part).name for part in program]
    if names == ["oms"]:
        return True
    if not names or not names[0].startswith("python"):
        return False
    return names[1:] in (["oms"], ["-m", "oms.cli"])


def _api_health_url(proc: Path = Path("/proc")) -> str | None:
    """/health of the `oms api` process running next to us, on the port its `--port` gives.

    The image's HEALTHCHECK cannot know which `--port` the container's command chose: it reads
    the command line of the API process instead.
    """
    for cmdline in sorted(proc.glob("[0-9]*/cmdline")):
        try:
            argv = [part.decode() for part in cmdline.read_bytes().split(b"\0") if part]
        except (OSError, UnicodeDecodeError):
            continue
        if "api" not in argv:
            continue
        at = argv.index("api")
        if not _runs_oms(argv[:at]):
            continue
        known, _ = _parser().parse_known_args(argv[at:])
        if known.command != "api":
            continue
        host = "127.0.0.1" if known.host in ("0.0.0.0", "::", "") else known.host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{known.port}/health"
    return None


def _probe(settings: Settings | None, args: argparse.Namespace) -> int:
    """A container health check: 0 when the URL answers 2xx within the timeout."""
    if args.api:
        if args.url is not None:
            print("oms probe: give a URL or --api, not both", file=sys.stderr)
            return 2
        args.url = _api_health_url()
        if args.url is None:
            print("oms probe --api: no `oms api` process is running here", file=sys.stderr)
            return 1
    if args.url is None or not args.url.startswith(("http://", "https://")):
        print("oms probe: the URL must be http:// or https://", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:  # noqa: S310
            status: int = response.status
    except OSError as error:
        print(f"oms probe: {args.url}: {error}", file=sys.stderr)
        return 1
    return 0 if 200 <= status < 300 else 1


def _smoke(settings: Settings | None, args: argparse.Namespace) -> int:
    from oms import smoke

    if not args.base_url.startswith(("http://", "https://")):
        print("oms smoke: BASE_URL must be http:// or https://", file=sys.stderr)
        return 2
    results = asyncio.run(
        smoke.run_smoke(
            args.base_url, timeout_seconds=args.timeout, processing_timeout_seconds=args.wait
        )
    )
    sys.stdout.write(smoke.format_table(results))
    return smoke.exit_code(results)


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds <= 60:
        raise argparse.ArgumentTypeError("must be between 0 and 60 seconds")
    return seconds


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
    mig.add_argument(
        "--create-database",
        action="store_true",
        help="create the PostgreSQL database first if it does not exist",
    )
    mig.set_defaults(handler=_migrate)

    chk = commands.add_parser(
        "check", help="try every configured dependency and print a table (exit 1 if one fails)"
    )
    chk.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=CHECK_TIMEOUT_SECONDS,
        help="seconds each dependency has to answer (default %(default)s)",
    )
    chk.set_defaults(handler=_check)

    probe = commands.add_parser(
        "probe", help="exit 0 when an HTTP URL answers 2xx (container health checks)"
    )
    probe.add_argument("url", nargs="?")
    probe.add_argument(
        "--api",
        action="store_true",
        help="probe /health of the `oms api` running here, on the port its --port gives",
    )
    probe.add_argument("--timeout", type=_positive_seconds, default=3.0)
    # Needs no settings: a health check must not depend on parsing the configuration.
    probe.set_defaults(handler=_probe, needs_settings=False)

    smk = commands.add_parser(
        "smoke", help="check a running deployment end to end over HTTP (exit 1 if a step fails)"
    )
    smk.add_argument("base_url", metavar="BASE_URL", help="e.g. http://127.0.0.1:8000")
    smk.add_argument(
        "--timeout", type=_positive_seconds, default=10.0, help="seconds per request (10)"
    )
    smk.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for processed_at (60)"
    )
    # It talks to the deployment only, never to its stores: no settings needed.
    smk.set_defaults(handler=_smoke, needs_settings=False)
    return parser


def _serves_tokens_to_others(args: argparse.Namespace) -> bool:
    """A command that signs and verifies tokens where others can reach it is a deployment,
    whatever APP_ENV says (a container's `.env` may well say `local`): it needs a real
    SECRET_KEY. Only `oms dev` on a loopback address may use the public development key."""
    command: str = args.command
    return command == "api" or (command == "dev" and not is_loopback(args.host))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not getattr(args, "needs_settings", True):
        return int(args.handler(None, args))
    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            # A rule across settings has no location; its message names the variables.
            variable = ".".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            prefix = f"{variable}: " if variable else ""
            print(f"Invalid configuration: {prefix}{message}", file=sys.stderr)
        return 2
    if _serves_tokens_to_others(args) and (problem := settings.deployment_key_problem()):
        print(f"Invalid configuration: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings)
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    return handler(settings, args)


if __name__ == "__main__":
    sys.exit(main())
