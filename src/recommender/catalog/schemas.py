"""Products as the API sees them: bounded on every field a client sends."""

import re
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
CATEGORY_SEPARATOR = " > "
MAX_CATEGORY_DEPTH = 8

ProductId = Annotated[str, Meta(pattern=ID_PATTERN, description="1-128 of A-Z a-z 0-9 . _ : -")]
Name = Annotated[str, Meta(min_length=1, max_length=500)]
Description = Annotated[str, Meta(max_length=20_000)]
Category = Annotated[
    str, Meta(max_length=500, description="A path such as `Home > Kitchen > Mugs`.")
]
Brand = Annotated[str, Meta(max_length=200)]
Tag = Annotated[str, Meta(min_length=1, max_length=100)]
Tags = Annotated[list[Tag], Meta(max_length=50)]
Price = Annotated[float, Meta(ge=0, le=1e12)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217, e.g. EUR")]
ImageUrl = Annotated[str, Meta(max_length=2048, pattern=r"^https?://")]
AttributeKey = Annotated[str, Meta(min_length=1, max_length=100)]
AttributeValue = Annotated[str, Meta(max_length=1000)]
Attributes = Annotated[dict[AttributeKey, AttributeValue], Meta(max_length=100)]

_SEPARATOR = re.compile(r"\s*>\s*")


def normalise_category(path: str) -> str:
    """`Home>Kitchen >  Mugs` -> `Home > Kitchen > Mugs`; raises ValueError naming the rule."""
    if not path.strip():
        return ""
    segments = _SEPARATOR.split(path.strip())
    if any(not segment for segment in segments):
        raise ValueError("category: every segment of the path must be non-empty")
    if not path.isprintable():
        raise ValueError("category: control characters are not allowed")
    if "|" in path:
        raise ValueError("category: '|' is not allowed (it separates paths in the index)")
    if len(segments) > MAX_CATEGORY_DEPTH:
        raise ValueError(f"category: at most {MAX_CATEGORY_DEPTH} levels")
    return CATEGORY_SEPARATOR.join(segments)


def category_prefixes(path: str) -> list[str]:
    """Every ancestor of a path and the path itself, so a filter on any prefix matches."""
    if not path:
        return []
    segments = path.split(CATEGORY_SEPARATOR)
    return [CATEGORY_SEPARATOR.join(segments[: depth + 1]) for depth in range(len(segments))]


class ProductFields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a client writes (PUT body; POST adds the id)."""

    name: Name
    description: Description = ""
    category: Category = ""
    brand: Brand = ""
    tags: Tags = msgspec.field(default_factory=list)
    price: Price | None = None
    currency: Currency | None = None
    in_stock: bool = True
    image_url: ImageUrl | None = None
    attributes: Attributes = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.category = normalise_category(self.category)


class ProductCreate(ProductFields, kw_only=True, forbid_unknown_fields=True):
    id: ProductId


class ProductUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """PATCH body: only the fields present change; `null` clears an optional field."""

    name: Name | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    category: Category | UnsetType = UNSET
    brand: Brand | UnsetType = UNSET
    tags: Tags | UnsetType = UNSET
    price: Price | UnsetType | None = UNSET
    currency: Currency | UnsetType | None = UNSET
    in_stock: bool | UnsetType = UNSET
    image_url: ImageUrl | UnsetType | None = UNSET
    attributes: Attributes | UnsetType = UNSET

    def __post_init__(self) -> None:
        if isinstance(self.category, str):
            self.category = normalise_category(self.category)


class Product(ProductCreate, kw_only=True):
    """A stored product: the client's fields plus what the server keeps."""

    created_at: str
    updated_at: str
    version: int

    def __post_init__(self) -> None:
        """Nothing to redo: the category was normalised as the product was written, so reading
        one (or building a recommendation from it) skips parsing it again."""


class ProductPage(msgspec.Struct, kw_only=True):
    items: list[Product]
    next_cursor: str | None


class BatchItemResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    id: str | None = None
    status: str  # created | updated | rejected
    version: int | None = None
    error: str | None = None


class BatchResult(msgspec.Struct, kw_only=True):
    created: int
    updated: int
    rejected: int
    items: list[BatchItemResult]
