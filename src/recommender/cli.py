"""`recommender serve | import products|events | evaluate search|recommendations` (also
`python -m recommender`)."""

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import msgspec
import structlog
import uvicorn
from redis.exceptions import RedisError
from uvicorn.supervisors import Multiprocess

from recommender import evaluation, importing
from recommender.app import SUPERVISOR_VARIABLE, create_app
from recommender.config import (
    CONFIG_PATH_VARIABLE,
    ENV_PREFIX,
    ConfigError,
    RedisSettings,
    Settings,
    load_settings,
)
from recommender.platform.embedded import EmbeddedRedis
from recommender.platform.errors import StartupError
from recommender.platform.http_protocol import WriteCombiningHttpToolsProtocol
from recommender.platform.listening import WorkerSocket
from recommender.platform.logging import configure_logging
from recommender.platform.redis import create_client, require_search_module

log = structlog.get_logger()

# What each worker process imports when the server runs more than one.
APP_FACTORY = "recommender.app:create_app"


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
    _add_import(commands)
    _add_evaluate(commands)
    return parser


IMPORT_EXIT_CODES = """exit status: 0 imported (rejected {unit}s are only listed), 1 the import
stopped (malformed file, Redis or service error) or --strict and a {unit} was rejected, 2 bad
options or settings, unreadable FILE or unknown format, 130 interrupted."""
EVALUATE_EXIT_CODES = """exit status: 0 done, 1 the evaluation failed (unreadable or malformed
input, Redis error), 2 bad options or settings, 130 interrupted."""


def _add_import(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    kinds = commands.add_parser("import", help="bulk-load data from files").add_subparsers(
        required=True, metavar="KIND"
    )
    products = kinds.add_parser(
        "products",
        help="upsert products from JSONL or CSV, in batches",
        description="Upsert products from a file in the API's product schema: JSONL (one "
        "product object a line) or CSV with the same column names (tags as a|b or a JSON "
        "list, attributes as JSON, empty cells absent). Existing ids are replaced.",
        epilog=IMPORT_EXIT_CODES.format(unit="product"),
    )
    _add_import_options(products, "product")
    products.set_defaults(command=import_products_command)
    events = kinds.add_parser(
        "events",
        help="replay behaviour events from JSONL or CSV, in batches",
        description="Record events from a file in the API's event schema, as POST "
        "/api/v1/events would: JSONL (one event object a line) or CSV with the same column "
        "names, e.g. timestamp,user_id,session_id,type,product_id,order_id,quantity,price "
        "(empty cells absent). Aggregates use the events' timestamps, so a replay of past "
        "history builds that history's popularity and co-occurrence. Events without an "
        "event_id count again if the file is imported again.",
        epilog=IMPORT_EXIT_CODES.format(unit="event"),
    )
    _add_import_options(events, "event")
    events.set_defaults(command=import_events_command)


def _add_import_options(parser: argparse.ArgumentParser, unit: str) -> None:
    parser.add_argument("file", metavar="FILE", help="the file; - reads standard input")
    parser.add_argument(
        "--format",
        choices=importing.FORMATS,
        help="default: from the extension (.jsonl or .ndjson, .csv); jsonl for stdin",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=importing.DEFAULT_BATCH_SIZE,
        help=f"{unit}s per write (1-{importing.MAX_BATCH_SIZE}, default %(default)s)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--api",
        metavar="URL",
        help="POST to a running service (e.g. http://127.0.0.1:8000) instead of writing to "
        "its Redis",
    )
    target.add_argument(
        "--data-dir",
        help="embedded Redis data directory, the same as the service's (redis.embedded.data_dir)",
    )
    parser.add_argument("--strict", action="store_true", help=f"exit 1 if any {unit} was rejected")
    _add_output_options(parser)


def _add_evaluate(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    kinds = commands.add_parser("evaluate", help="measure quality offline").add_subparsers(
        required=True, metavar="KIND"
    )
    search = kinds.add_parser(
        "search",
        help="NDCG@10 and Hit@10 of hybrid, BM25 and vector search against judgments",
        description="Import the products into a fresh namespace of the configured Redis, "
        "index them, refit the model, run every judged query in each search mode, and score "
        "the judged results. The namespace is removed afterwards.",
        epilog=EVALUATE_EXIT_CODES,
    )
    search.add_argument(
        "--products", required=True, metavar="P", help="products JSONL in the API's schema"
    )
    search.add_argument(
        "--judgments",
        required=True,
        metavar="J",
        help="CSV with the header query,product_id,relevance",
    )
    search.add_argument(
        "--relevant-at",
        type=float,
        default=3.5,
        help="lowest grade that counts as a hit (default %(default)s)",
    )
    search.add_argument(
        "--k",
        type=_search_depth,
        default=evaluation.SEARCH_DEPTH,
        help="results asked for per query (1-100, default %(default)s); the metrics use the "
        "first 10 judged ones among them, so a deep list keeps them from running short",
    )
    search.add_argument(
        "--batch-size",
        type=_batch_size,
        default=importing.DEFAULT_BATCH_SIZE,
        help="products per import batch (default %(default)s)",
    )
    search.add_argument(
        "--data-dir", help="embedded Redis data directory (redis.embedded.data_dir)"
    )
    _add_output_options(search)
    search.set_defaults(command=evaluate_search_command)
    recommendations = kinds.add_parser(
        "recommendations",
        help='HR@10, Recall@10 and NDCG@10 of "for you" and three baselines on a time split',
        description="Import the products and the events before the cutoff into a fresh "
        "namespace of the configured Redis, run the consumers until both streams are "
        'consumed, refit the model, then ask "for you" for 10 products for every user with '
        "history before the cutoff and a purchase on or after it. The truth is the set of "
        "products in that user's first order from the cutoff on. Two views: discovery "
        "(purchased products left out, truth restricted to products new to the user) and all "
        "(repeat purchases count). Baselines on the same split: popularity over the last 30 "
        "days, the user's own purchase frequency, item-kNN over the purchase matrix. The "
        "namespace is removed afterwards.",
        epilog=EVALUATE_EXIT_CODES,
    )
    recommendations.add_argument(
        "--products", required=True, metavar="P", help="products JSONL in the API's schema"
    )
    recommendations.add_argument(
        "--events",
        required=True,
        metavar="E",
        help="events CSV (or JSONL) in the API's schema, every one with a timestamp",
    )
    recommendations.add_argument(
        "--cutoff",
        required=True,
        type=_cutoff,
        metavar="YYYY-MM-DD",
        help="history is what happened before this day (UTC), the truth what came from it on",
    )
    recommendations.add_argument(
        "--batch-size",
        type=_batch_size,
        default=importing.DEFAULT_BATCH_SIZE,
        help="products and events per import batch (default %(default)s)",
    )
    recommendations.add_argument(
        "--data-dir", help="embedded Redis data directory (redis.embedded.data_dir)"
    )
    _add_output_options(recommendations)
    recommendations.set_defaults(command=evaluate_recommendations_command)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the readable text"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show info logs on stderr as well"
    )


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: '{text}'") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}, not {value}")
        return value

    return parse


