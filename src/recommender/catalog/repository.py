"""The only code that touches the catalog's Redis keys.

    {ns}product:{id}             hash: json (the Product), version
    {ns}catalog:ids              sorted set of every id (score 0: ordered by id, for cursors)
    {ns}catalog:category:{path}  sorted set of the ids under a category path prefix
    {ns}stream:catalog           events {op, id, version} for the other modules' consumers
    {ns}catalog:epoch, :changes  the change log (platform.changelog): each written product's id,
                                 for the processes' product caches

A write is one Lua script: compare the version the service read, store the product, maintain
the id sets and append the event, all or nothing. A product is never stored without its event.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis

from recommender.catalog.schemas import Product, category_prefixes
from recommender.platform.changelog import log_change_lua
from recommender.platform.redis import Keyspace, ScriptCall, run_script_many

# KEYS: product, ids, stream, change log counter and stream, then the category sets (removed
# first). ARGV: expected version, id, version, json, op, how many category sets are removals.
_WRITE = (
    log_change_lua()
    + """
local current = redis.call('HGET', KEYS[1], 'version') or '0'
if current ~= ARGV[1] then return 0 end
local id, version, json, op = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local removed = tonumber(ARGV[6])
for i = 1, removed do redis.call('ZREM', KEYS[5 + i], id) end
if op == 'delete' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], id)
else
  redis.call('HSET', KEYS[1], 'json', json, 'version', version)
  redis.call('ZADD', KEYS[2], 0, id)
  for i = 6 + removed, #KEYS do redis.call('ZADD', KEYS[i], 0, id) end
end
redis.call('XADD', KEYS[3], '*', 'op', op, 'id', id, 'version', version)
log_change(KEYS[4], KEYS[5], 'product', id)
return 1
"""
)

# Many products in one command: a pipeline of HGETs costs the client far more per product.
_GET_MANY = """
local found = {}
for i, key in ipairs(KEYS) do found[i] = redis.call('HGET', key, 'json') end
return found
"""

_decoder = msgspec.json.Decoder(Product)
_encoder = msgspec.json.Encoder()


def decode(stored: bytes) -> Product:
    return _decoder.decode(stored)


@dataclass(frozen=True, slots=True)
class Write:
    """Store `product` (or delete it when None) if the stored version is still `expected`."""

    id: str
    expected: int
    product: Product | None
    old_category: str = ""


class CatalogRepository:
    def __init__(self, client: "aioredis.Redis", keys: Keyspace) -> None:
        self.client = client
        self.keys = keys
        self.stream = keys.key("stream", "catalog")
        self.epoch_key = keys.key("catalog", "epoch")
        self.changes_key = keys.key("catalog", "changes")
        self._write_script = client.register_script(_WRITE)
        self._get_many_script = client.register_script(_GET_MANY)

    def product_key(self, product_id: str) -> str:
        return self.keys.key("product", product_id)

    def category_key(self, path: str) -> str:
        return self.keys.key("catalog", "category", path)

    @property
    def ids_key(self) -> str:
        return self.keys.key("catalog", "ids")

    async def get_many(self, ids: Sequence[str]) -> list[Product | None]:
        return [decode(item) if item is not None else None for item in await self.read_many(ids)]

    async def read_many(self, ids: Sequence[str]) -> list[bytes | None]:
        """The products' JSON as stored."""
        if not ids:
            return []
        raw: list[Any] = await self._get_many_script(keys=[self.product_key(i) for i in ids])
        return raw

    async def write_many(self, writes: Sequence[Write]) -> list[bool]:
        """Apply each write atomically; False where another writer got there first."""
        calls = [self._write_call(write) for write in writes]
        return [
            bool(result) for result in await run_script_many(self.client, self._write_script, calls)
        ]

    def _write_call(self, write: Write) -> ScriptCall:
        """The write script's keys and arguments for one write."""
        old = category_prefixes(write.old_category)
        new = category_prefixes(write.product.category) if write.product else []
        removed = [path for path in old if path not in new]
        added = [path for path in new if path not in old]
        keys = [self.product_key(write.id), self.ids_key, self.stream]
        keys += [self.epoch_key, self.changes_key]
        keys += [self.category_key(path) for path in removed + added]
        version = write.product.version if write.product else write.expected + 1
        args: list[Any] = [
            write.expected,
            write.id,
            version,
            _encoder.encode(write.product) if write.product else b"",
            "upsert" if write.product else "delete",
            len(removed),
        ]
        return keys, args

    async def list_ids(self, category: str, after: str | None, limit: int) -> list[str]:
        key = self.category_key(category) if category else self.ids_key
        start = f"({after}" if after else "-"
        ids: list[Any] = await self.client.zrangebylex(key, start, "+", start=0, num=limit)
        return [product_id.decode() for product_id in ids]

    async def count(self) -> int:
        total: int = await self.client.zcard(self.ids_key)
        return total
