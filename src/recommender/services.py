"""The composition root: every domain service built on one Redis client, and their consumers.

The app's lifespan, the import and the evaluation commands all build the same thing here, so
a product written by any of them takes the same path.
"""

from dataclasses import dataclass

import redis.asyncio as aioredis

from recommender.catalog import CatalogRepository, CatalogService
from recommender.config import Settings
from recommender.platform.dead_letters import dead_letter_stream
from recommender.platform.redis import Keyspace
from recommender.platform.streams import StreamRunner
from recommender.recommending import RecommendService
from recommender.tracking import TrackingRepository, TrackingService, aggregator
from recommender.vectors import ModelStore, VectorIndex, VectorService, indexer


@dataclass(frozen=True, slots=True)
class Services:
    catalog: CatalogService
    vectors: VectorService
    tracking: TrackingService
    recommend: RecommendService
    runners: list[StreamRunner]


def build_services(client: "aioredis.Redis", keys: Keyspace, settings: Settings) -> Services:
    catalog = CatalogService(CatalogRepository(client, keys), settings.catalog)
    index = VectorIndex(client, keys, settings.vectors)
    vectors = VectorService(catalog, ModelStore(client, keys), index, settings.vectors)
    tracking = TrackingService(TrackingRepository(client, keys), catalog, settings.tracking)
    recommend = RecommendService(catalog, vectors, tracking, settings)
    dead_letters = dead_letter_stream(keys)
    runners = [
        indexer(client, vectors, catalog.stream, dead_letters, settings.streams),
        aggregator(client, tracking, dead_letters, settings.streams),
    ]
    return Services(
        catalog=catalog, vectors=vectors, tracking=tracking, recommend=recommend, runners=runners
    )
