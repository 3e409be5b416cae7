"""`hokusai-registry`: run the service, migrate its database, create API keys."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config

from app.config import get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

# What `serve` runs: an import string, or a function that builds the app (one worker only).
AppFactory = str | Callable[[], "FastAPI"]

_HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic's configuration, from the source tree or from the installed package."""
    ini = _HERE.parent / "alembic.ini"
    config = Config(str(ini)) if ini.exists() else Config()
    scripts = _HERE.parent / "migrations"
    if not scripts.exists():
        scripts = _HERE / "migrations"  # where the wheel puts them
    config.set_main_option("script_location", str(scripts))
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def migrate(database_url: str | None = None) -> None:
    """Bring the database schema to the latest revision."""
    command.upgrade(alembic_config(database_url), "head")


def _serve(args: argparse.Namespace, app_factory: AppFactory) -> None:
    """Serve until SIGTERM or SIGINT, then drain: see `_exit_after_drain`."""
    import signal

    import uvicorn

    if not args.no_migrate:
        migrate()
    settings = get_settings()
    if settings.env.value == "development":
        _ensure_dev_api_key()
    signal.signal(signal.SIGTERM, _exit_after_drain)
    uvicorn.run(
        app_factory,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        # Only proxies the operator names may set the client address; uvicorn would otherwise
        # trust X-Forwarded-For from 127.0.0.1 (or $FORWARDED_ALLOW_IPS) by default.
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )


def _exit_after_drain(_signum: int, _frame: object) -> None:
    """SIGTERM outside uvicorn's own handler: exit with status 0.

    On SIGTERM uvicorn closes its listening socket, waits up to `shutdown_grace_seconds` for
    the requests in flight, runs the lifespan shutdown, and then raises the signal again for the
    handler that was there before it: with the default one the process would die of SIGTERM
    (status 143) after a clean drain. This one turns it into a normal exit; before uvicorn
    starts (migrations, imports) it simply stops the process.
    """
    raise SystemExit(0)


def _ensure_dev_api_key() -> None:
    """Leave an admin key in DATA_DIR/dev-api-key (mode 0600) for the `hokusai` CLI.

    Development only: a newcomer can register a model right after `make run`. The file is written
    when it is missing or holds a key this database does not know (a fresh database).
    """
    from app.auth.service import authenticate, create_api_key
    from app.db import Database
    from app.errors import Unauthorized

    settings = get_settings()
    path = settings.data_dir.resolve() / "dev-api-key"
    existing = path.read_text(encoding="utf-8").strip() if path.is_file() else ""

    async def ensure() -> str | None:
        database = Database(settings.resolved_database_url)
        try:
            async with database.transaction() as session:
                if existing:
                    try:
                        await authenticate(session, existing)
                        return None
                    except Unauthorized:
                        pass
                _, key = await create_api_key(session, name="dev-cli", scopes=["admin"])
                return key
        finally:
            await database.dispose()

    key = asyncio.run(ensure())
    if key is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    os.replace(partial, path)
    print(f"development API key (admin) for the hokusai CLI written to {path}", file=sys.stderr)


def _worker(_args: argparse.Namespace) -> None:
    """Deliver events (webhooks, Redis) and run evaluations until SIGTERM or SIGINT."""
    import signal

    from app.db import Database
    from app.evaluation.worker import evaluating_standalone
    from app.events.dispatcher import dispatching
    from app.events.listener import listen_for_events
    from app.log_config import configure_logging
    from app.observability import refreshing_backlog

    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.json_logs)
    if settings.worker_metrics_port is not None:
        from prometheus_client import start_http_server

        host = os.environ.get("HOST", "127.0.0.1")
        start_http_server(settings.worker_metrics_port, addr=host)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        database = Database(settings.resolved_database_url)
        try:
            async with (
                listen_for_events(database),
                dispatching(settings, database),
                refreshing_backlog(database, every=settings.metrics_refresh_seconds),
                evaluating_standalone(settings, database),
            ):
                # Leaving the block stops the dispatcher, which lets the deliveries in flight
                # finish and records them before the process exits.
                await stop.wait()
        finally:
            await database.dispose()

    asyncio.run(run())


def _create_api_key(args: argparse.Namespace) -> None:
    from app.auth.service import create_api_key
    from app.db import Database

    async def create() -> str:
        database = Database(get_settings().resolved_database_url)
        try:
            async with database.transaction() as session:
                _, key = await create_api_key(
                    session, name=args.name, scopes=args.scopes.split(",")
                )
            return key
        finally:
            await database.dispose()

    key = asyncio.run(create())
    print(f"created API key {args.name!r} with scopes {args.scopes}", file=sys.stderr)
    print(key)


def main(argv: list[str] | None = None, *, app_factory: AppFactory = "app.main:create_app") -> None:
    """The command line; `app_factory` is what `serve` builds the application with."""
    parser = argparse.ArgumentParser(prog="hokusai-registry", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate, then serve the HTTP API")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
    serve.add_argument("--no-migrate", action="store_true", help="skip `migrate` at start")
    serve.set_defaults(handler=functools.partial(_serve, app_factory=app_factory))

    worker = commands.add_parser(
        "worker",
        help="deliver events to webhooks and Redis and run model evaluations (run any number "
        "of these)",
    )
    worker.set_defaults(handler=_worker)

    migrate_cmd = commands.add_parser("migrate", help="apply database migrations")
    migrate_cmd.set_defaults(handler=lambda _args: migrate())

    key = commands.add_parser(
        "create-api-key", help="create an API key; the key is printed alone on the last line"
    )
    key.add_argument("--name", required=True)
    key.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: tokens:read, tokens:write, models:register, events:read, "
        "webhooks:manage, benchmarks:manage, admin",
    )
    key.set_defaults(handler=_create_api_key)

    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
