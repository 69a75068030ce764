"""The only code that touches the tracking keys.

Per shopper (`{kind}` is user or session):
    {ns}history:{kind}:{id}        list, newest first: compact HistoryEntry (bounded)
    {ns}bought:{kind}:{id}         sorted set: product -> decayed purchase score
    {ns}recent:{w}:{kind}:{id}     sorted set: the products last viewed / carted / bought -> when
    {ns}derived:{kind}:{id}        hash: what was computed from the above ("for you" lists) and
                                   a lease under field ""; dropped by each of their events
Shared:
    {ns}event:seen:{event_id}      idempotency marker of a client's event id (expires)
    {ns}stream:behaviour           every accepted event, for the tracking consumer
    {ns}agg:clock                  the latest event time seen: windows end there, not at now
    {ns}pop:{day}[:cat:{path}]     sorted set per UTC day: product -> weighted event count
    {ns}pop:days                   sorted set of those day keys, for pruning
    {ns}trend[:cat:{path}]         sorted set: product -> log of its time-decayed weight
    {ns}co:{kind}:{product}        sorted set: product -> log(pair count / sqrt(its total)), top N
    {ns}copair:{kind}:{product}    hash: the same products -> log decayed count of the pair
    {ns}cototal:{kind}             sorted set: product -> log decayed count of its windows

Decayed scores are kept as logarithms (forward decay): adding weight w at time t adds
exp(ln w + (t - epoch) * ln 2 / half_life) to the sum, so newer events weigh more, the order
of members never needs rewriting as time passes, and the sums never overflow.

Co-occurrence ranks like a cosine: pair count / sqrt(count of one x count of the other), all
decayed alike, so the growth since the epoch cancels out. A best seller shares windows with
everything; dividing by its count keeps it from heading every product's neighbours. A pair's
score is recomputed whenever the pair occurs again; in between, the neighbour's count may grow
(its score lags behind until then).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from recommender.platform.redis import Keyspace, ScriptCall, run_script_many

_LOGADD = """
local function logsum(old, value)
  if not old then return value end
  local a = tonumber(old)
  local m = math.max(a, value)
  return m + math.log(math.exp(a - m) + math.exp(value - m))
end
local function logadd(key, member, value)
  value = logsum(redis.call('ZSCORE', key, member), value)
  redis.call('ZADD', key, value, member)
  return value
end
"""

# The sum of a window's day buckets, from a short-lived cache when another request made it.
# The top of many sorted sets in one command: a pipeline of ZREVRANGEs costs the client far
# more per set ("for you" reads three per anchor).
_READ_TOP_MANY = """
local limit = tonumber(ARGV[1]) - 1
local found = {}
for i, key in ipairs(KEYS) do found[i] = redis.call('ZREVRANGE', key, 0, limit, 'WITHSCORES') end
return found
"""

_POPULAR = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZUNIONSTORE', KEYS[1], #KEYS - 1, unpack(KEYS, 2))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
"""
# Popularity may be this stale: it counts days, a few seconds do not change it.
POPULAR_CACHE_SECONDS = 5

