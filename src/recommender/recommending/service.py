"""Read surfaces over the catalog's vectors: similar products, hybrid search, autocomplete."""

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice
from typing import Literal, TypeVar

import msgspec
import numpy as np
import structlog
from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recommender.catalog import CatalogService, Product
from recommender.config import Settings
from recommender.platform.cache import PeriodicCache
from recommender.platform.errors import InvalidInputError
from recommender.recommending.fusion import Hit, fuse, one_side, query_words
from recommender.recommending.schemas import (
    Completion,
    Completions,
    Reason,
    RecommendationList,
    RecommendedProduct,
    SearchResult,
    Strategy,
)
from recommender.tracking import Behaviour, HistoryEntry, Shopper, TrackingService
from recommender.vectors import BlendNeighbours, Filters, VectorService, text_terms

SearchMode = Literal["hybrid", "bm25", "vector"]
# A write the answer does not depend on, handed to a caller that can make it after answering.
Deferred = Callable[[], Awaitable[None]]
_T = TypeVar("_T")

log = structlog.get_logger()

FOR_YOU_LISTS = Counter(
    "recommender_for_you_lists",
    '"For you" lists answered, by source: "kept" (the shopper\'s candidates kept since their '
    'last event) or "computed".',
    ["source"],
)
_KEPT_LISTS = FOR_YOU_LISTS.labels(source="kept")
_COMPUTED_LISTS = FOR_YOU_LISTS.labels(source="computed")

# Autocomplete needs a prefix RediSearch will expand (its minimum prefix is 2 characters).
_MIN_PREFIX = 2
# Categories whose best sellers one process keeps at once (the least recently read go first).
_SELLING_NOW_CATEGORIES = 1000


def new_rec_id() -> str:
    return secrets.token_hex(16)


def recommended(product: Product, score: float, reason: Reason) -> RecommendedProduct:
    return RecommendedProduct(
        **msgspec.structs.asdict(product), score=round(score, 6), reason=reason
    )


Ranked = list[tuple[str, float]]
# (product id, score, reason), as ranked before products are read and filtered.
Candidate = tuple[str, float, Reason]
# A kept "for you" list is the head of its candidates, this many per item asked for: filters
# that reject more (a narrow price range) make the request rank them all again.
_KEPT_PER_ITEM = 5


# In the name a kept list is stored under: a change to how it is encoded bumps it, so a
# list kept by the code before is never decoded.
_KEPT_FORMAT = 2


class _KeptCandidate(msgspec.Struct, array_like=True, omit_defaults=True):
    """A candidate as kept, its reason in line: a map would spell out every field's name (a
    "for you" reason has no `matched`)."""

    id: str
    score: float
    strategy: Strategy
    anchor: str | None = None
    anchor_event: str | None = None

    @classmethod
    def of(cls, candidate: Candidate) -> "_KeptCandidate":
        product_id, score, reason = candidate
        return cls(product_id, score, reason.strategy, reason.anchor, reason.anchor_event)

    def candidate(self) -> Candidate:
        reason = Reason(strategy=self.strategy, anchor=self.anchor, anchor_event=self.anchor_event)
        return self.id, self.score, reason


class _Candidates(msgspec.Struct, array_like=True):
    """A shopper's "for you" candidates as kept between their events."""

    complete: bool  # False: more candidates followed these
    items: list[_KeptCandidate]


_candidates_encoder = msgspec.msgpack.Encoder()
_candidates_decoder = msgspec.msgpack.Decoder(_Candidates)


