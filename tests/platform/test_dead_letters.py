"""A poison entry reaches the dead-letter stream without blocking the rest; admins replay it."""

import asyncio

import msgspec
import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from recommender.app import create_app
from recommender.config import Settings
from recommender.platform.redis import Keyspace


@pytest.mark.asyncio
async def test_poison_is_dead_lettered_listed_and_replayed(
    settings: Settings, redis: "aioredis.Redis"
) -> None:
    live = msgspec.structs.replace(
        settings, streams=msgspec.structs.replace(settings.streams, consumers_enabled=True)
    )
    keys = Keyspace(settings.redis.namespace)
    behaviour = keys.key("stream", "behaviour")
    async with AsyncTestClient(create_app(live)) as client:
        # An entry no consumer can read, then a good event right behind it.
        poison = (await redis.xadd(behaviour, {"event": "{not json"})).decode()
        good = {"type": "view", "user_id": "u", "product_id": "p"}
        await client.post("/api/v1/events", json=good)
        for _ in range(200):  # bounded wait for retries and the dead letter
            listed = (await client.get("/api/v1/admin/dead-letters")).json()
            if listed["total"]:
                break
            await asyncio.sleep(0.05)
        assert listed["total"] == 1
        letter = listed["items"][0]
        assert (letter["stream"], letter["group"], letter["original_id"]) == (
            behaviour, "aggregator", poison,
        )  # fmt: skip
        assert "DecodeError" in letter["error"] or "JSON" in letter["error"]
        assert letter["fields"] == {"event": "{not json"}
        # The good event behind the poison was not held up.
        groups = await redis.xinfo_groups(behaviour)
        assert groups[0]["pending"] == 0

        before = await redis.xlen(behaviour)
        replay = await client.post("/api/v1/admin/dead-letters/replay")
        assert replay.json() == {"replayed": 1}
        assert await redis.xlen(behaviour) == before + 1
        assert (await client.get("/api/v1/admin/dead-letters")).json()["total"] in (0, 1)
