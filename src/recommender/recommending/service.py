"""Read surfaces over the catalog's vectors: similar products, hybrid search, autocomplete."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np

from recommender.catalog import CatalogService, Product
from recommender.config import RecommendSettings, SearchSettings
from recommender.platform.errors import InvalidInputError
from recommender.recommending.schemas import (
    Completion,
    Completions,
    Reason,
    RecommendationList,
    RecommendedProduct,
    SearchResult,
)
from recommender.vectors import Filters, Hit, VectorService, text_terms

SearchMode = Literal["hybrid", "bm25", "vector"]

# Autocomplete needs a prefix RediSearch will expand (its minimum prefix is 2 characters).
_MIN_PREFIX = 2


def new_rec_id() -> str:
    return uuid.uuid4().hex


def recommended(product: Product, score: float, reason: Reason) -> RecommendedProduct:
    return RecommendedProduct(
        **msgspec.structs.asdict(product), score=round(score, 6), reason=reason
    )


@dataclass(frozen=True, slots=True)
class _Fused:
    product: Product
    score: float
    matched: Literal["text", "vector", "text+vector"]


class RecommendService:
    def __init__(
        self,
        catalog: CatalogService,
        vectors: VectorService,
        settings: RecommendSettings,
        search_settings: SearchSettings,
    ) -> None:
        self.catalog = catalog
        self.vectors = vectors
        self.settings = settings
        self.search_settings = search_settings

    async def similar(
        self, product_id: str, k: int, filters: Filters, min_score: float | None = None
    ) -> RecommendationList:
        """Nearest products by content, never the product itself."""
        threshold = self.settings.similar_min_score if min_score is None else min_score
        version, vector = await self.vectors.stored_vector(product_id)
        if vector is None:
            await self.catalog.get(product_id)  # 404 for an unknown product
            return RecommendationList(rec_id=new_rec_id(), items=[], embedded=False)
        if not np.any(vector):  # no known term: nothing is similar to it
            return RecommendationList(rec_id=new_rec_id(), items=[])
        filters = Filters(
            category=filters.category, min_price=filters.min_price,
            max_price=filters.max_price, in_stock=filters.in_stock,
            exclude=(*filters.exclude, product_id),
        )  # fmt: skip
        hits = await self.vectors.nearest(version, vector, k, filters)
        reason = Reason(strategy="similar", anchor=product_id)
        return RecommendationList(
            rec_id=new_rec_id(),
            items=[recommended(h.product, h.score, reason) for h in hits if h.score >= threshold],
        )

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
        version, model = await self.vectors.live_model()
        depth = k * self.search_settings.candidates_per_result
        lexical: list[Hit] = []
        semantic: list[Hit] = []
        if mode in ("hybrid", "bm25"):
            lexical = await self.vectors.lexical(version, terms, depth, filters)
        if mode in ("hybrid", "vector"):
            vector = model.embed_query(query)
            if np.any(vector):
                semantic = await self.vectors.nearest(version, vector, depth, filters)
        # A term the index does not know but has a close neighbour of looks misspelled.
        corrections = await self.vectors.spellcheck(version, terms)
        suggestions = [" ".join(corrections.get(t, t) for t in terms)] if corrections else []
        few_lexical = len(lexical) < self.search_settings.few_lexical_hits
        items = []
        for fused in self._fuse(lexical, semantic)[:k]:
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

    def _fuse(self, lexical: Sequence[Hit], semantic: Sequence[Hit]) -> list[_Fused]:
        """Weighted reciprocal-rank fusion of the text and vector rankings."""
        rrf_k = self.search_settings.rrf_k
        scores: dict[str, float] = {}
        products: dict[str, Product] = {}
        sides: dict[str, set[str]] = {}
        for side, hits, weight in (
            ("text", lexical, self.search_settings.lexical_weight),
            ("vector", semantic, self.search_settings.vector_weight),
        ):
            for rank, hit in enumerate(hits, start=1):
                product_id = hit.product.id
                scores[product_id] = scores.get(product_id, 0.0) + weight / (rrf_k + rank)
                products[product_id] = hit.product
                sides.setdefault(product_id, set()).add(side)
        ranked = sorted(scores, key=lambda product_id: -scores[product_id])
        return [
            _Fused(products[i], scores[i], "text+vector" if len(sides[i]) == 2 else sides[i].pop())  # type: ignore[arg-type]
            for i in ranked
        ]

    async def autocomplete(self, query: str, k: int) -> Completions:
        terms = text_terms(query[: self.search_settings.max_query_length])
        if not terms or len(terms[-1]) < _MIN_PREFIX:
            return Completions(query=query, items=[])
        version, _ = await self.vectors.live_model()
        products = await self.vectors.complete(version, terms, k)
        return Completions(query=query, items=[Completion(id=p.id, name=p.name) for p in products])