class RecommendService:
    def __init__(
        self,
        catalog: CatalogService,
        vectors: VectorService,
        tracking: TrackingService,
        settings: Settings,
    ) -> None:
        self.catalog = catalog
        self.vectors = vectors
        self.tracking = tracking
        self.settings = settings.recommend
        self.search_settings = settings.search
        self.popular_days = settings.tracking.popularity_default_days
        self.neighbour_depth = settings.vectors.neighbour_cache_depth
        # Each category's best sellers, as shares of the top one: the window counts days, so a
        # few seconds change nothing, and a request does not read a thousand of its own.
        self.selling_now: PeriodicCache[str, tuple[Ranked, dict[str, float]]] = PeriodicCache(
            self._read_selling_now,
            self.settings.selling_now_cache_seconds,
            _SELLING_NOW_CATEGORIES,
        )

    async def _read_selling_now(self, category: str) -> tuple[Ranked, dict[str, float]]:
        ranked = await self.tracking.popular(
            self.settings.selling_now_days, category, self.settings.selling_now_depth
        )
        return ranked, dict(ranked)

    async def similar(
        self, product_id: str, k: int, filters: Filters, min_score: float | None = None
    ) -> RecommendationList:
        """Nearest products by content, never the product itself."""
        threshold = self.settings.similar_min_score if min_score is None else min_score
        filters = Filters(
            category=filters.category, min_price=filters.min_price,
            max_price=filters.max_price, in_stock=filters.in_stock,
            exclude=(*filters.exclude, product_id),
        )  # fmt: skip
        if not filters.broad:  # a category or price bound passes few of the nearest: ask the index
            return await self._similar_by_query(product_id, k, filters, threshold)
        depth = max(k, self.neighbour_depth)
        neighbours = await self.vectors.neighbours(product_id, depth)
        if neighbours is None:
            await self.catalog.get(product_id)  # 404 for an unknown product
            return RecommendationList(rec_id=new_rec_id(), items=[], embedded=False)
        blend = _Blend()
        blend.add(
            [(other, score) for other, score in neighbours if score >= threshold],
            1.0, Reason(strategy="similar", anchor=product_id),
        )  # fmt: skip
        found = await self._ranked_list(blend, k, filters, set(), diversify=False)
        more = len(neighbours) == depth and neighbours[-1][1] >= threshold
        if len(found.items) < k and more:  # out of stock or excluded: look past those kept
            return await self._similar_by_query(product_id, k, filters, threshold)
        return found

    async def _similar_by_query(
        self, product_id: str, k: int, filters: Filters, threshold: float
    ) -> RecommendationList:
        version, vector = await self.vectors.stored_vector(product_id)
        if vector is None:
            await self.catalog.get(product_id)  # 404 for an unknown product
            return RecommendationList(rec_id=new_rec_id(), items=[], embedded=False)
        if not np.any(vector):  # no known term: nothing is similar to it
            return RecommendationList(rec_id=new_rec_id(), items=[])
        blend = _Blend()
        nearest = await self.vectors.nearest_ids(version, vector, k, filters)
        blend.add(
            [(other, score) for other, score in nearest if score >= threshold],
            1.0, Reason(strategy="similar", anchor=product_id),
        )  # fmt: skip
        return await self._ranked_list(blend, k, filters, set(), diversify=False)

    async def search(
        self, query: str, k: int, filters: Filters, mode: SearchMode = "hybrid"
    ) -> SearchResult:
        if len(query) > self.search_settings.max_query_length:
            raise InvalidInputError(
                f"q: at most {self.search_settings.max_query_length} characters"
            )
        terms = text_terms(query)
        if not terms:
            raise InvalidInputError("q: needs at least one letter or digit")
        depth = k * self.search_settings.candidates_per_result
        version, model, (lexical_ids, semantic_ids) = await self.vectors.search(
            query, [] if mode == "vector" else terms, mode != "bm25", depth, filters
        )
        # Products come as the lists' do, current (a change since indexing is filtered again).
        ids = list(dict.fromkeys(pid for pid, _ in (*lexical_ids, *semantic_ids)))
        products = dict(zip(ids, await self.catalog.get_many(ids, cached=True), strict=True))
        lexical, semantic = (
            [Hit(product, score) for pid, score in side
             if (product := products[pid]) is not None and filters.admits(product)]
            for side in (lexical_ids, semantic_ids)
        )  # fmt: skip
        # A term the index does not know but has a close neighbour of looks misspelled; one the
        # model learnt from the catalog is no misspelling, so most queries skip the round trips.
        corrections = (
            {} if all(map(model.knows_word, terms))
            else await self.vectors.spellcheck(version, terms)
        )  # fmt: skip
        suggestions = [" ".join(corrections.get(t, t) for t in terms)] if corrections else []
        if mode == "hybrid":
            settings = self.search_settings
            ranked = fuse(
                query_words(query, settings.last_word_weight),
                lexical,
                semantic,
                depth=depth,
                vector_weight=settings.vector_weight,
                name_match_weight=settings.name_match_weight,
            )
        else:
            ranked = one_side(lexical, "text") if mode == "bm25" else one_side(semantic, "vector")
        few_lexical = len(lexical) < self.search_settings.few_lexical_hits
        items = []
        for fused in ranked[:k]:
            alternative = few_lexical and fused.matched == "vector"
            reason = Reason(
                strategy="search_alternative" if alternative else "search", matched=fused.matched
            )
            items.append(recommended(fused.product, fused.score, reason))
        return SearchResult(
            rec_id=new_rec_id(),
            query=query,
            items=items,
            suggestions=suggestions,
            lexical_hits=len(lexical),
        )

    async def autocomplete(self, query: str, k: int) -> Completions:
        terms = text_terms(query[: self.search_settings.max_query_length])
        if not terms or len(terms[-1]) < _MIN_PREFIX:
            return Completions(query=query, items=[])
        version, _ = await self.vectors.live_model()
        named = await self.vectors.complete(version, terms, k)
        return Completions(
            query=query, items=[Completion(id=product_id, name=name) for product_id, name in named]
        )

    # -- personal and behavioural lists ---------------------------------------------------------

    async def for_you(
        self,
        shopper: Shopper,
        k: int,
        filters: Filters,
        exclude_purchased: bool = True,
        later: Callable[[Deferred], None] | None = None,
    ) -> RecommendationList:
        """Blend what the shopper's recent products lead to; popular items for a stranger.

        The ranked candidates are kept until the shopper's next event, for at most
        `for_you_cache_seconds`; products are read (`catalog.change_check_seconds` at most behind
        the catalog) and filtered on every request. Keeping computed candidates is handed to
        `later` when given (a route writes after answering), else awaited.
        """
        seconds = self.settings.for_you_cache_seconds
        name = f"for_you.{_KEPT_FORMAT}:{k}:{int(exclude_purchased)}:{filters.category}"
        kept = await self.tracking.derived(shopper, name, seconds) if seconds > 0 else None
        if kept is not None and kept.value is not None:
            cached = _candidates_decoder.decode(kept.value)
            found, exhausted = await self._pick(
                (item.candidate() for item in cached.items), k, filters
            )
            if cached.complete or not exhausted:
                _KEPT_LISTS.inc()
                return found
        _COMPUTED_LISTS.inc()
        behaviour = (
            kept.behaviour if kept is not None and kept.behaviour is not None
            else await self.tracking.behaviour(shopper)
        )  # fmt: skip
        candidates, near, anchors = await self._for_you_candidates(
            behaviour, k, filters.category, exclude_purchased
        )
        if kept is not None:
            # The head is kept with its anchors named: a later request has no vectors to do it.
            size = k * _KEPT_PER_ITEM
            head = list(islice(candidates, size + 1))  # one more tells whether there are more
            named = await self._anchor_reasons([(p, r) for p, _, r in head[:size]], near, anchors)
            head = [(p, score, named.get(p, reason)) for p, score, reason in head]
            value = _Candidates(
                complete=len(head) <= size, items=[_KeptCandidate.of(c) for c in head[:size]]
            )
            keep = partial(self._keep, shopper, name, kept.lease, _candidates_encoder.encode(value))
            if later is None:
                await keep()
            else:
                later(keep)
            candidates = chain(head, candidates)
        found, _ = await self._pick(candidates, k, filters)
        # Those still unnamed (all of them when nothing is kept) are named now.
        named = await self._anchor_reasons(
            [(item.id, item.reason) for item in found.items], near, anchors
        )
        for item in found.items:
            item.reason = named.get(item.id, item.reason)
        return found

    async def _keep(self, shopper: Shopper, name: str, lease: str, value: bytes) -> None:
        """Keep a shopper's computed candidates; if Redis fails, the next request computes them."""
        try:
            await self.tracking.keep_derived(shopper, name, lease, value)
        except (RedisConnectionError, RedisTimeoutError) as error:
            log.warning("for_you_not_kept", shopper=shopper.kind, error=str(error))

    async def _for_you_candidates(
        self, behaviour: Behaviour, k: int, category: str, exclude_purchased: bool
    ) -> tuple[Iterator["Candidate"], BlendNeighbours | None, list["_Anchor"]]:
        """Every candidate, best first; the content side and the anchors, to name reasons."""
        purchased = dict(behaviour.purchases)
        anchors = self._anchors(behaviour.history)
        blend = _Blend()
        near = await self._add_neighbours(blend, anchors)
        # After, not beside: the anchors are cached products, and a gather costs the loop turns
        # of two more tasks (the tail of a computed list, under load).
        category = category or await self._favourite_category(anchors)
        if not exclude_purchased:
            blend.add(
                purchased.items(), self.settings.buy_again_weight, Reason(strategy="buy_again")
            )
        popular, selling = await self.selling_now.get(category)
        blend.scale(selling, self.settings.selling_now_floor)
        blend.add(popular[: k * 3], self.settings.popularity_weight, Reason(strategy="popular"))
        leave_out = set(purchased) if exclude_purchased else set()
        return blend.ranked(leave_out), near, anchors

    def _anchors(self, history: Sequence[HistoryEntry]) -> list["_Anchor"]:
        """The shopper's products by weight: stronger and more recent events count more."""
        if not history:
            return []
        latest = history[0].timestamp  # ages against the newest event, so replays work too
        half_life = self.settings.recency_half_life_days * 86400
        anchors: dict[str, _Anchor] = {}
        for entry in history:
            weight = self.tracking.weight(entry.type) * 0.5 ** (
                (latest - entry.timestamp) / half_life
            )
            if weight <= 0:
                continue
            anchor = anchors.setdefault(
                entry.product_id, _Anchor(entry.product_id, 0.0, entry.type)
            )
            anchor.weight += weight
            if self.tracking.weight(entry.type) > self.tracking.weight(anchor.event):
                anchor.event = entry.type
        ranked = sorted(anchors.values(), key=lambda a: -a.weight)[: self.settings.anchors]
        total = sum(a.weight for a in ranked)
        for anchor in ranked:
            anchor.weight /= total
        return ranked

    async def _add_neighbours(
        self, blend: "_Blend", anchors: Sequence["_Anchor"]
    ) -> BlendNeighbours | None:
        """Co-occurrence neighbours of the strongest anchors and content neighbours of them all,
        weighted by the anchor; the content side for naming anchors later (None: not asked)."""
        settings = self.settings
        n = settings.neighbours_per_anchor
        sources = (
            ("purchase", "co_purchased", settings.co_purchase_weight),
            ("view", "co_viewed", settings.co_view_weight),
            ("cart", "co_carted", settings.co_cart_weight),
        )
        strongest = anchors[: settings.co_occurrence_anchors]
        lookups = [(kind, anchor.product_id) for anchor in strongest for kind, _, _ in sources]
        content = settings.content_weight > 0 and bool(anchors)
        lists, near = await asyncio.gather(
            self.tracking.co_occurring_many(lookups, n),
            self.vectors.near_blend(
                [(anchor.product_id, anchor.weight) for anchor in anchors],
                settings.content_candidates,
            ) if content else _given(None),
        )  # fmt: skip
        neighbour_lists = iter(lists)
        for anchor in strongest:
            for _, strategy, weight in sources:
                reason = Reason(strategy=strategy, anchor=anchor.product_id,  # type: ignore[arg-type]
                                anchor_event=anchor.event)  # fmt: skip
                blend.add(next(neighbour_lists), weight * anchor.weight, reason)
        if near is not None:
            # Which anchor a content neighbour owes most to is worked out for the few shown.
            blend.add(near.hits, settings.content_weight, Reason(strategy="similar"))
        return near

    async def _anchor_reasons(
        self,
        reasons: Sequence[tuple[str, Reason]],
        near: BlendNeighbours | None,
        anchors: Sequence["_Anchor"],
    ) -> dict[str, Reason]:
        """For each product there because of content, a reason naming the anchor it is most
        similar to."""
        unnamed = [product_id for product_id, reason in reasons
                   if reason.strategy == "similar" and reason.anchor is None]  # fmt: skip
        if near is None or not unnamed:
            return {}
        events = {anchor.product_id: anchor.event for anchor in anchors}
        return {
            product_id: Reason(strategy="similar", anchor=anchor, anchor_event=events[anchor])
            for product_id, anchor in (await self.vectors.strongest_blended(near, unnamed)).items()
        }

    async def _favourite_category(self, anchors: Sequence["_Anchor"]) -> str:
        """The category path the shopper's strongest anchors weigh most in ("" if none has one)."""
        weights: dict[str, float] = {}
        anchors = anchors[: self.settings.co_occurrence_anchors]
        products = await self.catalog.get_many(
            [anchor.product_id for anchor in anchors], cached=True
        )
        for anchor, product in zip(anchors, products, strict=True):
            if product is not None and product.category:
                weights[product.category] = weights.get(product.category, 0.0) + anchor.weight
        return max(weights, key=weights.__getitem__) if weights else ""

    async def buy_again(self, shopper: Shopper, k: int, filters: Filters) -> RecommendationList:
        blend = _Blend()
        blend.add(await self.tracking.purchased(shopper), 1.0, Reason(strategy="buy_again"))
        return await self._ranked_list(blend, k, filters, set(), diversify=False)

    async def bought_together(
        self, product_id: str, k: int, filters: Filters
    ) -> RecommendationList:
        """Co-purchases; where there are too few, co-views; then similar products."""
        await self.catalog.get(product_id, cached=True)  # 404 for an unknown product
        blend = _Blend()
        n = max(k * 3, self.settings.neighbours_per_anchor)
        sources = (("purchase", "co_purchased"), ("view", "co_viewed"))
        lists = await self.tracking.co_occurring_many(
            [(kind, product_id) for kind, _ in sources], n
        )
        for rank, ((_, strategy), neighbours) in enumerate(zip(sources, lists, strict=True)):
            reason = Reason(strategy=strategy, anchor=product_id)  # type: ignore[arg-type]
            blend.add(neighbours, 10.0**-rank, reason)  # a fallback never outranks the source
        if len(blend.scores) < k:
            nearest = await self.vectors.neighbours(product_id, n) or []
            blend.add(nearest, 0.01, Reason(strategy="similar", anchor=product_id))
        return await self._ranked_list(blend, k, filters, {product_id}, diversify=False)

    async def popular(
        self, k: int, filters: Filters, days: int | None = None
    ) -> RecommendationList:
        ranked = await self.tracking.popular(days or self.popular_days, filters.category, k * 3)
        blend = _Blend()
        blend.add(ranked, 1.0, Reason(strategy="popular"))
        return await self._ranked_list(blend, k, filters, set(), diversify=False)

    async def trending(self, k: int, filters: Filters) -> RecommendationList:
        ranked = await self.tracking.trending(filters.category, k * 3)
        blend = _Blend()
        blend.add(ranked, 1.0, Reason(strategy="trending"))
        return await self._ranked_list(blend, k, filters, set(), diversify=False)

    async def _ranked_list(
        self, blend: "_Blend", k: int, filters: Filters, leave_out: set[str], diversify: bool = True
    ) -> RecommendationList:
        found, _ = await self._pick(blend.ranked(leave_out), k, filters, diversify)
        return found

    async def _pick(
        self, candidates: Iterable["Candidate"], k: int, filters: Filters, diversify: bool = True
    ) -> tuple[RecommendationList, bool]:
        """The best k live products that pass the filters, no category filling the list; and
        whether that took every candidate (True: more candidates might have changed it)."""
        remaining = (candidate for candidate in candidates if candidate[0] not in filters.exclude)
        items: list[RecommendedProduct] = []
        per_category: dict[str, int] = {}
        cap = max(1, int(k * self.settings.max_category_share))
        held_back: list[RecommendedProduct] = []
        # Products come with their current state (catalog.change_check_seconds at most behind
        # another process's write): a deleted or changed one does not show stale.
        size = k  # most lists pass whole; once one did not, read twice as far ahead
        while chunk := list(islice(remaining, size)):
            size = k * 2
            ids = [product_id for product_id, _, _ in chunk]
            products = await self.catalog.get_many(ids, cached=True)
            for (_, score, reason), product in zip(chunk, products, strict=True):
                if product is None or not filters.admits(product):
                    continue
                item = recommended(product, score, reason)
                top = product.category.split(" > ")[0]
                if diversify and not filters.category and top and per_category.get(top, 0) >= cap:
                    held_back.append(item)
                    continue
                per_category[top] = per_category.get(top, 0) + 1
                items.append(item)
                if len(items) == k:
                    return RecommendationList(rec_id=new_rec_id(), items=items), False
        # Not enough variety in stock: fill with what diversity held back, best first.
        items += held_back[: k - len(items)]
        return RecommendationList(rec_id=new_rec_id(), items=items), True


