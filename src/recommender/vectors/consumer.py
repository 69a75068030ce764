"""The indexer: catalog events in, vector documents out."""

from collections.abc import Sequence

import redis.asyncio as aioredis

from recommender.config import StreamSettings
from recommender.platform.streams import StreamEntry, StreamRunner
from recommender.vectors.service import VectorService

GROUP = "indexer"


def indexer(
    client: "aioredis.Redis",
    vectors: VectorService,
    stream: str,
    dead_letter_stream: str,
    settings: StreamSettings,
) -> StreamRunner:
    async def handle(entries: Sequence[StreamEntry]) -> None:
        await vectors.index_products([entry.fields["id"] for entry in entries])

    return StreamRunner(
        client, stream=stream, group=GROUP, handler=handle,
        dead_letter_stream=dead_letter_stream, settings=settings,
    )  # fmt: skip
