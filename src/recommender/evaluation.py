"""Offline quality: search against graded judgments, and "for you" against later purchases.

Each run builds a private copy of the service in a fresh namespace of the configured Redis: it
imports the products through the catalog (and, for recommendations, the events before the cutoff
through tracking), lets the consumers handle every stream entry (in this process), refits the
model on the whole catalog, then asks the real read service. The namespace is removed
afterwards, whatever happens.

Search: judgments grade only some products per query, so rankings are condensed: unjudged results
are skipped and the metrics look at the first 10 judged ones. NDCG uses the gain `grade - lowest
grade in the judgments` and the ideal ordering of the query's judged products; Hit@10 asks for at
least one product graded `relevant_at` or better among those 10.

Recommendations: the truth of a user is the set of products in their first order on or after
the cutoff; gains are binary. "For you" is compared with three baselines computed here from the
same events: recent popularity, the user's own purchase frequency and item-kNN. The discovery
view leaves out (from lists and truth alike) what the user bought before the cutoff; the all
view counts repeat purchases.
"""

import asyncio
import contextlib
import csv
import itertools
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

import msgspec
import numpy as np
import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from recommender.config import Settings
from recommender.importing import (
    CatalogSink,
    EventImportSummary,
    ImportSummary,
    MalformedFileError,
    Progress,
    Rejection,
    SourceItem,
    TrackingSink,
    connect,
    detect_format,
    open_source,
    read_events,
    read_jsonl,
    run_event_import,
    run_import,
)
from recommender.platform.errors import AppError
from recommender.platform.redis import Keyspace
from recommender.platform.streams import StreamRunner
from recommender.services import Services, build_services
from recommender.tracking import Event, Shopper
from recommender.tracking.service import shopper_of
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
DAY = 86400.0
# The popularity baseline counts purchases over this many days before the cutoff.
POPULAR_DAYS = 30
# "For you" lists asked for concurrently: Redis works on some while Python blends others.
_LISTS_AT_ONCE = 8
# Connections one list holds at once ("for you" runs up to three reads side by side; a margin).
_CONNECTIONS_PER_LIST = 4

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


def load_events(path: str) -> tuple[list[tuple[SourceItem, Event]], list[Rejection]]:
    """Every valid, dated event of the file with the item it came from; the lines left out."""
    events: list[tuple[SourceItem, Event]] = []
    left_out: list[Rejection] = []
    try:
        with open_source(path) as stream:
            for item in read_events(stream, detect_format(path)):
                try:
                    event = msgspec.convert(item.data, Event)
                except msgspec.ValidationError as error:
                    left_out.append(Rejection(item.line, str(error)))
                    continue
                if event.timestamp is None:
                    left_out.append(
                        Rejection(item.line, "timestamp: needed to split at the cutoff")
                    )
                    continue
                events.append((item, event))
    except MalformedFileError as error:
        raise EvaluationError(f"{path}: {error}") from None
    return events, left_out


# -- recommendation metrics and baselines (pure) -------------------------------------------------


def hit_rate(ranking: Sequence[str], truth: Collection[str], cutoff: int = CUTOFF) -> float:
    """1.0 when any product of the truth is in the top `cutoff`."""
    return 1.0 if any(product_id in truth for product_id in ranking[:cutoff]) else 0.0


def recall(ranking: Sequence[str], truth: Collection[str], cutoff: int = CUTOFF) -> float:
    """The share of the truth found in the top `cutoff`."""
    return len(set(ranking[:cutoff]) & set(truth)) / len(truth)


def binary_ndcg(ranking: Sequence[str], truth: Collection[str], cutoff: int = CUTOFF) -> float:
    """NDCG@cutoff with gain 1 for a product of the truth; the ideal puts them all first."""
    gains = [1.0 if product_id in truth else 0.0 for product_id in ranking[:cutoff]]
    return dcg(gains) / dcg([1.0] * min(len(truth), cutoff))


class RankingScores(msgspec.Struct):
    hr: float = msgspec.field(name="hr@10")
    recall: float = msgspec.field(name="recall@10")
    ndcg: float = msgspec.field(name="ndcg@10")