async def _given(value: _T) -> _T:
    """`value` as an awaitable, for an `asyncio.gather` whose step is not always needed."""
    return value


@dataclass(slots=True)
class _Anchor:
    product_id: str
    weight: float
    event: str


class _Blend:
    """Candidate scores summed over sources; the reason is the source that gave the most."""

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self.reasons: dict[str, Reason] = {}
        self._best: dict[str, float] = {}

    def add(self, scored: Iterable[tuple[str, float]], weight: float, reason: Reason) -> None:
        """Add weight x score to each product's (positive ones only), all for one reason."""
        # A call per source, not per product: a "for you" list adds about 700 candidates.
        scores, best, reasons = self.scores, self._best, self.reasons
        for product_id, share in scored:
            score = weight * share
            if score <= 0:
                continue
            scores[product_id] = scores.get(product_id, 0.0) + score
            if score > best.get(product_id, 0.0):
                best[product_id] = score
                reasons[product_id] = reason

    def ranked(self, leave_out: set[str]) -> Iterator["Candidate"]:
        """The candidates but those left out, best first, each made as it is read: a list
        reads a few dozen of several hundred, and each made is an allocation the GC counts."""
        scores, reasons = self.scores, self.reasons
        order = sorted(scores, key=scores.__getitem__, reverse=True)  # ties keep order
        return ((p, scores[p], reasons[p]) for p in order if p not in leave_out)

    def scale(self, factors: Mapping[str, float], floor: float) -> None:
        """Multiply each candidate's score so far, and its best source's, by its factor + floor."""
        scores, best = self.scores, self._best
        for product_id, score in scores.items():
            by = factors.get(product_id, 0.0) + floor
            scores[product_id] = score * by
            best[product_id] *= by
