"""`recommender serve | ...` (also `python -m recommender`)."""

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
import uvicorn

from recommender.app import create_app
from recommender.config import ConfigError, RedisSettings, Settings, load_settings
from recommender.platform.embedded import EmbeddedRedis
from recommender.platform.errors import StartupError
from recommender.platform.logging import configure_logging
from recommender.platform.redis import create_client, require_search_module

log = structlog.get_logger()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.command(args)
    except (ConfigError, StartupError) as error:
        print(f"recommender: error: {error}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recommender", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (default: $RECOMMENDER_CONFIG, "
                        "else ./config.toml if present)")  # fmt: skip
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service and its stream consumers")
    serve.add_argument("--host", help="address to bind (server.host)")
    serve.add_argument("--port", type=int, help="port to bind (server.port)")
    serve.add_argument("--data-dir", help="embedded Redis data directory "
                       "(redis.embedded.data_dir)")  # fmt: skip
    serve.set_defaults(command=serve_command)
    return parser


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(
        args.config, overrides={key: value for key, value in overrides.items() if value is not None}
    )


def serve_command(args: argparse.Namespace) -> int:
    settings = _settings(
        args,
        **{
            "server.host": args.host,
            "server.port": args.port,
            "redis.embedded.data_dir": args.data_dir,
        },
    )
    configure_logging(settings.logging)
    embedded = None
    if not settings.redis.url:
        # Started here rather than in the app so every worker of this server shares it.
        embedded = EmbeddedRedis(settings.redis.embedded).start()
        settings = msgspec.structs.replace(
            settings, redis=msgspec.structs.replace(settings.redis, url=embedded.url)
        )
    try:
        asyncio.run(_check_search_module(settings.redis))
        log.info(
            "serving",
            url=f"http://{settings.server.host}:{settings.server.port}",
            docs=f"http://{settings.server.host}:{settings.server.port}/docs",
            redis=settings.redis.url,
            redis_mode="embedded" if embedded else "external",
            data_dir=str(embedded.data_dir) if embedded else None,
        )
        # uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown; turn both into exceptions
        # so the `finally` below still stops Redis, last, after the app has drained.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        uvicorn.run(
            create_app(settings),
            host=settings.server.host,
            port=settings.server.port,
            proxy_headers=True,
            forwarded_allow_ips=settings.server.forwarded_allow_ips,
            timeout_graceful_shutdown=int(settings.server.graceful_shutdown_seconds),
            log_config=None,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.close()
    return 0


def _raise_keyboard_interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


async def _check_search_module(settings: RedisSettings) -> None:
    """Fail before serving, in one line, when the server cannot run the search index."""
    client = create_client(settings, settings.url)
    try:
        await require_search_module(client, where=settings.url)
    finally:
        await client.aclose()
