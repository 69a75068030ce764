"""Shopper behaviour: events, recent history, purchases, and the aggregates built from them."""

from recommender.tracking.consumer import aggregator
from recommender.tracking.repository import TrackingRepository
from recommender.tracking.routes import EventController
from recommender.tracking.schemas import Event, HistoryEntry, Shopper
from recommender.tracking.service import Behaviour, TrackingService

__all__ = [
    "Behaviour",
    "Event",
    "EventController",
    "HistoryEntry",
    "Shopper",
    "TrackingRepository",
    "TrackingService",
    "aggregator",
]