# A value computed from a shopper's behaviour, else the lease a new one must be kept under and
# that behaviour (history, purchases), to compute it from without another round trip: the
# shopper's next event drops the hash, lease and all, so a value computed from what came before
# cannot be kept after it. The hash expires `ttl` after its lease, values and all.
# KEYS: derived, history, bought. ARGV: name, lease, ttl, history limit, purchases limit.
_DERIVED = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then return {1, value} end
local lease = redis.call('HGET', KEYS[1], '')
if not lease then
  lease = ARGV[2]
  redis.call('HSET', KEYS[1], '', lease)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {
  0, lease,
  redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[4]) - 1),
  redis.call('ZREVRANGE', KEYS[3], 0, tonumber(ARGV[5]) - 1, 'WITHSCORES'),
}
"""
_KEEP_DERIVED = """
if redis.call('HGET', KEYS[1], '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: seen, history, bought, stream, derived. ARGV: check_seen, seen_ttl, history_entry,
# history_len, product, bought_log_weight, then the stream entry's field/value pairs.
_INGEST = (
    _LOGADD
    + """
if ARGV[1] == '1' and not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return 0
end
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
end
if ARGV[6] ~= '' then logadd(KEYS[3], ARGV[5], tonumber(ARGV[6])) end
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 7))
redis.call('DEL', KEYS[5])
return 1
"""
)

# Apply one stream entry's aggregate updates and acknowledge it, if it is still pending for the
# group: applying and acknowledging at once applies each entry once, without remembering it.
# KEYS[1] stream, KEYS[2] clock, KEYS[3] day index, then the keys the operations name by
# position. ARGV[1] group, ARGV[2] entry id, ARGV[3] event time, then operations, each a word
# and its arguments:
#   count  key day member weight        ZINCRBY in a day bucket (and remember the bucket)
#   decay  key member logw cap          log-add, keep the top `cap`
#   pair   window totals prefix counts member logw cap size span
#          the shopper's products of one kind, by when they last had each (window, a sorted
#          set of at most `size`): a product had within `span` seconds before only has its
#          time moved on (a pair counts once per stay in the window, as in a binary shopper x
#          product matrix); otherwise it log-adds to its total and, with each product q had
#          within `span` seconds, to the pair's count in counts..member and counts..q, and
#          sets each side's score in prefix..member and prefix..q (each keeps its top `cap`)
_AGGREGATE = (
    _LOGADD
    + """
local function cap(key, n, counts)
  local excess = redis.call('ZCARD', key) - n
  if n > 0 and excess > 0 then
    local dropped = redis.call('ZPOPMIN', key, excess)
    if counts then
      for j = 1, #dropped, 2 do redis.call('HDEL', counts, dropped[j]) end
    end
  end
end
-- b's score among a's neighbours: log(pair count / sqrt(b's total)). a's own total would
-- divide every score of its list alike, so the order within the list is the cosine's.
local function pair(prefix, counts, a, b, logw, half_b, n)
  local together = logsum(redis.call('HGET', counts .. a, b), logw)
  redis.call('HSET', counts .. a, b, together)
  redis.call('ZADD', prefix .. a, together - half_b, b)
  cap(prefix .. a, n, counts .. a)
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then return 0 end
local t = tonumber(ARGV[3])
local clock = tonumber(redis.call('GET', KEYS[2]) or '0')
if t > clock then redis.call('SET', KEYS[2], ARGV[3]) end
local i = 4
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'count' then
    local key = KEYS[tonumber(ARGV[i + 1])]
    redis.call('ZINCRBY', key, ARGV[i + 4], ARGV[i + 3])
    redis.call('ZADD', KEYS[3], ARGV[i + 2], key)
    i = i + 5
  elseif op == 'decay' then
    local key = KEYS[tonumber(ARGV[i + 1])]
    logadd(key, ARGV[i + 2], tonumber(ARGV[i + 3]))
    cap(key, tonumber(ARGV[i + 4]))
    i = i + 5
  else
    local window, totals = KEYS[tonumber(ARGV[i + 1])], KEYS[tonumber(ARGV[i + 2])]
    local prefix, counts, member = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    local logw, n = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
    local size, span = tonumber(ARGV[i + 8]), tonumber(ARGV[i + 9])
    local last = tonumber(redis.call('ZSCORE', window, member))
    if not last or last < t - span then
      local half_member = logadd(totals, member, logw) / 2
      for _, other in ipairs(redis.call('ZRANGEBYSCORE', window, t - span, '+inf')) do
        if other ~= member then
          local half_other = (tonumber(redis.call('ZSCORE', totals, other)) or logw) / 2
          pair(prefix, counts, member, other, logw, half_other, n)
          pair(prefix, counts, other, member, logw, half_member, n)
        end
      end
    end
    if not last or t > last then redis.call('ZADD', window, t, member) end
    cap(window, size)
    redis.call('EXPIRE', window, math.ceil(span))
    i = i + 10
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)


@dataclass
class Aggregation:
    """The operations of one event for the aggregate script, built by the service."""

    keys: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def key(self, name: str) -> int:
        self.keys.append(name)
        return len(self.keys) + 3  # after stream, clock and day index

    def count(self, key: str, day: float, member: str, weight: float) -> None:
        self.args += ["count", self.key(key), day, member, weight]

    def decay(self, key: str, member: str, log_weight: float, cap: int) -> None:
        self.args += ["decay", self.key(key), member, log_weight, cap]

    def pair(  # noqa: PLR0917 - mirrors the script's operation, argument for argument
        self, window: str, totals: str, prefix: str, counts: str, member: str, log_weight: float,
        cap: int, size: int, span: float,
    ) -> None:  # fmt: skip
        self.args += [
            "pair", self.key(window), self.key(totals), prefix, counts, member, log_weight, cap,
            size, span,
        ]  # fmt: skip


class TrackingRepository:
    def __init__(self, client: "aioredis.Redis", keys: Keyspace) -> None:
        self.client = client
        self.keys = keys
        self.stream = keys.key("stream", "behaviour")
        self._ingest = client.register_script(_INGEST)
        self._aggregate = client.register_script(_AGGREGATE)
        self._popular = client.register_script(_POPULAR)
        self._read_top_many = client.register_script(_READ_TOP_MANY)
        self._derived = client.register_script(_DERIVED)
        self._keep_derived = client.register_script(_KEEP_DERIVED)

    # -- key names ------------------------------------------------------------------------------

    def history_key(self, kind: str, shopper: str) -> str:
        return self.keys.key("history", kind, shopper)

    def bought_key(self, kind: str, shopper: str) -> str:
        return self.keys.key("bought", kind, shopper)

    def window_key(self, window: str, kind: str, shopper: str) -> str:
        return self.keys.key("recent", window, kind, shopper)

    def derived_key(self, kind: str, shopper: str) -> str:
        return self.keys.key("derived", kind, shopper)

    def popularity_key(self, day: int, category: str = "") -> str:
        suffix = [str(day), "cat", category] if category else [str(day)]
        return self.keys.key("pop", *suffix)

    def trend_key(self, category: str = "") -> str:
        return self.keys.key("trend", "cat", category) if category else self.keys.key("trend")

    def co_prefix(self, kind: str) -> str:
        return self.keys.key("co", kind, "")

    def pair_count_prefix(self, kind: str) -> str:
        return self.keys.key("copair", kind, "")

    def co_total_key(self, kind: str) -> str:
        return self.keys.key("cototal", kind)

    # -- writes -----------------------------------------------------------------------------------

    async def ingest_many(self, plans: Sequence[ScriptCall]) -> list[Any]:
        """Each event's synchronous write, (keys, args), in one round trip: 1 each, or 0 for a
        duplicate."""
        return await run_script_many(self.client, self._ingest, plans)

    async def aggregate(self, group: str, plans: Sequence[tuple[str, float, Aggregation]]) -> None:
        """Apply each (stream entry id, event time, plan) the group has not acknowledged, and
        acknowledge it, in one round trip."""
        calls = [
            (
                [
                    self.stream,
                    self.keys.key("agg", "clock"),
                    self.keys.key("pop", "days"),
                    *plan.keys,
                ],
                [group, entry_id, timestamp, *plan.args],
            )
            for entry_id, timestamp, plan in plans
        ]
        await run_script_many(self.client, self._aggregate, calls)

    # -- reads ------------------------------------------------------------------------------------

    async def history(self, kind: str, shopper: str, limit: int) -> list[bytes]:
        entries: list[Any] = await self.client.lrange(self.history_key(kind, shopper), 0, limit - 1)
        return entries

    async def bought(self, kind: str, shopper: str, limit: int) -> list[tuple[str, float]]:
        return await self._ranked(self.bought_key(kind, shopper), limit)

    async def derived(
        self, kind: str, shopper: str, name: str, lease: str, *, ttl: float, limits: tuple[int, int]
    ) -> tuple[bytes | None, str, list[bytes], list[tuple[str, float]]]:
        """The value kept under `name`; or None, the lease to keep one under (this one if there
        was none), and the shopper's history and purchases, at most `limits` of each."""
        found: Any = await self._derived(
            keys=[
                self.derived_key(kind, shopper),
                self.history_key(kind, shopper),
                self.bought_key(kind, shopper),
            ],
            args=[name, lease, math.ceil(ttl), *limits],
        )
        if found[0]:
            return found[1], "", [], []
        return (
            None,
            found[1].decode(),
            found[2],
            _scored(found[3]),
        )

    async def keep_derived(
        self, kind: str, shopper: str, name: str, lease: str, value: bytes
    ) -> bool:
        """Keep `value` under `name` unless an event of the shopper came after the lease."""
        kept: Any = await self._keep_derived(
            keys=[self.derived_key(kind, shopper)], args=[name, lease, value]
        )
        return bool(kept)

    async def clock(self) -> float | None:
        raw: Any = await self.client.get(self.keys.key("agg", "clock"))
        return float(raw) if raw is not None else None

    async def popular(
        self, days: Sequence[int], category: str, limit: int
    ) -> list[tuple[str, float]]:
        """The window's counts, summed at most once per POPULAR_CACHE_SECONDS and window."""
        keys = [self.popularity_key(day, category) for day in days]
        cache = self.keys.key("pop", "cache", str(days[0]), str(days[-1]), category)
        result: Any = await self._popular(keys=[cache, *keys], args=[POPULAR_CACHE_SECONDS, limit])
        return _scored(result)

    async def trending(self, category: str, limit: int) -> list[tuple[str, float]]:
        return await self._ranked(self.trend_key(category), limit)

    async def co_occurring_many(
        self, lookups: Sequence[tuple[str, str]], limit: int
    ) -> list[list[tuple[str, float]]]:
        if not lookups:
            return []
        keys = [self.co_prefix(kind) + product_id for kind, product_id in lookups]
        replies: list[Any] = await self._read_top_many(keys=keys, args=[limit])
        return [_scored(reply) for reply in replies]

    async def _ranked(self, key: str, limit: int) -> list[tuple[str, float]]:
        result: list[Any] = await self.client.zrevrange(key, 0, limit - 1, withscores=True)
        return [(member.decode(), float(score)) for member, score in result]

    async def prune_days(self, before: float) -> int:
        """Drop popularity buckets of days that ended before `before` (no window reaches them)."""
        days_key = self.keys.key("pop", "days")
        old: list[Any] = await self.client.zrangebyscore(days_key, "-inf", f"({before}")
        if old:
            await self.client.delete(*old)
            await self.client.zrem(days_key, *old)
        return len(old)

    # -- erasure and merging -------------------------------------------------------------------

    async def erase_shopper(self, kind: str, shopper: str, windows: Sequence[str]) -> None:
        await self.client.delete(
            self.history_key(kind, shopper),
            self.bought_key(kind, shopper),
            self.derived_key(kind, shopper),
            *(self.window_key(window, kind, shopper) for window in windows),
        )

    async def stream_entries_of(self, field: str, value: str) -> list[str]:
        """Ids of behaviour-stream entries (not yet trimmed) whose `field` is `value`."""
        found: list[str] = []
        start = "-"
        while True:
            batch: Any = await self.client.xrange(self.stream, start, "+", count=1000)
            found += [
                entry_id.decode() for entry_id, fields in batch
                if fields.get(field.encode()) == value.encode()
            ]  # fmt: skip
            if len(batch) < 1000:
                return found
            start = "(" + batch[-1][0].decode()

    async def delete_stream_entries(self, ids: Sequence[str]) -> None:
        if ids:
            await self.client.xdel(self.stream, *ids)

    async def merge_shopper(
        self, source: tuple[str, str], target: tuple[str, str], history: Sequence[bytes]
    ) -> None:
        """Give `target` the merged `history` and both shoppers' purchases; forget `source`.

        Purchase scores are merged by maximum (a sorted-set union cannot add logarithms).
        """
        target_history = self.history_key(*target)
        bought_from, bought_to = self.bought_key(*source), self.bought_key(*target)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(target_history)
            if history:
                pipe.rpush(target_history, *history)
            pipe.delete(self.history_key(*source))
            pipe.zunionstore(bought_to, [bought_from, bought_to], aggregate="MAX")
            pipe.delete(bought_from)
            pipe.delete(self.derived_key(*source), self.derived_key(*target))
            await pipe.execute()


def _scored(flat: list[bytes]) -> list[tuple[str, float]]:
    """A sorted set's members with their scores, from a script's flat `member, score, ...`."""
    return [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]
