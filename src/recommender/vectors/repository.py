"""The only code that touches the model's Redis keys.

{ns}model:{version}   the serialised EmbeddingModel (arrays and vocabulary, never pickle)
{ns}model:state       hash: live, building, documents (at the live fit), changes (since), fitted_at
{ns}model:version     counter: the next model version, also the refit lock's fencing token
{ns}model:lock        the token of the process refitting now (expires)
"""

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from recommender.platform.redis import Keyspace

# Make `version` live only if the caller still holds the refit lock (its fencing token).
_PUBLISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'live', ARGV[1], 'documents', ARGV[2], 'changes', 0,
           'fitted_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'building')
return 1
"""
# A new version (the fencing token) only when the lock is free, so refused attempts use none up.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local token = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], token, 'PX', ARGV[1])
return token
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class ModelState:
    live: int | None
    building: int | None
    documents: int
    changes: int
    fitted_at: float

    @property
    def versions(self) -> list[int]:
        """The versions whose indexes must receive every write."""
        return [v for v in (self.live, self.building) if v is not None]


class ModelStore:
    def __init__(self, client: "aioredis.Redis", keys: Keyspace) -> None:
        self.client = client
        self.state_key = keys.key("model", "state")
        self.version_key = keys.key("model", "version")
        self.lock_key = keys.key("model", "lock")
        self._keys = keys
        self._publish = client.register_script(_PUBLISH)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._acquire = client.register_script(_ACQUIRE)

    def model_key(self, version: int) -> str:
        return self._keys.key("model", str(version))

    async def state(self) -> ModelState:
        raw: dict[Any, Any] = await self.client.hgetall(self.state_key)

        def number(name: bytes) -> int | None:
            return int(raw[name]) if name in raw else None

        return ModelState(
            live=number(b"live"),
            building=number(b"building"),
            documents=number(b"documents") or 0,
            changes=number(b"changes") or 0,
            fitted_at=float(raw.get(b"fitted_at", 0)),
        )

    async def load(self, version: int) -> bytes | None:
        data: Any = await self.client.get(self.model_key(version))
        return bytes(data) if data is not None else None

    async def save(self, version: int, data: bytes) -> None:
        await self.client.set(self.model_key(version), data)

    async def delete(self, version: int) -> None:
        await self.client.delete(self.model_key(version))

    async def count_changes(self, count: int) -> None:
        await self.client.hincrby(self.state_key, "changes", count)

    async def acquire(self, lock_seconds: float) -> int | None:
        """A new version number, if this process may refit now (the lock was free)."""
        token: Any = await self._acquire(
            keys=[self.version_key, self.lock_key], args=[int(lock_seconds * 1000)]
        )
        return int(token) if token is not None else None

    async def renew(self, version: int, lock_seconds: float) -> bool:
        """Extend the lock's lease if `version` still holds it."""
        result: Any = await self._renew(
            keys=[self.lock_key], args=[version, int(lock_seconds * 1000)]
        )
        return bool(result)

    async def locked(self) -> bool:
        """A refit holds the lock (a live one: a dead refit's lease lapses)."""
        return bool(await self.client.exists(self.lock_key))

    async def mark_building(self, version: int) -> None:
        await self.client.hset(self.state_key, "building", version)

    async def publish(self, version: int, documents: int, fitted_at: float) -> bool:
        result: Any = await self._publish(
            keys=[self.state_key, self.lock_key], args=[version, documents, fitted_at]
        )
        return bool(result)

    async def release(self, version: int) -> None:
        await self._release(keys=[self.lock_key], args=[version])

    async def abandon(self, version: int) -> None:
        """Forget a refit that failed: stop writing to its index."""
        await self.client.hdel(self.state_key, "building")
        await self.delete(version)
