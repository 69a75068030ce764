"""Offline search quality: NDCG@10 and Hit@10 of each search mode against graded judgments.

The run builds a private copy of the service in a fresh namespace of the configured Redis: it
imports the products through the catalog, lets the indexer consumer embed them (in this process),
refits the model on the whole catalog, then asks `RecommendService.search` every judged query in
each mode. The namespace is removed afterwards, whatever happens.

Judgments grade only some products per query, so rankings are condensed: unjudged results are
skipped and the metrics look at the first 10 judged ones. NDCG uses the gain `grade - lowest
grade in the judgments` and the ideal ordering of the query's judged products; Hit@10 asks for at
least one product graded `relevant_at` or better among those 10.
"""

import asyncio
import contextlib
import csv
import math
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from recommender.config import Settings
from recommender.importing import (
    CatalogSink,
    ImportSummary,
    Progress,
    connect,
    open_source,
    read_jsonl,
    run_import,
)
from recommender.platform.errors import AppError
from recommender.platform.redis import Keyspace
from recommender.platform.streams import StreamRunner
from recommender.services import Services, build_services
from recommender.vectors import Filters

log = structlog.get_logger()

CUTOFF = 10
# Results asked for per query: deep enough that ten judged ones remain after condensing.
SEARCH_DEPTH = 100
# The modes of `RecommendService.search`, in the order the report lists them.
Mode = Literal["hybrid", "bm25", "vector"]
MODES: tuple[Mode, ...] = get_args(Mode)
_JUDGMENT_COLUMNS = ("query", "product_id", "relevance")
_POLL_SECONDS = 0.2

# query -> product id -> grade
Judgments = dict[str, dict[str, float]]


class EvaluationError(Exception):
    """The evaluation cannot run or finish: bad input files, or the pipeline failed."""


# -- metrics (pure) -------------------------------------------------------------------------------


def condense(ranking: Sequence[str], grades: Mapping[str, float]) -> list[str]:
    """The ranking with every product that has no judgment left out."""
    return [product_id for product_id in ranking if product_id in grades]


def dcg(gains: Iterable[float]) -> float:
    """Discounted cumulative gain: the gain at rank r counts 1/log2(r + 1)."""
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def ndcg(
    ranking: Sequence[str], grades: Mapping[str, float], lowest: float, cutoff: int = CUTOFF
) -> float:
    """NDCG@cutoff of the condensed ranking; 0 when no judged product has any gain."""
    gains = [grades[product_id] - lowest for product_id in condense(ranking, grades)[:cutoff]]
    ideal = dcg(sorted((grade - lowest for grade in grades.values()), reverse=True)[:cutoff])
    return dcg(gains) / ideal if ideal > 0 else 0.0


def hit(
    ranking: Sequence[str], grades: Mapping[str, float], relevant_at: float, cutoff: int = CUTOFF
) -> float:
    """1.0 when a product graded `relevant_at` or better is in the condensed top `cutoff`."""
    top = condense(ranking, grades)[:cutoff]
    return 1.0 if any(grades[product_id] >= relevant_at for product_id in top) else 0.0


class ModeScores(msgspec.Struct):
    ndcg: float = msgspec.field(name="ndcg@10")
    hit: float = msgspec.field(name="hit@10")


def score(
    rankings: Mapping[str, Sequence[str]], judgments: Judgments, relevant_at: float
) -> ModeScores:
    """Mean NDCG@10 and Hit@10 over the judged queries (a query with no ranking counts 0)."""
    lowest = lowest_grade(judgments)
    queries = list(judgments)
    if not queries:
        raise EvaluationError("no judged queries")
    ndcgs = [ndcg(rankings.get(q, ()), judgments[q], lowest) for q in queries]
    hits = [hit(rankings.get(q, ()), judgments[q], relevant_at) for q in queries]
    return ModeScores(ndcg=sum(ndcgs) / len(queries), hit=sum(hits) / len(queries))


def lowest_grade(judgments: Judgments) -> float:
    return min(grade for grades in judgments.values() for grade in grades.values())


# -- inputs ---------------------------------------------------------------------------------------


def load_judgments(path: str) -> Judgments:
    """`query,product_id,relevance` rows; a pair graded twice keeps its higher grade."""
    judgments: Judgments = {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, strict=True)
            if tuple(reader.fieldnames or ()) != _JUDGMENT_COLUMNS:
                raise EvaluationError(
                    f"{path}: line 1: the header must be {','.join(_JUDGMENT_COLUMNS)}"
                )
            for row in reader:
                query, product_id, relevance = (row.get(c) for c in _JUDGMENT_COLUMNS)
                if not query or not product_id or relevance is None or None in row:
                    raise EvaluationError(
                        f"{path}: line {reader.line_num}: needs a query, a product id and a grade"
                    )
                try:
                    grade = float(relevance)
                except ValueError:
                    raise EvaluationError(
                        f"{path}: line {reader.line_num}: relevance '{relevance}' is not a number"
                    ) from None
                grades = judgments.setdefault(query, {})
                grades[product_id] = max(grade, grades.get(product_id, grade))
    except OSError as error:
        raise EvaluationError(f"cannot read '{path}': {error.strerror}") from error
    except (csv.Error, UnicodeDecodeError) as error:
        raise EvaluationError(f"{path}: malformed CSV: {error}") from error
    if not judgments:
        raise EvaluationError(f"{path}: no judgments")
    return judgments


