"""Read surfaces: similar products, search, autocomplete."""

import dataclasses
import re
from typing import Annotated

from litestar import Controller, Response, get
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import Parameter

from recommender.catalog.schemas import ID_PATTERN, Category, normalise_category
from recommender.platform.errors import InvalidInputError
from recommender.recommending.schemas import Completions, RecommendationList, SearchResult
from recommender.recommending.service import Deferred, RecommendService, SearchMode
from recommender.tracking import Shopper
from recommender.vectors import Filters

K = Annotated[int, Parameter(ge=1, le=100, description="How many items, at most.")]
Price = Annotated[float | None, Parameter(ge=0)]
PathId = Annotated[str, Parameter(pattern=ID_PATTERN)]
ExcludePurchased = Annotated[
    bool, Parameter(description="Leave out what the shopper already bought (default true).")
]
Days = Annotated[int | None, Parameter(ge=1, le=365, description="Window; default in config.")]
Query = Annotated[str, Parameter(min_length=1, max_length=1000)]


def provide_filters(
    category: Annotated[Category, Parameter(description="Any prefix of a category path.")] = "",
    min_price: Price = None,
    max_price: Price = None,
    in_stock: Annotated[
        bool, Parameter(description="true: only products in stock; false: only those out of it")
    ] = True,
    exclude: Annotated[
        list[Annotated[str, Parameter(pattern=ID_PATTERN)]] | None,
        Parameter(max_items=100, description="Product ids to leave out (repeat the parameter)."),
    ] = None,
) -> Filters:
    """The business filters every list endpoint takes, as query parameters."""
    try:
        path = normalise_category(category)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error
    if min_price is not None and max_price is not None and min_price > max_price:
        raise InvalidInputError("min_price: must not exceed max_price")
    # Checked here too: Litestar does not apply a pattern to the items of a list parameter.
    if any(not re.fullmatch(ID_PATTERN, product_id) for product_id in exclude or ()):
        raise InvalidInputError(f"exclude: every id must match {ID_PATTERN}")
    return Filters(
        category=path, min_price=min_price, max_price=max_price, in_stock=in_stock,
        exclude=tuple(exclude or ()),
    )  # fmt: skip


class RecommendController(Controller):
    path = "/api/v1"
    tags = ["recommendations"]  # noqa: RUF012 - read by Litestar as a class attribute
    dependencies = {"where": Provide(provide_filters, sync_to_thread=False)}  # noqa: RUF012

    @get("/products/{product_id:str}/similar", summary="Products similar in content")
    async def similar_products(
        self,
        product_id: PathId,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
        min_score: Annotated[
            float | None, Parameter(ge=-1, le=1, description="Lowest cosine; default in config.")
        ] = None,
    ) -> RecommendationList:
        return await _service(state).similar(product_id, k, where, min_score)

    @get("/search", summary="Hybrid product search: BM25 and vectors, fused")
    async def search(
        self,
        state: State,
        where: NamedDependency[Filters],
        q: Query,
        k: K = 10,
        mode: Annotated[SearchMode, Parameter(description="hybrid, or one side alone")] = "hybrid",
    ) -> SearchResult:
        return await _service(state).search(q, k, where, mode)

    @get("/autocomplete", summary="Product names completing what was typed")
    async def autocomplete(
        self, recommend: NamedDependency[RecommendService], q: Query, k: K = 10
    ) -> Completions:
        return await recommend.autocomplete(q, k)

    @get("/users/{user_id:str}/recommendations", summary="For you: a signed-in shopper")
    async def for_user(
        self,
        user_id: PathId,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
        exclude_purchased: ExcludePurchased = True,
    ) -> Response[RecommendationList]:
        shopper = Shopper("user", user_id)
        return await _for_you(_service(state), shopper, k, where, exclude_purchased)

    @get("/sessions/{session_id:str}/recommendations", summary="For you: an anonymous shopper")
    async def for_session(
        self,
        session_id: PathId,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
        exclude_purchased: ExcludePurchased = True,
    ) -> Response[RecommendationList]:
        shopper = Shopper("session", session_id)
        return await _for_you(_service(state), shopper, k, where, exclude_purchased)

    @get("/users/{user_id:str}/buy-again", summary="The user's repeat purchases")
    async def buy_again(
        self,
        user_id: PathId,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
    ) -> RecommendationList:
        return await _service(state).buy_again(Shopper("user", user_id), k, where)

    @get("/products/{product_id:str}/bought-together", summary="Bought with this product")
    async def bought_together(
        self,
        product_id: PathId,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
    ) -> RecommendationList:
        return await _service(state).bought_together(product_id, k, where)

    @get("/popular", summary="Most interacted-with products over a window")
    async def popular(
        self,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
        days: Days = None,
    ) -> RecommendationList:
        return await _service(state).popular(k, where, days)

    @get("/trending", summary="Products rising now (time-decayed interest)")
    async def trending(
        self,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
    ) -> RecommendationList:
        return await _service(state).trending(k, where)

    @get("/categories/{path:str}/popular", summary="Popular in a category (any path prefix)")
    async def category_popular(
        self,
        path: Category,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
        days: Days = None,
    ) -> RecommendationList:
        return await _service(state).popular(k, _in_category(where, path), days)

    @get("/categories/{path:str}/trending", summary="Trending in a category (any path prefix)")
    async def category_trending(
        self,
        path: Category,
        state: State,
        where: NamedDependency[Filters],
        k: K = 10,
    ) -> RecommendationList:
        return await _service(state).trending(k, _in_category(where, path))


def _service(state: State) -> RecommendService:
    # Read from the state, not injected beside the filters: Litestar resolves two dependencies
    # of one handler in an anyio task group, measured at a sixth of a cached similar request.
    service: RecommendService = state.recommend
    return service


def _in_category(where: Filters, path: str) -> Filters:
    try:
        category = normalise_category(path)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error
    return dataclasses.replace(where, category=category)


async def _for_you(
    service: RecommendService, shopper: Shopper, k: int, where: Filters, exclude_purchased: bool
) -> Response[RecommendationList]:
    """The list, answered before the write that keeps its candidates (the shopper need not wait
    for it: under load a round trip is a few ms)."""
    writes: list[Deferred] = []
    found = await service.for_you(shopper, k, where, exclude_purchased, later=writes.append)
    background = BackgroundTasks([BackgroundTask(write) for write in writes]) if writes else None
    return Response(found, background=background)
