"""Products: schemas, storage with atomic catalog events, CRUD service and routes."""

from recommender.catalog.repository import CatalogRepository
from recommender.catalog.routes import ProductController
from recommender.catalog.schemas import Product, ProductCreate, category_prefixes
from recommender.catalog.service import CatalogService

__all__ = [
    "CatalogRepository",
    "CatalogService",
    "Product",
    "ProductController",
    "ProductCreate",
    "category_prefixes",
]
