"""Shared pieces of the data-set converters: where the data lives and the product JSONL format."""

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import msgspec

# The shared data sits next to the repository (../shared/data), never inside it.
DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"

NAME_MAX = 500
DESCRIPTION_MAX = 20_000


class Product(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One catalog line in the service's product schema (only the fields the converters fill)."""

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX)]
    description: Annotated[str, msgspec.Meta(max_length=DESCRIPTION_MAX)]
    price: Annotated[float, msgspec.Meta(ge=0)] | None = None
    currency: str | None = None


def write_products(path: Path, products: Iterable[Product]) -> int:
    """Write products as JSON Lines and return how many were written."""
    encoder = msgspec.json.Encoder()
    count = 0
    with path.open("wb") as handle:
        for product in products:
            handle.write(encoder.encode(product))
            handle.write(b"\n")
            count += 1
    return count
