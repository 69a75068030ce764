"""A counted, capped log of changes in Redis, and a reader that applies it to a process's cache.

    {counter}   INCR per change: each entry carries its number, so a reader sees a gap
    {stream}    the latest changes (about `kept`): epoch, then the change's own fields

Writers log from inside their own Lua script (`log_change_lua`), atomically with the change. A
process keeping something derived from the logged data in memory reads the log at most every
`period` seconds and drops what the changes reach; when it cannot know (a gap: entries trimmed
before it read them; a burst; a change it cannot apply) it drops everything.
"""

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

KEPT = 1000
# Changes read per check; more waiting (a bulk write) clears instead: cheaper than applying.
PER_READ = 64

Entry = Mapping[bytes, bytes]


def log_change_lua() -> str:
    """Lua defining `log_change(counter_key, stream_key, field, value, ...)`."""
    return f"""
local function log_change(counter, stream, ...)
  local epoch = redis.call('INCR', counter)
  redis.call('XADD', stream, 'MAXLEN', '~', {KEPT}, '*', 'epoch', epoch, ...)
end
"""


class ChangeFollower:
    """Hands a change log's new entries to `apply` (False: it could not, so `clear` instead)."""

    def __init__(
        self,
        client: "aioredis.Redis",
        counter_key: str,
        stream_key: str,
        *,
        period: float,
        apply: Callable[[Sequence[Entry]], bool],
        clear: Callable[[], None],
    ) -> None:
        self.client = client
        self.counter_key = counter_key
        self.stream_key = stream_key
        self.period = period
        self._apply = apply
        self._clear = clear
        self._lock = asyncio.Lock()  # one reader at a time: each change read once
        self._read_at = -math.inf
        self._seen: str | None = None  # the last entry applied
        self._epoch = 0

    async def follow(self) -> None:
        """Apply what was logged since the last read, if `period` has passed since it."""
        async with self._lock:
            now = time.monotonic()
            if now - self._read_at < self.period:
                return
            self._read_at = now
            if self._seen is not None:
                raw: Any = await self.client.xrange(
                    self.stream_key, min=f"({self._seen}", count=PER_READ
                )
                if not raw:
                    return
                entries = [fields for _, fields in raw]
                epochs = [int(fields[b"epoch"]) for fields in entries]
                if (
                    epochs == list(range(self._epoch + 1, epochs[-1] + 1))
                    and len(entries) < PER_READ
                    and self._apply(entries)
                ):
                    self._seen, self._epoch = raw[-1][0].decode(), epochs[-1]
                    return
            # Where the log ends first: what is read after the clear includes all before it.
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xrevrange(self.stream_key, count=1)
                pipe.get(self.counter_key)
                last, epoch = await pipe.execute()
            self._seen, self._epoch = (last[0][0].decode() if last else "0-0"), int(epoch or 0)
            self._clear()