def score_rankings(
    rankings: Mapping[Shopper, Sequence[str]], truths: Mapping[Shopper, Collection[str]]
) -> RankingScores:
    """Means over the users of `truths` (a user without a ranking counts 0; no users: all 0)."""
    if not truths:
        return RankingScores(hr=0.0, recall=0.0, ndcg=0.0)
    per_user = np.array([_metrics(rankings.get(user, ()), truth) for user, truth in truths.items()])
    hr, found, gain = (float(mean) for mean in per_user.mean(axis=0))
    return RankingScores(hr=hr, recall=found, ndcg=gain)


def _metrics(ranking: Sequence[str], truth: Collection[str]) -> tuple[float, float, float]:
    return hit_rate(ranking, truth), recall(ranking, truth), binary_ndcg(ranking, truth)


@dataclass(frozen=True, slots=True)
class Purchase:
    product: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class Split:
    """The events cut at one moment: what was bought before it, what each user bought next."""

    # Every shopper's purchases before the cutoff, in the file's order.
    history: dict[Shopper, list[Purchase]]
    # Users with history before the cutoff -> the products of their first order from it on.
    truth: dict[Shopper, frozenset[str]]

    def bought(self, shopper: Shopper) -> frozenset[str]:
        return frozenset(purchase.product for purchase in self.history.get(shopper, ()))

    def new_products(self) -> dict[Shopper, frozenset[str]]:
        """The discovery view's truth: only products the user had not bought; none: left out."""
        return {
            user: new
            for user, products in self.truth.items()
            if (new := products - self.bought(user))
        }


def split_events(events: Iterable[Event], cutoff: datetime) -> Split:
    """History before `cutoff`; the first order on or after it of each user with history.

    An order is an order_id (purchases without one: those at the same instant); the first is
    the one whose earliest line is earliest, ties by order id. Undated events are left out.
    """
    history: dict[Shopper, list[Purchase]] = {}
    active: set[Shopper] = set()
    # user -> order id -> (its earliest time, its products)
    orders: dict[Shopper, dict[str, tuple[float, set[str]]]] = {}
    for event in events:
        if event.timestamp is None:
            continue
        shopper, when = shopper_of(event), event.timestamp.timestamp()
        before = event.timestamp < cutoff
        if before:
            active.add(shopper)
        if event.type != "purchase" or event.product_id is None:
            continue
        if before:
            history.setdefault(shopper, []).append(Purchase(event.product_id, when))
        elif shopper.kind == "user":
            order = event.order_id or f"@{when}"
            placed, products = orders.setdefault(shopper, {}).get(order, (when, set()))
            products.add(event.product_id)
            orders[shopper][order] = (min(placed, when), products)
    truth = {
        user: frozenset(placed[min(placed, key=lambda order: (placed[order][0], order))][1])
        for user, placed in orders.items()
        if user in active
    }
    return Split(history=history, truth=truth)


def popular_products(history: Mapping[Shopper, Sequence[Purchase]], since: float) -> list[str]:
    """Products by how often they were bought from `since` on (ties by id)."""
    counts = Counter(
        purchase.product
        for purchases in history.values()
        for purchase in purchases
        if purchase.timestamp >= since
    )
    return sorted(counts, key=lambda product_id: (-counts[product_id], product_id))


def own_frequency(purchases: Sequence[Purchase]) -> list[str]:
    """A shopper's products by how often they bought them; ties: the more recently bought first."""
    counts = Counter(purchase.product for purchase in purchases)
    latest: dict[str, float] = {}
    for purchase in purchases:
        latest[purchase.product] = max(purchase.timestamp, latest.get(purchase.product, -math.inf))
    return sorted(
        counts, key=lambda product_id: (-counts[product_id], -latest[product_id], product_id)
    )


