"""A Redis Streams consumer-group runner: at-least-once delivery with retries and a dead letter.

One runner reads one stream for one group under a consumer name unique to this process. It
hands batches of entries to a handler and acknowledges only what the handler finished. A
failing batch is split so one poison entry cannot hold back the rest; a failed entry stays
pending and is retried after `retry_delay_ms`, entries of a crashed consumer are claimed after
`claim_idle_ms`, and an entry delivered `max_deliveries` times moves to the dead-letter stream
with its last error. Handlers must therefore be idempotent; one may instead acknowledge each
entry itself, in the same atomic write as its effects (the runner's own XACK is then a no-op).
"""

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from recommender.config import StreamSettings
from recommender.platform import metrics

log = structlog.get_logger()

Fields = dict[str, str]


@dataclass(frozen=True, slots=True)
class StreamEntry:
    id: str
    fields: Fields


Handler = Callable[[Sequence[StreamEntry]], Awaitable[None]]


def consumer_name() -> str:
    """Unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _decode(raw: dict[bytes, bytes]) -> Fields:
    return {key.decode(): value.decode() for key, value in raw.items()}


class StreamRunner:
    def __init__(
        self,
        client: "aioredis.Redis",
        *,
        stream: str,
        group: str,
        handler: Handler,
        dead_letter_stream: str,
        settings: StreamSettings,
        consumer: str | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.handler = handler
        self.dead_letter_stream = dead_letter_stream
        self.settings = settings
        self.consumer = consumer or consumer_name()
        self.errors_key = f"{stream}:errors:{group}"
        self._labels = {"stream": stream, "group": group}
        self._failed_here: dict[str, float] = {}  # entry id -> monotonic time of its failure
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()  # set by stop(): cuts a backoff pause short
        self._next_trim = 0.0
        self._next_claim = 0.0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._wake.clear()
        self._task = asyncio.create_task(self.run(), name=f"stream-runner:{self.stream}")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Finish the step in hand, acknowledging what it read, then exit (cancelled only after
        `grace_seconds`). A blocked read returns within block_ms; cancelling it instead could
        drop a reply Redis already sent, leaving its entries pending until claim_idle_ms."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._task, grace_seconds)
        self._task = None

    async def run(self) -> None:
        await self.ensure_group()
        log.info("stream_runner_started", stream=self.stream, group=self.group,
                 consumer=self.consumer)  # fmt: skip
        backoff = 0.1
        while not self._stopping:
            try:
                await self.step()
                backoff = 0.1
            except RedisError as error:
                metrics.REDIS_ERRORS.labels(source="stream").inc()
                log.warning("stream_runner_redis_error", stream=self.stream, error=str(error))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
        log.info("stream_runner_stopped", stream=self.stream, group=self.group)

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; from id 0 so nothing written is skipped."""
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # -- one iteration ----------------------------------------------------------------------------

    async def step(self) -> int:
        """Retry, reclaim, then read new entries; returns how many entries were handled."""
        handled = await self._process(await self._retry_own_failures())
        if time.monotonic() >= self._next_claim:
            # Nothing can be claimed before it idled claim_idle_ms: a tenth of that is soon enough.
            self._next_claim = time.monotonic() + self.settings.claim_idle_ms / 10_000
            handled += await self._process(await self._claim_abandoned())
        if self._stopping:
            return handled
        handled += await self._process(await self._read_batch(block=handled == 0))
        if time.monotonic() >= self._next_trim:
            await self.trim()
            await self.refresh_metrics()
            self._next_trim = time.monotonic() + self.settings.trim_interval_seconds
        return handled

    async def _read_batch(self, *, block: bool) -> list[StreamEntry]:
        """New entries; a short read waits `linger_ms` (or a stop) and takes what came since."""
        entries = await self._read_new(self.settings.batch_size, block=block)
        missing = self.settings.batch_size - len(entries)
        if entries and missing and self.settings.linger_ms and not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.linger_ms / 1000)
            entries += await self._read_new(missing, block=False)
        return entries

    async def _read_new(self, count: int, *, block: bool) -> list[StreamEntry]:
        block_ms = self.settings.block_ms if block else None
        response: Any = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        if not response:
            return []
        return [StreamEntry(entry_id.decode(), _decode(raw)) for entry_id, raw in response[0][1]]

    async def _retry_own_failures(self) -> list[StreamEntry]:
        now = time.monotonic()
        due = [
            entry_id
            for entry_id, failed_at in self._failed_here.items()
            if now - failed_at >= self.settings.retry_delay_ms / 1000
        ][: self.settings.batch_size]
        if not due:
            return []
        for entry_id in due:
            del self._failed_here[entry_id]
        # XCLAIM counts a delivery; an id another consumer took meanwhile is simply not returned.
        claimed: Any = await self.client.xclaim(
            self.stream, self.group, self.consumer,
            min_idle_time=self.settings.retry_delay_ms, message_ids=list[Any](due),
        )  # fmt: skip
        return await self._divert_exhausted(claimed)

    async def _claim_abandoned(self) -> list[StreamEntry]:
        response: Any = await self.client.xautoclaim(
            self.stream, self.group, self.consumer,
            min_idle_time=self.settings.claim_idle_ms, start_id="0-0",
            count=self.settings.batch_size,
        )  # fmt: skip
        claimed = response[1]
        if claimed:
            log.info("stream_entries_claimed", stream=self.stream, count=len(claimed))
        return await self._divert_exhausted(claimed)

    async def _divert_exhausted(
        self, claimed: list[tuple[bytes, dict[bytes, bytes] | None]]
    ) -> list[StreamEntry]:
        """Dead-letter entries already delivered too often; return the rest to be handled."""
        entries = [
            StreamEntry(entry_id.decode(), _decode(raw))
            for entry_id, raw in claimed
            if raw is not None  # a trimmed or deleted entry has no fields left
        ]
        if not entries:
            return []
        deliveries = await self._delivery_counts([entry.id for entry in entries])
        keep = []
        for entry in entries:
            if deliveries.get(entry.id, 0) > self.settings.max_deliveries:
                await self._dead_letter(entry)
            else:
                keep.append(entry)
        return keep

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        return {
            item["message_id"].decode(): int(item["times_delivered"])
            for reply in replies
            for item in reply
        }

    async def _process(self, entries: list[StreamEntry]) -> int:
        if not entries:
            return 0
        try:
            await self.handler(entries)
            done = entries
        except Exception as error:  # noqa: BLE001 - a handler bug must not stop the runner
            if len(entries) == 1:
                await self._record_failure(entries[0], error)
                done = []
            else:  # isolate the poison entry: the others must not wait for it
                done = await self._process_one_by_one(entries)
        if done:
            await self._ack([entry.id for entry in done])
        return len(entries)

    async def _process_one_by_one(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        done = []
        for entry in entries:
            try:
                await self.handler([entry])
            except Exception as error:  # noqa: BLE001
                await self._record_failure(entry, error)
            else:
                done.append(entry)
        return done

    async def _record_failure(self, entry: StreamEntry, error: Exception) -> None:
        """Leave the entry pending; keep the error for the dead letter, should it come to that."""
        metrics.STREAM_FAILED.labels(**self._labels).inc()
        log.warning("stream_entry_failed", stream=self.stream, entry_id=entry.id,
                    error=repr(error))  # fmt: skip
        self._failed_here[entry.id] = time.monotonic()
        await self.client.hset(self.errors_key, entry.id, repr(error)[:1000])

    async def _ack(self, ids: list[str]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, *ids)
            pipe.hdel(self.errors_key, *ids)
            await pipe.execute()
        metrics.STREAM_PROCESSED.labels(**self._labels).inc(len(ids))

    async def _dead_letter(self, entry: StreamEntry) -> None:
        error: Any = await self.client.hget(self.errors_key, entry.id)
        record = {
            **entry.fields,
            "dead_letter_stream": self.stream,
            "dead_letter_group": self.group,
            "dead_letter_id": entry.id,
            "dead_letter_error": error.decode() if error else "delivered too often",
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter_stream, record,  # type: ignore[arg-type]
                      maxlen=self.settings.dead_letter_max_length, approximate=True)  # fmt: skip
            pipe.xack(self.stream, self.group, entry.id)
            pipe.hdel(self.errors_key, entry.id)
            await pipe.execute()
        metrics.STREAM_DEAD_LETTERED.labels(**self._labels).inc()
        log.error("stream_entry_dead_lettered", stream=self.stream, entry_id=entry.id,
                  error=record["dead_letter_error"])  # fmt: skip

    # -- housekeeping -----------------------------------------------------------------------------

    async def trim(self) -> int:
        """Drop entries every group has acknowledged, and none other."""
        groups: Any = await self.client.xinfo_groups(self.stream)
        if not groups:
            return 0
        bounds = []
        for group in groups:
            oldest = None
            if int(group["pending"]):
                summary: Any = await self.client.xpending(self.stream, group["name"])
                oldest = summary["min"]  # None if all were acknowledged since XINFO
            # With nothing pending, everything up to last-delivered-id is acknowledged; keep
            # that entry itself.
            bounds.append((oldest or group["last-delivered-id"]).decode())
        min_id = min(bounds, key=_id_key)
        removed: int = await self.client.xtrim(self.stream, minid=min_id, approximate=False)
        return removed

    async def refresh_metrics(self) -> None:
        groups: Any = await self.client.xinfo_groups(self.stream)
        for group in groups:
            if group["name"].decode() != self.group:
                continue
            metrics.STREAM_PENDING.labels(**self._labels).set(int(group["pending"]))
            lag = group.get("lag")
            if lag is not None:
                metrics.STREAM_LAG.labels(**self._labels).set(int(lag))


def _id_key(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)
