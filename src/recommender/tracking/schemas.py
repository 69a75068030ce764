"""Shopper behaviour events as the API takes them, and what the service keeps of them."""

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from recommender.catalog.schemas import ID_PATTERN, Price, ProductId

EventType = Literal["view", "click", "add_to_cart", "remove_from_cart", "purchase", "search"]
ShopperId = Annotated[str, Meta(pattern=ID_PATTERN, description="1-128 of A-Z a-z 0-9 . _ : -")]
Quantity = Annotated[int, Meta(ge=1, le=1_000_000)]
SearchQuery = Annotated[str, Meta(min_length=1, max_length=500)]


class Event(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: EventType
    user_id: ShopperId | None = None
    session_id: ShopperId | None = None
    product_id: ProductId | None = None
    order_id: ShopperId | None = None
    quantity: Quantity = 1
    price: Price | None = None
    query: SearchQuery | None = None
    # The `rec_id` of the recommendation list a click or purchase came from.
    rec_id: ShopperId | None = None
    # Idempotency key: an event sent again with the same id counts once.
    event_id: ShopperId | None = None
    # When it happened (RFC 3339 with a zone); default: when it arrives. For replays.
    timestamp: datetime | None = None

    def __post_init__(self) -> None:
        if self.user_id is None and self.session_id is None:
            raise ValueError("user_id: an event needs a user_id or a session_id")
        if self.type == "search":
            if self.query is None:
                raise ValueError("query: a search event needs the query")
        elif self.product_id is None:
            raise ValueError(f"product_id: a {self.type} event needs the product_id")
        if self.timestamp is not None and self.timestamp.tzinfo is None:
            raise ValueError("timestamp: needs a time zone, e.g. 2024-05-01T10:00:00Z")


class EventResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    status: Literal["accepted", "duplicate", "rejected"]
    event_id: str | None = None
    error: str | None = None


class EventsAccepted(msgspec.Struct, kw_only=True):
    accepted: int
    duplicates: int
    rejected: int
    items: list[EventResult]


class HistoryEntry(msgspec.Struct, array_like=True):
    """One event in a shopper's recent history (compact: it is stored per shopper)."""

    type: EventType
    product_id: str
    timestamp: float


class Shopper(msgspec.Struct, frozen=True):
    """Whose history an event belongs to: a signed-in user, else an anonymous session."""

    kind: Literal["user", "session"]
    id: str
