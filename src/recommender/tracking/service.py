"""Behaviour events: the shopper's history at once, then popularity, trending and co-occurrence.

`record` writes what the very next request needs (history, purchases) and the stream entry in
one script per event; the tracking consumer calls `aggregate` with the stream's entries. Times
are the events' own, so a replay of last year builds last year's aggregates.
"""

import asyncio
import math
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
import structlog

from recommender.catalog import CatalogService, category_prefixes
from recommender.config import TrackingSettings
from recommender.platform.cache import PeriodicCache
from recommender.platform.errors import InvalidInputError
from recommender.platform.streams import StreamEntry
from recommender.tracking.repository import (
    POPULAR_CACHE_SECONDS,
    Aggregation,
    TrackingRepository,
)
from recommender.tracking.schemas import (
    Event,
    EventResult,
    EventsAccepted,
    HistoryEntry,
    Shopper,
)

log = structlog.get_logger()

MAX_BATCH = 1000
DAY = 86400.0
# Forward decay is measured from a fixed instant; any will do, a recent one keeps numbers small.
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
_LN2 = math.log(2)
# The co-occurrence kind each event type feeds: products of one kind pair within a shopper's
# window of them (bought: across orders too, as an item-to-item matrix of shoppers would).
_CO_WINDOWS = {"view": "view", "click": "view", "add_to_cart": "cart", "purchase": "purchase"}

# Popularity windows (days, category, length) each process keeps.
_POPULAR_WINDOWS = 1000
# Purchases read for "for you" (buy again, and leaving bought products out).
_PURCHASES = 1000
_history_encoder = msgspec.msgpack.Encoder()
_history_decoder = msgspec.msgpack.Decoder(HistoryEntry)


