"""The `oms` command: one entry point for every role."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import uvicorn
from pydantic import ValidationError

from oms import migrate
from oms.config import Settings, get_settings
from oms.logging import configure_logging


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    """Everything in one process with embedded defaults, for a first look."""
    from oms.main import create_app

    migrate.upgrade(settings.database_url)
    print(f"OMS dev server: http://{args.host}:{args.port}/docs", file=sys.stderr)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        proxy_headers=True,  # the rate limiter's client IP, from FORWARDED_ALLOW_IPS only
        forwarded_allow_ips=",".join(settings.forwarded_allow_ips),
        log_config=None,
    )
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