# -- the run --------------------------------------------------------------------------------------


class EvaluationReport(msgspec.Struct):
    """Exactly what `--json` prints."""

    hybrid: ModeScores
    bm25: ModeScores
    vector: ModeScores
    queries: int
    products: int


@dataclass(frozen=True, slots=True)
class Evaluation:
    report: EvaluationReport
    # Stage -> seconds it took (import, indexing, refit, queries).
    timings: dict[str, float]
    # Judged products that are not in the catalog (they count in the ideal, never in a ranking).
    missing_products: int
    rejected_products: int
    failed_queries: list[str]

    def render(self, relevant_at: float) -> str:
        report = self.report
        lines = [
            f"search quality over {report.queries:,} queries and {report.products:,} products",
            f"(judged results only; relevant = grade >= {relevant_at:g})",
            "",
            f"{'mode':<8}{'NDCG@10':>10}{'Hit@10':>10}",
        ]
        for mode in MODES:
            scores: ModeScores = getattr(report, mode)
            lines.append(f"{mode:<8}{scores.ndcg:>10.4f}{scores.hit:>10.4f}")
        lines.append("")
        lines.append(
            "took "
            + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.timings.items())
        )
        if self.rejected_products:
            lines.append(f"warning: {self.rejected_products:,} products were rejected")
        if self.missing_products:
            lines.append(
                f"warning: {self.missing_products:,} judged products are not in the catalog"
            )
        if self.failed_queries:
            lines.append(
                f"warning: {len(self.failed_queries)} queries could not be run: "
                + "; ".join(self.failed_queries[:5])
            )
        return "\n".join(lines)


async def evaluate_search(
    settings: Settings,
    products_path: str,
    judgments_path: str,
    *,
    k: int = CUTOFF,
    relevant_at: float,
    batch_size: int,
    progress: Progress,
) -> Evaluation:
    """Import, index, refit and query in a private namespace; always remove it afterwards."""
    judgments = load_judgments(judgments_path)
    keys = Keyspace(f"eval{secrets.token_hex(6)}:")
    async with connect(settings) as connection, contextlib.AsyncExitStack() as cleanup:
        log.info("evaluation_started", namespace=keys.prefix)
        if connection.started_server:
            # Runs after the drop: the next start need not replay the evaluation's writes.
            cleanup.push_async_callback(compact_append_only_file, connection.client)
        # Registered before the stages, so it runs after them: once consumers and refits stopped.
        cleanup.push_async_callback(drop_namespace, connection.client, keys)
        services = build_services(connection.client, keys, _refit_only_when_asked(settings))
        run = _Run(services, cleanup, progress)
        imported = await run.import_products(products_path, batch_size)
        await run.index()
        await run.refit(imported.imported)
        rankings, failed = await run.search(sorted(judgments), k)
        judged = {product_id for grades in judgments.values() for product_id in grades}
        missing = judged - set(await _existing(services, judged))
    report = EvaluationReport(
        **{mode: score(rankings[mode], judgments, relevant_at) for mode in MODES},
        queries=len(judgments),
        products=imported.imported,
    )
    log.info("evaluation_finished", **msgspec.to_builtins(report))
    return Evaluation(
        report=report,
        timings=run.timings,
        missing_products=len(missing),
        rejected_products=imported.rejected,
        failed_queries=failed,
    )


