"""What every recommendation surface returns: products with a score and the reason for it."""

from typing import Literal

import msgspec

from recommender.catalog import Product

Strategy = Literal[
    "similar",
    "search",
    "search_alternative",
    "co_purchased",
    "co_viewed",
    "co_carted",
    "popular",
    "trending",
    "buy_again",
]


class Reason(msgspec.Struct, kw_only=True, omit_defaults=True):
    strategy: Strategy
    # The product this one is related to ("similar to X"), where there is one...
    anchor: str | None = None
    # ...and what the shopper did with it ("because you viewed X").
    anchor_event: str | None = None
    # For search: which side found it (text, vector, or both).
    matched: Literal["text", "vector", "text+vector"] | None = None


class RecommendedProduct(Product, kw_only=True):
    score: float
    reason: Reason


class RecommendationList(msgspec.Struct, kw_only=True):
    rec_id: str
    items: list[RecommendedProduct]
    # False when the anchor product exists but is not in the index yet (it will be shortly).
    embedded: bool = True


class SearchResult(msgspec.Struct, kw_only=True):
    rec_id: str
    query: str
    items: list[RecommendedProduct]
    # Corrected queries when the query looks misspelled.
    suggestions: list[str]
    lexical_hits: int


class Completion(msgspec.Struct, kw_only=True):
    id: str
    name: str


class Completions(msgspec.Struct, kw_only=True):
    query: str
    items: list[Completion]