# The batch endpoint's limit, for both modes, so a batch size works the same either way.
_batch_size = _bounded_int(1, importing.MAX_BATCH_SIZE)
_search_depth = _bounded_int(1, 100)


def _cutoff(text: str) -> datetime:
    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: '{text}'") from None
    return day.replace(tzinfo=UTC)


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
    metrics_dir = None
    if not settings.redis.url:
        # Started here rather than in the app so every worker of this server shares it.
        embedded = EmbeddedRedis(settings.redis.embedded).start()
        embedded.supervise()
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
        workers = settings.server.workers
        if workers > 1:
            # Each worker process builds the app from the environment: hand it this config
            # file and this Redis (uvicorn supervises them and replaces one that dies), and a
            # place to pool their metrics.
            if args.config:
                os.environ[CONFIG_PATH_VARIABLE] = str(Path(args.config).resolve())
            os.environ[f"{ENV_PREFIX}REDIS__URL"] = settings.redis.url
            metrics_dir = tempfile.mkdtemp(prefix="recommender-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            os.environ[SUPERVISOR_VARIABLE] = str(os.getpid())
        config = uvicorn.Config(
            APP_FACTORY if workers > 1 else create_app(settings),
            factory=workers > 1,
            workers=workers,
            host=settings.server.host,
            port=settings.server.port,
            http=WriteCombiningHttpToolsProtocol,
            proxy_headers=True,
            forwarded_allow_ips=settings.server.forwarded_allow_ips,
            timeout_graceful_shutdown=int(settings.server.graceful_shutdown_seconds),
            log_config=None,
        )
        if workers > 1:
            try:
                listening = WorkerSocket(settings.server.host, settings.server.port)
            except OSError as error:
                raise StartupError(
                    f"server.port: cannot listen on {settings.server.host}:{settings.server.port}"
                    f" ({error.strerror})"
                ) from error
            try:
                # uvicorn's supervisor: it starts the workers and replaces one that dies.
                Multiprocess(config, sockets=[listening]).run()  # type: ignore[list-item]
            finally:
                listening.close()
        else:
            server = uvicorn.Server(config)
            server.run()
            if not server.started:
                raise StartupError("the server did not start (its error is logged above)")
    except KeyboardInterrupt:
        pass
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if embedded is not None:
            embedded.close()
    return 0


def import_products_command(args: argparse.Namespace) -> int:
    return _import_command(
        args, importing.read_products, importing.import_via_api, importing.import_into_redis
    )


def import_events_command(args: argparse.Namespace) -> int:
    return _import_command(
        args,
        importing.read_events,
        importing.import_events_via_api,
        importing.import_events_into_redis,
    )


def _import_command(
    args: argparse.Namespace,
    read: Callable[[IO[bytes], importing.Format], Iterable[importing.SourceItem]],
    via_api: Callable[
        [Iterable[importing.SourceItem], str, int, importing.Progress],
        Coroutine[Any, Any, importing.Summary],
    ],
    into_redis: Callable[
        [Iterable[importing.SourceItem], Settings, int, importing.Progress],
        Coroutine[Any, Any, importing.Summary],
    ],
) -> int:
    settings = _settings(args, **{"redis.embedded.data_dir": args.data_dir})
    _configure_command_logging(settings, args.verbose)
    progress = importing.Progress()
    try:
        file_format = importing.detect_format(args.file, args.format)
        with importing.open_source(args.file) as stream:
            items = read(stream, file_format)
            if args.api:
                run = via_api(items, args.api, args.batch_size, progress)
            else:
                run = into_redis(items, settings, args.batch_size, progress)
            summary = asyncio.run(run)
    except importing.ImportInputError as error:
        return _fail(str(error), status=2)
    except RedisError as error:
        return _fail(f"Redis failed during the import: {error}")
    except KeyboardInterrupt:
        return _fail("interrupted", status=130)
    print(msgspec.json.encode(summary).decode() if args.json else summary.render())
    if summary.error is not None:
        return _fail(f"{args.file}: {summary.error}")
    return 1 if args.strict and summary.rejected else 0


def evaluate_search_command(args: argparse.Namespace) -> int:
    settings = _settings(args, **{"redis.embedded.data_dir": args.data_dir})
    _configure_command_logging(settings, args.verbose)
    run = evaluation.evaluate_search(
        settings, args.products, args.judgments, k=args.k, relevant_at=args.relevant_at,
        batch_size=args.batch_size, progress=importing.Progress(),
    )  # fmt: skip
    return _evaluation_command(run, args.json, lambda result: result.render(args.relevant_at))


def evaluate_recommendations_command(args: argparse.Namespace) -> int:
    settings = _settings(args, **{"redis.embedded.data_dir": args.data_dir})
    _configure_command_logging(settings, args.verbose)
    run = evaluation.evaluate_recommendations(
        settings, args.products, args.events, cutoff=args.cutoff, batch_size=args.batch_size,
        progress=importing.Progress(),
    )  # fmt: skip
    return _evaluation_command(run, args.json, lambda result: result.render())


class _Evaluated(Protocol):
    @property
    def report(self) -> msgspec.Struct: ...


_Result = TypeVar("_Result", bound=_Evaluated)


def _evaluation_command(
    run: Coroutine[Any, Any, _Result], as_json: bool, render: Callable[[_Result], str]
) -> int:
    """Run an evaluation; print its report as JSON or as `render` puts it for people."""
    try:
        result = asyncio.run(run)
    except (evaluation.EvaluationError, importing.ImportInputError) as error:
        return _fail(str(error))
    except RedisError as error:
        return _fail(f"Redis failed during the evaluation: {error}")
    except KeyboardInterrupt:
        return _fail("interrupted", status=130)
    print(msgspec.json.encode(result.report).decode() if as_json else render(result))
    return 0


def _configure_command_logging(settings: Settings, verbose: bool) -> None:
    """Info logs would break up the progress line: warnings and errors only, unless -v."""
    level = settings.logging.level
    if not verbose and level in ("DEBUG", "INFO"):
        level = "WARNING"
    configure_logging(msgspec.structs.replace(settings.logging, level=level))


def _fail(message: str, status: int = 1) -> int:
    print(f"recommender: error: {message}", file=sys.stderr)
    return status


def _raise_keyboard_interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


async def _check_search_module(settings: RedisSettings) -> None:
    """Fail before serving, in one line, when the server cannot run the search index."""
    client = create_client(settings, settings.url)
    try:
        await require_search_module(client, where=settings.url)
    finally:
        await client.aclose()