class ItemKnn:
    """Item-to-item cosine over the binary shopper x product purchase matrix.

    A shopper's score for a product is the sum of its similarities to each product they bought,
    itself left out (so a bought product only scores through the other purchases).
    """

    def __init__(self, baskets: Iterable[Collection[str]]) -> None:
        rows = [sorted(basket) for basket in baskets]
        self.products = sorted({product_id for row in rows for product_id in row})
        self.column = {product_id: column for column, product_id in enumerate(self.products)}
        bought = np.zeros((len(rows), len(self.products)), dtype=np.float32)
        for row, basket in enumerate(rows):
            bought[row, [self.column[product_id] for product_id in basket]] = 1.0
        together = bought.T @ bought  # shoppers who bought both, per pair of products
        norms = np.sqrt(np.diag(together))
        self.similarity = together / np.outer(norms, norms)
        np.fill_diagonal(self.similarity, 0.0)

    def rank(self, bought: Collection[str], k: int, leave_out: Collection[str] = ()) -> list[str]:
        """The top k products with a positive score, best first (ties by id)."""
        columns = [self.column[product_id] for product_id in bought if product_id in self.column]
        scores = self.similarity[columns].sum(axis=0)
        order = np.argsort(-scores, kind="stable")
        return top((self.products[c] for c in order if scores[c] > 0), k, leave_out)


def top(ranked: Iterable[str], k: int, leave_out: Collection[str] = ()) -> list[str]:
    """The first k products of a ranking that are not left out."""
    return list(itertools.islice((p for p in ranked if p not in leave_out), k))


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
    async with _private_run(settings, progress) as run:
        imported = await run.import_products(products_path, batch_size)
        indexers = await run.start_consumers({run.services.catalog.stream})
        await run.consume(indexers, "indexing")
        await run.refit(imported.imported)
        rankings, failed = await run.search(sorted(judgments), k)
        judged = {product_id for grades in judgments.values() for product_id in grades}
        missing = judged - set(await _existing(run.services, judged))
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


class ViewScores(msgspec.Struct):
    discovery: RankingScores
    all: RankingScores


class Baselines(msgspec.Struct):
    popular: ViewScores
    own_frequency: ViewScores
    item_knn: ViewScores


class RecommendationReport(msgspec.Struct):
    """Exactly what `--json` prints."""

    for_you: ViewScores
    baselines: Baselines
    users: int


# A list maker for the views: (user, leave out what they bought?) -> product ids, best first.
Recommender = Callable[[Shopper, bool], Sequence[str]]


def score_views(split: Split, recommend: Recommender) -> ViewScores:
    """Discovery: purchases left out of lists and truth; all: repeat purchases count."""
    new = split.new_products()
    return ViewScores(
        discovery=score_rankings({user: recommend(user, True) for user in new}, new),
        all=score_rankings({user: recommend(user, False) for user in split.truth}, split.truth),
    )


def score_baselines(split: Split, cutoff: datetime) -> Baselines:
    """The three baselines on the split, each in both views."""
    popular = popular_products(split.history, cutoff.timestamp() - POPULAR_DAYS * DAY)
    knn = ItemKnn([split.bought(shopper) for shopper in split.history])

    def leave_out(user: Shopper, exclude_purchased: bool) -> frozenset[str]:
        return split.bought(user) if exclude_purchased else frozenset()

    def own(user: Shopper, exclude_purchased: bool) -> list[str]:
        mine = own_frequency(split.history.get(user, []))
        return top(mine, CUTOFF, leave_out(user, exclude_purchased))

    return Baselines(
        popular=score_views(split, lambda user, ex: top(popular, CUTOFF, leave_out(user, ex))),
        own_frequency=score_views(split, own),
        item_knn=score_views(
            split, lambda user, ex: knn.rank(split.bought(user), CUTOFF, leave_out(user, ex))
        ),
    )


