"""The aggregator: behaviour events in, popularity, trending and co-occurrence out."""

from collections.abc import Sequence

import redis.asyncio as aioredis

from recommender.config import StreamSettings
from recommender.platform.streams import StreamEntry, StreamRunner
from recommender.tracking.service import TrackingService

GROUP = "aggregator"


def aggregator(
    client: "aioredis.Redis",
    tracking: TrackingService,
    dead_letter_stream: str,
    settings: StreamSettings,
) -> StreamRunner:
    async def handle(entries: Sequence[StreamEntry]) -> None:
        await tracking.aggregate(entries, GROUP)

    return StreamRunner(
        client, stream=tracking.stream, group=GROUP, handler=handle,
        dead_letter_stream=dead_letter_stream, settings=settings,
    )  # fmt: skip
