"""REST for products under /api/v1/products."""

from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from recommender.catalog.schemas import (
    ID_PATTERN,
    BatchResult,
    Category,
    Product,
    ProductCreate,
    ProductFields,
    ProductPage,
    ProductUpdate,
)
from recommender.catalog.service import CatalogService
from recommender.platform.security import WRITES

MAX_BATCH = 1000

PathId = Annotated[str, Parameter(pattern=ID_PATTERN, description="The product id.")]


class ProductBatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Up to 1,000 products in the POST body's schema; each is validated on its own."""

    items: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class ProductController(Controller):
    path = "/api/v1/products"
    tags = ["catalog"]  # noqa: RUF012 - read by Litestar as a class attribute

    @post("/", summary="Create a product (409 if the id exists)", opt=WRITES)
    async def create_product(
        self, data: JSONBody[ProductCreate], catalog: NamedDependency[CatalogService]
    ) -> Product:
        return await catalog.create(data)

    @put(
        "/{product_id:str}",
        summary="Create or replace a product",
        status_code=HTTP_200_OK,
        opt=WRITES,
    )
    async def replace_product(
        self,
        product_id: PathId,
        data: JSONBody[ProductFields],
        catalog: NamedDependency[CatalogService],
    ) -> Response[Product]:
        product, created = await catalog.replace(product_id, data)
        return Response(product, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @patch("/{product_id:str}", summary="Change some fields of a product", opt=WRITES)
    async def update_product(
        self,
        product_id: PathId,
        data: JSONBody[ProductUpdate],
        catalog: NamedDependency[CatalogService],
    ) -> Product:
        return await catalog.update(product_id, data)

    @get("/{product_id:str}", summary="One product")
    async def get_product(
        self, product_id: PathId, catalog: NamedDependency[CatalogService]
    ) -> Product:
        return await catalog.get(product_id)

    @get("/", summary="Products by id, optionally in a category (any prefix of the path)")
    async def list_products(
        self,
        catalog: NamedDependency[CatalogService],
        category: Annotated[Category, Parameter(description="e.g. `Home > Kitchen`")] = "",
        cursor: Annotated[str | None, Parameter(pattern=ID_PATTERN)] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> ProductPage:
        return await catalog.list(category, cursor, limit)

    @delete("/{product_id:str}", summary="Delete a product (404 if absent)", opt=WRITES)
    async def delete_product(
        self, product_id: PathId, catalog: NamedDependency[CatalogService]
    ) -> None:
        await catalog.delete(product_id)

    @post(
        "/batch",
        summary="Upsert up to 1,000 products; a result per item",
        status_code=200,
        opt=WRITES,
    )
    async def upsert_products(
        self, data: JSONBody[ProductBatch], catalog: NamedDependency[CatalogService]
    ) -> BatchResult:
        return await catalog.upsert_batch(data.items)