_ROWS = (("for you", None), ("popular", "popular"), ("own frequency", "own_frequency"),
         ("item-kNN", "item_knn"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class RecommendationEvaluation:
    report: RecommendationReport
    cutoff: datetime
    # Users in the discovery view (their first order holds a product new to them).
    discovery_users: int
    # Stage -> seconds it took.
    timings: dict[str, float]
    history_events: int
    # Lines of the events file that are not valid, dated events (left out of everything).
    invalid_events: list[Rejection]
    rejected_events: int
    rejected_products: int

    def render(self) -> str:
        report = self.report
        metrics = f"{'HR@10':>8}{'Recall@10':>11}{'NDCG@10':>9}"
        lines = [
            f"recommendation quality at the cutoff {self.cutoff:%Y-%m-%d}: {report.users:,} "
            f"users ({self.discovery_users:,} in the discovery view), "
            f"{self.history_events:,} events before it",
            "",
            f"{'':<14}{'discovery':^28}  {'all':^28}".rstrip(),
            f"{'':<14}{metrics}  {metrics}",
        ]
        for label, baseline in _ROWS:
            views: ViewScores = getattr(report.baselines, baseline) if baseline else report.for_you
            cells = "  ".join(
                f"{s.hr:>8.4f}{s.recall:>11.4f}{s.ndcg:>9.4f}" for s in (views.discovery, views.all)
            )
            lines.append(f"{label:<14}{cells}")
        lines += [
            "",
            "took " + ", ".join(f"{stage} {sec:.1f} s" for stage, sec in self.timings.items()),
        ]
        if self.invalid_events:
            first = self.invalid_events[0]
            lines.append(
                f"warning: {len(self.invalid_events):,} lines are not valid, dated events and "
                f"were left out (first: line {first.line}: {first.reason})"
            )
        if self.rejected_events:
            lines.append(f"warning: the service rejected {self.rejected_events:,} events")
        if self.rejected_products:
            lines.append(f"warning: {self.rejected_products:,} products were rejected")
        return "\n".join(lines)


async def evaluate_recommendations(
    settings: Settings,
    products_path: str,
    events_path: str,
    *,
    cutoff: datetime,
    batch_size: int,
    progress: Progress,
) -> RecommendationEvaluation:
    """Replay the history before `cutoff` in a private namespace, ask "for you" for every
    evaluated user, score it and the baselines; always remove the namespace afterwards."""
    started = time.perf_counter()
    events, invalid = load_events(events_path)
    split = split_events((event for _, event in events), cutoff)
    if not split.truth:
        raise EvaluationError(
            f"{events_path}: no user has events before {cutoff:%Y-%m-%d} and a purchase from "
            "then on"
        )
    history = [item for item, event in events if event.timestamp and event.timestamp < cutoff]
    reading = _since(started)
    async with _private_run(settings, progress) as run:
        run.timings["read events"] = reading
        imported = await run.import_products(products_path, batch_size)
        # The consumers take the events in while they arrive, as the service's would.
        consumers = await run.start_consumers([runner.stream for runner in run.services.runners])
        recorded = await run.import_events(history, batch_size)
        await run.consume(consumers, "consumers")
        await run.refit(imported.imported)
        for_you = await run.for_you(split)
    started = time.perf_counter()
    baselines = score_baselines(split, cutoff)
    run.timings["baselines"] = _since(started)
    report = RecommendationReport(
        for_you=score_views(split, lambda user, exclude: for_you[exclude].get(user, ())),
        baselines=baselines,
        users=len(split.truth),
    )
    log.info("recommendation_evaluation_finished", **msgspec.to_builtins(report))
    return RecommendationEvaluation(
        report=report,
        cutoff=cutoff,
        discovery_users=len(split.new_products()),
        timings=run.timings,
        history_events=len(history),
        invalid_events=invalid,
        rejected_events=recorded.rejected,
        rejected_products=imported.rejected,
    )


@contextlib.asynccontextmanager
async def _private_run(settings: Settings, progress: Progress) -> AsyncIterator["_Run"]:
    """The services on a fresh namespace of the configured Redis, removed when the run ends."""
    keys = Keyspace(f"eval{secrets.token_hex(6)}:")
    settings = _evaluation_settings(settings)
    async with connect(settings) as connection, contextlib.AsyncExitStack() as cleanup:
        log.info("evaluation_started", namespace=keys.prefix)
        if connection.started_server:
            # Runs after the drop: the next start need not replay the evaluation's writes.
            cleanup.push_async_callback(compact_append_only_file, connection.client)
        # Registered before the stages, so it runs after them: once consumers and refits stopped.
        cleanup.push_async_callback(drop_namespace, connection.client, keys)
        services = build_services(connection.client, keys, settings)
        # Before the drop: a run that fails early may leave the first products' refit running.
        cleanup.push_async_callback(services.vectors.stop)
        yield _Run(services, cleanup, progress)


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
        self.timings["import products"] = _since(started)
        return imported

    async def import_events(
        self, items: Iterable[SourceItem], batch_size: int
    ) -> EventImportSummary:
        """Through `TrackingService.record`, as `POST /api/v1/events` would."""
        started = time.perf_counter()
        sink = TrackingSink(self.services.tracking)
        recorded = await run_event_import(items, sink, batch_size, self.progress)
        if recorded.error is not None:
            raise EvaluationError(f"importing the events failed: {recorded.error}")
        self.timings["import events"] = _since(started)
        return recorded

    async def start_consumers(self, streams: Collection[str]) -> list[StreamRunner]:
        """Start this process's consumers of those streams (stopped when the run ends)."""
        runners = [runner for runner in self.services.runners if runner.stream in streams]
        for runner in runners:
            await runner.ensure_group()
            runner.start()
            self.cleanup.push_async_callback(runner.stop)
        return runners

    async def consume(self, runners: Sequence[StreamRunner], stage: str) -> None:
        """Wait until the runners have handled every entry of their streams, then stop them."""
        started = time.perf_counter()
        for runner in runners:
            await wait_until_consumed(runner, self.progress)
            await runner.stop()
        self.timings[stage] = _since(started)

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

    async def for_you(self, split: Split) -> dict[bool, dict[Shopper, list[str]]]:
        """The real "for you" list of every evaluated user, by exclude_purchased: one per view."""
        started = time.perf_counter()
        asks = [(user, True) for user in split.new_products()]
        asks += [(user, False) for user in split.truth]
        lists: dict[bool, dict[Shopper, list[str]]] = {True: {}, False: {}}
        # in_stock=None: no stock filter, so the truth is never hidden by today's stock.
        everything = Filters(in_stock=None)
        self.progress.begin("recommending", "lists", total=len(asks))
        for start in range(0, len(asks), _LISTS_AT_ONCE):
            chunk = asks[start : start + _LISTS_AT_ONCE]
            found = await asyncio.gather(
                *(self.services.recommend.for_you(u, CUTOFF, everything, ex) for u, ex in chunk)
            )
            for (user, exclude), result in zip(chunk, found, strict=True):
                lists[exclude][user] = [item.id for item in result.items]
            self.progress.update(start + len(chunk))
        self.progress.end()
        self.timings["for you"] = _since(started)
        return lists


def _evaluation_settings(settings: Settings) -> Settings:
    """No background refit while indexing: it would only compete with the final one for CPU.

    And connections for the lists asked at once, each on connections of its own.
    """
    vectors = msgspec.structs.replace(settings.vectors, refit_min_interval_seconds=math.inf)
    wanted = _LISTS_AT_ONCE * _CONNECTIONS_PER_LIST
    redis = msgspec.structs.replace(
        settings.redis, max_connections=max(settings.redis.max_connections, wanted)
    )
    return msgspec.structs.replace(settings, vectors=vectors, redis=redis)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 2)


async def _existing(services: Services, ids: Iterable[str]) -> list[str]:
    wanted = sorted(ids)
    found = await services.catalog.get_many(wanted)
    return [product_id for product_id, p in zip(wanted, found, strict=True) if p is not None]


async def wait_until_consumed(runner: StreamRunner, progress: Progress) -> None:
    """Until the runner's group has read every entry of its stream and acknowledged it."""
    progress.begin(runner.group, "entries")
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
            f"{dead} stream entries could not be handled (see {runner.dead_letter_stream})"
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