@dataclass
class _Run:
    """The stages of one evaluation on its private services, each timed."""

    services: Services
    cleanup: contextlib.AsyncExitStack
    progress: Progress
    timings: dict[str, float] = field(default_factory=dict)

    async def import_products(self, path: str, batch_size: int) -> ImportSummary:
        started = time.perf_counter()
        with open_source(path) as stream:
            sink = CatalogSink(self.services.catalog)
            imported = await run_import(read_jsonl(stream), sink, batch_size, self.progress)
        if imported.error is not None:
            raise EvaluationError(f"{path}: {imported.error}")
        if not imported.imported:
            raise EvaluationError(f"{path}: no valid products")
        self.timings["import"] = _since(started)
        return imported

    async def index(self) -> None:
        """Run the catalog stream's consumers here until they have handled every event."""
        started = time.perf_counter()
        catalog_stream = self.services.catalog.stream
        indexers = [r for r in self.services.runners if r.stream == catalog_stream]
        for runner in indexers:
            await runner.ensure_group()
            runner.start()
            self.cleanup.push_async_callback(runner.stop)
        for runner in indexers:
            await wait_until_consumed(runner, self.progress)
            await runner.stop()
        self.timings["indexing"] = _since(started)

    async def refit(self, products: int) -> None:
        started = time.perf_counter()
        self.progress.say(f"refitting the model on {products:,} products")
        await self.services.vectors.settle()  # the first products' refit, if still running
        await self.services.vectors.refit(reason="evaluation")
        self.timings["refit"] = _since(started)

    async def search(
        self, queries: Sequence[str], k: int
    ) -> tuple[dict[Mode, dict[str, list[str]]], list[str]]:
        """Each mode's ranking (product ids) per query, and the queries that failed."""
        started = time.perf_counter()
        rankings: dict[Mode, dict[str, list[str]]] = {mode: {} for mode in MODES}
        failed: list[str] = []
        # in_stock=None: no stock filter at all (the API's default, true, would hide products).
        everything = Filters(in_stock=None)
        self.progress.begin("querying", "queries", total=len(queries))
        for done, query in enumerate(queries, start=1):
            for mode in MODES:
                try:
                    result = await self.services.recommend.search(query, k, everything, mode)
                except AppError as error:  # e.g. a query without letters: it ranks nothing
                    failed.append(f"{query!r} ({mode}): {error.detail}")
                    continue
                rankings[mode][query] = [item.id for item in result.items]
            self.progress.update(done)
        self.progress.end()
        self.timings["queries"] = _since(started)
        return rankings, failed


def _refit_only_when_asked(settings: Settings) -> Settings:
    """No background refit while indexing: it would only compete with the final one for CPU."""
    vectors = msgspec.structs.replace(settings.vectors, refit_min_interval_seconds=math.inf)
    return msgspec.structs.replace(settings, vectors=vectors)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 2)


async def _existing(services: Services, ids: Iterable[str]) -> list[str]:
    wanted = sorted(ids)
    found = await services.catalog.get_many(wanted)
    return [product_id for product_id, p in zip(wanted, found, strict=True) if p is not None]


async def wait_until_consumed(runner: StreamRunner, progress: Progress) -> None:
    """Until the runner's group has read every entry of its stream and acknowledged it."""
    progress.begin("indexing", "events")
    while True:
        if not runner.alive:
            raise EvaluationError(f"the consumer of {runner.stream} stopped unexpectedly")
        read, pending, lag = await _group_position(runner)
        if read is not None and lag is not None:
            progress.update(read - pending, total=read + lag)
        if pending == 0 and lag == 0:
            break
        await asyncio.sleep(_POLL_SECONDS)
    progress.end()
    dead: int = await runner.client.xlen(runner.dead_letter_stream)
    if dead:
        raise EvaluationError(
            f"{dead} catalog events failed to index (see {runner.dead_letter_stream})"
        )


async def _group_position(runner: StreamRunner) -> tuple[int | None, int, int | None]:
    """Entries the group has read, how many of those are unacknowledged, how many are unread."""
    groups: Any = await runner.client.xinfo_groups(runner.stream)
    for group in groups:
        if group["name"].decode() == runner.group:
            read = group.get("entries-read")
            lag = group.get("lag")
            if lag is None:  # Redis cannot tell after deletions: compare the last ids instead
                stream: Any = await runner.client.xinfo_stream(runner.stream)
                lag = 0 if stream["last-generated-id"] == group["last-delivered-id"] else None
            return read, int(group["pending"]), lag
    return None, 0, None


async def drop_namespace(client: "aioredis.Redis", keys: Keyspace) -> None:
    """Every index named under the namespace, then every key in it."""
    indexes: Any = await client.execute_command("FT._LIST")  # type: ignore[no-untyped-call]
    for name in indexes:
        if (name.decode() if isinstance(name, bytes) else name).startswith(keys.prefix):
            await client.execute_command("FT.DROPINDEX", name)  # type: ignore[no-untyped-call]
    batch: list[Any] = []
    async for key in client.scan_iter(match=keys.pattern(), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)
    log.info("evaluation_namespace_dropped", namespace=keys.prefix)


async def compact_append_only_file(client: "aioredis.Redis") -> None:
    """Rewrite the AOF of a server this process started, and wait until it is done."""
    with contextlib.suppress(ResponseError):  # a rewrite already running will do
        await client.bgrewriteaof()
    while True:
        info: Any = await client.info("persistence")
        if not int(info["aof_rewrite_in_progress"]) and not int(info["aof_rewrite_scheduled"]):
            return
        await asyncio.sleep(_POLL_SECONDS)
