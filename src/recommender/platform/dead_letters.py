"""Admin over the dead-letter stream: see what the consumers gave up on, and send it back."""

from typing import Annotated, Any

import msgspec
import redis.asyncio as aioredis
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Parameter

from recommender.platform.redis import Keyspace
from recommender.platform.security import WRITES

# Fields the stream runner adds when it dead-letters an entry (see streams.StreamRunner).
_ORIGIN = ("dead_letter_stream", "dead_letter_group", "dead_letter_id", "dead_letter_error")


def dead_letter_stream(keys: Keyspace) -> str:
    return keys.key("stream", "dead-letter")


class DeadLetter(msgspec.Struct, kw_only=True):
    id: str
    stream: str
    group: str
    original_id: str
    error: str
    fields: dict[str, str]


class DeadLetters(msgspec.Struct, kw_only=True):
    total: int
    items: list[DeadLetter]


class Replayed(msgspec.Struct, kw_only=True):
    replayed: int


def _decode(entry_id: bytes, raw: dict[bytes, bytes]) -> DeadLetter:
    fields = {key.decode(): value.decode() for key, value in raw.items()}
    return DeadLetter(
        id=entry_id.decode(),
        stream=fields.get("dead_letter_stream", ""),
        group=fields.get("dead_letter_group", ""),
        original_id=fields.get("dead_letter_id", ""),
        error=fields.get("dead_letter_error", ""),
        fields={key: value for key, value in fields.items() if key not in _ORIGIN},
    )


class DeadLetterController(Controller):
    path = "/api/v1/admin/dead-letters"
    tags = ["admin"]  # noqa: RUF012 - read by Litestar as a class attribute
    opt = WRITES

    @get("/", summary="Entries the consumers gave up on, oldest first, with their errors")
    async def list_dead_letters(
        self,
        state: State,
        redis: NamedDependency["aioredis.Redis"],
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> DeadLetters:
        stream = dead_letter_stream(state.keyspace)
        entries: Any = await redis.xrange(stream, count=limit)
        return DeadLetters(
            total=int(await redis.xlen(stream)),
            items=[_decode(entry_id, raw) for entry_id, raw in entries],
        )

    @post("/replay", status_code=200, summary="Put dead letters back on their streams")
    async def replay_dead_letters(
        self,
        state: State,
        redis: NamedDependency["aioredis.Redis"],
        limit: Annotated[int, Parameter(ge=1, le=10_000)] = 1000,
    ) -> Replayed:
        """Each entry goes back, as a new entry, to the stream it came from, and leaves the
        dead-letter stream in the same transaction; its consumers handle it afresh."""
        stream = dead_letter_stream(state.keyspace)
        entries: Any = await redis.xrange(stream, count=limit)
        replayed = 0
        for entry_id, raw in entries:
            letter = _decode(entry_id, raw)
            if not letter.stream:
                continue
            async with redis.pipeline(transaction=True) as pipe:
                pipe.xadd(letter.stream, letter.fields)  # type: ignore[arg-type]
                pipe.xdel(stream, letter.id)
                await pipe.execute()
            replayed += 1
        return Replayed(replayed=replayed)
