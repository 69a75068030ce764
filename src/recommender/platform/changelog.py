"""A counted, capped log of changes in Redis, and a reader that applies it to a process's cache.

    {counter}   INCR per change: each entry carries its number, so a reader sees a gap
    {stream}    the latest changes (about `kept`): epoch, then the change's own fields

Writers log from inside their own Lua script (`log_change_lua`), atomically with the change. A
process keeping something derived from the logged data in memory serves it as of a read of the
log begun at most `period` seconds before, and drops what the changes reach; when it cannot know
(a gap: entries trimmed before it read them; a change it cannot apply) it drops everything.
"""

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog

log = structlog.get_logger()

KEPT = 1000
# Changes read per round trip: a burst takes several, each applied as it comes, so no step of
# the event loop applies more than this many. Clearing instead would cost far more: every
# cached list then has to be computed again.
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
        self._reading: asyncio.Task[None] | None = None  # the read in flight, shared
        self._fresh_from = -math.inf  # when the last read that finished started
        self._seen: str | None = None  # the last entry applied
        self._epoch = 0

    async def follow(self) -> None:
        """Return once a read begun at most `period` ago has been applied.

        Past half the period a read starts in the background and callers go on with what was
        applied; a caller waits only when even that is too old. Callers that wait share the
        read in flight: behind a lock they would wake one per event-loop step, and callers
        meanwhile would queue behind them, a convoy that held requests for hundreds of ms.
        """
        now = time.monotonic()
        oldest = now - self.period
        while self._fresh_from <= oldest:
            reading = self._reading or self._start_read()
            # Shielded: a caller's cancellation must not cancel the read the others wait for.
            await asyncio.shield(reading)
        if self._reading is None and self._fresh_from <= now - self.period / 2:
            self._start_read()

    def _start_read(self) -> "asyncio.Task[None]":
        self._reading = asyncio.create_task(self._read_shared(time.monotonic()))
        self._reading.add_done_callback(self._read_done)
        return self._reading

    async def _read_shared(self, started: float) -> None:
        try:
            await self._read()
            self._fresh_from = started
        finally:
            self._reading = None

    def _read_done(self, read: "asyncio.Task[None]") -> None:
        """Log a failed read: one started ahead may have no caller to raise to (the next read is
        tried when a caller needs it)."""
        if not read.cancelled() and (error := read.exception()) is not None:
            log.warning("change_log_read_failed", stream=self.stream_key, error=str(error))

    async def _read(self) -> None:
        """Apply the entries after the last one seen; on a gap (entries trimmed before this read
        reached them) or an entry `apply` cannot take, clear instead and start from the log's
        end."""
        while self._seen is not None:
            raw: Any = await self.client.xrange(
                self.stream_key, min=f"({self._seen}", count=PER_READ
            )
            if not raw:
                return
            entries = [fields for _, fields in raw]
            epochs = [int(fields[b"epoch"]) for fields in entries]
            if epochs != list(range(self._epoch + 1, epochs[-1] + 1)) or not self._apply(entries):
                break
            self._seen, self._epoch = raw[-1][0].decode(), epochs[-1]
            if len(entries) < PER_READ:
                return
        # Where the log ends first: what is read after the clear includes all before it.
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xrevrange(self.stream_key, count=1)
            pipe.get(self.counter_key)
            last, epoch = await pipe.execute()
        self._seen, self._epoch = (last[0][0].decode() if last else "0-0"), int(epoch or 0)
        self._clear()