class Recorded(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the behaviour stream carries of an accepted event."""

    type: str
    kind: str
    shopper: str
    timestamp: float
    product_id: str = ""
    order_id: str = ""
    quantity: int = 1


_recorded_encoder = msgspec.json.Encoder()
_recorded_decoder = msgspec.json.Decoder(Recorded)


def shopper_of(event: Event) -> Shopper:
    if event.user_id is not None:
        return Shopper("user", event.user_id)
    return Shopper("session", event.session_id or "")


def decayed_log_weight(weight: float, timestamp: float, half_life_seconds: float) -> float:
    """ln(weight) plus the forward-decay growth since the epoch (see the repository)."""
    return math.log(weight) + (timestamp - _EPOCH) * _LN2 / half_life_seconds


class Behaviour(NamedTuple):
    """What a shopper's derived values are computed from."""

    history: list[HistoryEntry]  # newest first
    purchases: list[tuple[str, float]]  # as `TrackingService.purchased`


class Derived(NamedTuple):
    value: bytes | None  # None: not kept (yet, or since the shopper's last event)
    lease: str
    behaviour: Behaviour | None  # when nothing is kept: read with the lease, to compute it from


class TrackingService:
    def __init__(
        self, repository: TrackingRepository, catalog: CatalogService, settings: TrackingSettings
    ) -> None:
        self.repository = repository
        self.catalog = catalog
        self.settings = settings
        self._popular: PeriodicCache[tuple[int, str, int], list[tuple[str, float]]] = PeriodicCache(
            self._read_popular, POPULAR_CACHE_SECONDS, _POPULAR_WINDOWS
        )

    @property
    def stream(self) -> str:
        return self.repository.stream

    def weight(self, event_type: str) -> float:
        weight: float = getattr(self.settings.weights, event_type)
        return weight

    # -- the synchronous path ---------------------------------------------------------------

    async def record(self, items: Sequence[Any], now: float | None = None) -> EventsAccepted:
        """Validate each event on its own; store the valid ones; a result per item, in order."""
        if len(items) > MAX_BATCH:
            raise InvalidInputError(f"events: at most {MAX_BATCH} in one request")
        now = time.time() if now is None else now
        results: list[EventResult | None] = [None] * len(items)
        valid: list[tuple[int, Event, float]] = []
        for index, raw in enumerate(items):
            try:
                event = msgspec.convert(raw, Event)
            except msgspec.ValidationError as error:
                results[index] = EventResult(index=index, status="rejected", error=str(error))
                continue
            timestamp = event.timestamp.timestamp() if event.timestamp else now
            if timestamp > now + self.settings.max_future_skew_seconds:
                results[index] = EventResult(
                    index=index, status="rejected",
                    error="timestamp: more than "
                    f"{self.settings.max_future_skew_seconds:g}s in the future",
                )  # fmt: skip
                continue
            valid.append((index, event, timestamp))
        outcomes = await self.repository.ingest_many(
            [self._ingest_plan(event, timestamp) for _, event, timestamp in valid]
        )
        for (index, event, _), outcome in zip(valid, outcomes, strict=True):
            results[index] = EventResult(
                index=index, status="accepted" if outcome else "duplicate", event_id=event.event_id
            )
        final = [result for result in results if result is not None]
        return EventsAccepted(
            accepted=sum(r.status == "accepted" for r in final),
            duplicates=sum(r.status == "duplicate" for r in final),
            rejected=sum(r.status == "rejected" for r in final),
            items=final,
        )

    def _ingest_plan(self, event: Event, timestamp: float) -> tuple[list[str], list[Any]]:
        shopper = shopper_of(event)
        repo = self.repository
        history = b""
        if event.product_id is not None:
            history = _history_encoder.encode(HistoryEntry(event.type, event.product_id, timestamp))
        bought = ""
        if event.type == "purchase":
            bought = repr(
                decayed_log_weight(1.0, timestamp, self.settings.bought_half_life_days * DAY)
            )
        recorded = Recorded(
            type=event.type, kind=shopper.kind, shopper=shopper.id, timestamp=timestamp,
            product_id=event.product_id or "", order_id=event.order_id or "",
            quantity=event.quantity,
        )  # fmt: skip
        keys = [
            repo.keys.key("event", "seen", event.event_id or "-"),
            repo.history_key(shopper.kind, shopper.id),
            repo.bought_key(shopper.kind, shopper.id),
            repo.stream,
            repo.derived_key(shopper.kind, shopper.id),
        ]
        args: list[Any] = [
            "1" if event.event_id else "0",
            self.settings.event_id_ttl_seconds,
            history,
            self.settings.history_length,
            event.product_id or "",
            bought,
            "event", _recorded_encoder.encode(recorded),
            "user", event.user_id or "",
            "session", event.session_id or "",
        ]  # fmt: skip
        return keys, args

    # -- the consumer's path ----------------------------------------------------------------

    async def aggregate(self, entries: Sequence[StreamEntry], group: str) -> None:
        """Fold stream entries into popularity, trending and co-occurrence, each exactly once:
        an entry with aggregates is acknowledged for `group` as they are applied."""
        events = [(entry.id, _recorded_decoder.decode(entry.fields["event"])) for entry in entries]
        product_ids = list({e.product_id for _, e in events if e.product_id})
        categories = {
            product.id: category_prefixes(product.category)
            for product in await self.catalog.get_many(product_ids)
            if product is not None
        }
        plans = [
            (entry_id, event.timestamp, plan)
            for entry_id, event in events
            if (plan := self._aggregation(event, categories.get(event.product_id, [])))
        ]
        await self.repository.aggregate(group, plans)
        clock = await self.repository.clock()
        if clock is not None:
            await self.repository.prune_days(
                _day(clock) - (self.settings.popularity_max_days + 1) * DAY
            )

    def _aggregation(self, event: Recorded, paths: list[str]) -> Aggregation | None:
        weight = self.weight(event.type)
        if not event.product_id or weight <= 0:
            return None
        settings, repo, t = self.settings, self.repository, event.timestamp
        plan = Aggregation()
        day = _day(t)
        trend = decayed_log_weight(weight, t, settings.trending_half_life_hours * 3600)
        for path in ["", *paths]:
            plan.count(repo.popularity_key(int(day), path), day, event.product_id, weight)
            plan.decay(repo.trend_key(path), event.product_id, trend, settings.trending_top_n)
        kind = _CO_WINDOWS.get(event.type)
        if kind is not None:
            bought = kind == "purchase"
            plan.pair(
                repo.window_key(kind, event.kind, event.shopper), repo.co_total_key(kind),
                repo.co_prefix(kind), repo.pair_count_prefix(kind), event.product_id,
                decayed_log_weight(1.0, t, settings.cooccurrence_half_life_days * DAY),
                settings.cooccurrence_top_n,
                settings.co_purchase_window if bought else settings.cooccurrence_window,
                settings.co_purchase_window_days * DAY if bought
                else settings.cooccurrence_window_seconds,
            )  # fmt: skip
        return plan

    # -- reads --------------------------------------------------------------------------------

    async def history(self, shopper: Shopper, limit: int | None = None) -> list[HistoryEntry]:
        raw = await self.repository.history(
            shopper.kind, shopper.id, limit or self.settings.history_length
        )
        return [_history_decoder.decode(entry) for entry in raw]

    # Every ranked read returns (product id, share of the top score), best first.

    async def purchased(self, shopper: Shopper, limit: int = _PURCHASES) -> list[tuple[str, float]]:
        """The shopper's purchases, most frequent and recent first."""
        return _from_logs(await self.repository.bought(shopper.kind, shopper.id, limit))

    async def popular(self, days: int, category: str, limit: int) -> list[tuple[str, float]]:
        """The window's best sellers, read at most once per POPULAR_CACHE_SECONDS per process
        (and summed in Redis as often): counts over days, up to twice that stale."""
        return await self._popular.get((days, category, limit))

    async def _read_popular(self, window: tuple[int, str, int]) -> list[tuple[str, float]]:
        days, category, limit = window
        clock = await self.repository.clock()
        if clock is None:
            return []
        last = _day(clock)
        days_back = [int(last - offset * DAY) for offset in range(days)]
        return _shares(await self.repository.popular(days_back, category, limit))

    async def trending(self, category: str, limit: int) -> list[tuple[str, float]]:
        return _from_logs(await self.repository.trending(category, limit))

    async def co_occurring_many(
        self, lookups: Sequence[tuple[str, str]], limit: int
    ) -> list[list[tuple[str, float]]]:
        """For each (kind, product) pair, the products most often seen with it in that kind of
        event, strongest first with their scores; all pairs in one round trip."""
        return [
            _from_logs(ranked) for ranked in await self.repository.co_occurring_many(lookups, limit)
        ]

    async def derived(self, shopper: Shopper, name: str, ttl: float) -> "Derived":
        """What was computed from the shopper's behaviour and kept under `name` since their last
        event (at most `ttl` seconds ago); else the lease to keep it under (`keep_derived`) and
        that behaviour."""
        value, lease, history, bought = await self.repository.derived(
            shopper.kind, shopper.id, name, secrets.token_hex(16),
            ttl=ttl, limits=(self.settings.history_length, _PURCHASES),
        )  # fmt: skip
        if value is not None:
            return Derived(value, lease, None)
        behaviour = Behaviour([_history_decoder.decode(e) for e in history], _from_logs(bought))
        return Derived(None, lease, behaviour)

    async def behaviour(self, shopper: Shopper) -> Behaviour:
        history, purchases = await asyncio.gather(self.history(shopper), self.purchased(shopper))
        return Behaviour(history, purchases)

    async def keep_derived(self, shopper: Shopper, name: str, lease: str, value: bytes) -> bool:
        """Keep a value computed from the shopper's behaviour, read after `lease` was taken;
        False (nothing kept) when an event of theirs came in meanwhile."""
        return await self.repository.keep_derived(shopper.kind, shopper.id, name, lease, value)

    # -- shoppers -------------------------------------------------------------------------------

    async def merge_session(self, session_id: str, user_id: str) -> int:
        """Fold an anonymous session into a signed-in user; how many history entries moved."""
        session, user = Shopper("session", session_id), Shopper("user", user_id)
        moved = await self.history(session)
        if not moved:
            return 0
        merged = sorted([*moved, *await self.history(user)], key=lambda e: -e.timestamp)
        await self.repository.merge_shopper(
            (session.kind, session.id), (user.kind, user.id),
            [_history_encoder.encode(e) for e in merged[: self.settings.history_length]],
        )  # fmt: skip
        return len(moved)

    async def erase_user(self, user_id: str) -> None:
        """Forget a user: history, purchases, co-occurrence windows, unprocessed stream entries."""
        await self.repository.erase_shopper("user", user_id, sorted(set(_CO_WINDOWS.values())))
        entries = await self.repository.stream_entries_of("user", user_id)
        await self.repository.delete_stream_entries(entries)


def _shares(ranked: list[tuple[str, float]]) -> list[tuple[str, float]]:
    best = ranked[0][1] if ranked else 0.0
    return [(member, score / best) for member, score in ranked] if best > 0 else []


def _from_logs(ranked: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Decayed sums are stored as logarithms: the share of the top one is exp(difference)."""
    best = ranked[0][1] if ranked else 0.0
    return [(member, math.exp(score - best)) for member, score in ranked]


def _day(timestamp: float) -> float:
    return math.floor(timestamp / DAY) * DAY
