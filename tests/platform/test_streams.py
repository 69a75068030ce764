"""The stream runner against a real Redis: delivery, ack, retry, dead letter, claim, trim, stop."""

import asyncio
from collections.abc import Sequence

import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from recommender.config import Settings
from recommender.platform.redis import Keyspace
from recommender.platform.streams import StreamEntry, StreamRunner


class Recorder:
    """A handler that records what it saw and fails on the ids it is told to."""

    def __init__(self, fail: Sequence[str] = (), fail_times: int = 10**6) -> None:
        self.seen: list[str] = []
        self.batches: list[int] = []
        self.fail = set(fail)
        self.fail_times = fail_times
        self.failures = 0

    async def __call__(self, entries: Sequence[StreamEntry]) -> None:
        self.batches.append(len(entries))
        doomed = [e for e in entries if e.fields["n"] in self.fail]
        if doomed and self.failures < self.fail_times:
            self.failures += 1
            raise ValueError(f"cannot handle {doomed[0].fields['n']}")
        self.seen.extend(entry.fields["n"] for entry in entries)


def make_runner(
    redis: "aioredis.Redis",
    settings: Settings,
    handler: Recorder,
    group: str = "workers",
    consumer: str = "c1",
) -> StreamRunner:
    keys = Keyspace(settings.redis.namespace)
    return StreamRunner(
        redis, stream=keys.key("stream", "test"), group=group, handler=handler,
        dead_letter_stream=keys.key("stream", "dead"), settings=settings.streams,
        consumer=consumer,
    )  # fmt: skip


async def lingering_runner(
    redis: "aioredis.Redis", settings: Settings, handler: Recorder, linger_ms: int
) -> StreamRunner:
    """A runner whose short reads wait up to `linger_ms` for more, its group created."""
    lingering = msgspec.structs.replace(settings.streams, linger_ms=linger_ms)
    runner = make_runner(redis, msgspec.structs.replace(settings, streams=lingering), handler)
    await runner.ensure_group()
    return runner


async def add(redis: "aioredis.Redis", runner: StreamRunner, count: int) -> list[str]:
    return [(await redis.xadd(runner.stream, {"n": str(i)})).decode() for i in range(count)]


async def pending(redis: "aioredis.Redis", runner: StreamRunner) -> int:
    summary = await redis.xpending(runner.stream, runner.group)
    return int(summary["pending"])


async def read_by_group(redis: "aioredis.Redis", runner: StreamRunner, count: int) -> None:
    """Until the group has delivered `count` entries (a step read them and now lingers)."""
    for _ in range(2000):
        if await pending(redis, runner) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the group never delivered {count} entries")


def metric(name: str, runner: StreamRunner) -> float:
    value = REGISTRY.get_sample_value(name, {"stream": runner.stream, "group": runner.group})
    return value or 0.0


@pytest.mark.asyncio
async def test_delivers_in_batches_and_acks(redis: "aioredis.Redis", settings: Settings) -> None:
    handler = Recorder()
    runner = make_runner(redis, settings, handler)
    await runner.ensure_group()
    await add(redis, runner, 5)
    assert await runner.step() == 5
    assert handler.seen == ["0", "1", "2", "3", "4"]
    assert handler.batches == [5]
    assert await pending(redis, runner) == 0
    assert metric("recommender_stream_processed_total", runner) == 5


@pytest.mark.asyncio
async def test_a_short_read_lingers_and_takes_what_came_meanwhile_in_the_same_batch(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    handler = Recorder()
    runner = await lingering_runner(redis, settings, handler, linger_ms=1000)
    await add(redis, runner, 2)
    step = asyncio.create_task(runner.step())
    await read_by_group(redis, runner, 2)  # the step has read the two and lingers
    await redis.xadd(runner.stream, {"n": "late"})
    assert await step == 3
    assert handler.batches == [3]
    assert await pending(redis, runner) == 0


@pytest.mark.asyncio
async def test_a_stop_cuts_the_linger_short_and_hands_in_what_was_read(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    handler = Recorder()
    runner = await lingering_runner(redis, settings, handler, linger_ms=60_000)
    runner.start()
    await add(redis, runner, 1)
    await read_by_group(redis, runner, 1)
    # Far under the minute the linger would last; far over what a stop takes.
    await asyncio.wait_for(runner.stop(), 10)
    assert handler.batches == [1]
    assert await pending(redis, runner) == 0


@pytest.mark.asyncio
async def test_group_created_late_still_sees_earlier_entries(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    handler = Recorder()
    runner = make_runner(redis, settings, handler)
    await add(redis, runner, 2)
    await runner.ensure_group()
    await runner.ensure_group()  # idempotent
    await runner.step()
    assert handler.seen == ["0", "1"]


@pytest.mark.asyncio
async def test_poison_entry_is_isolated_retried_then_succeeds(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    handler = Recorder(fail=["2"], fail_times=2)  # the batch, then entry 2 alone, fail once each
    runner = make_runner(redis, settings, handler)
    await runner.ensure_group()
    await add(redis, runner, 4)
    await runner.step()
    assert sorted(handler.seen) == ["0", "1", "3"]
    assert await pending(redis, runner) == 1
    assert metric("recommender_stream_failed_total", runner) == 1
    await asyncio.sleep(settings.streams.retry_delay_ms / 1000 + 0.05)
    await runner.step()
    assert sorted(handler.seen) == ["0", "1", "2", "3"]
    assert await pending(redis, runner) == 0
    assert await redis.hlen(runner.errors_key) == 0


@pytest.mark.asyncio
async def test_entry_goes_to_dead_letter_after_max_deliveries(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    handler = Recorder(fail=["1"])
    runner = make_runner(redis, settings, handler)
    await runner.ensure_group()
    ids = await add(redis, runner, 3)
    for _ in range(settings.streams.max_deliveries + 2):
        await runner.step()
        await asyncio.sleep(settings.streams.retry_delay_ms / 1000 + 0.02)
    assert handler.seen.count("1") == 0
    assert sorted(handler.seen) == ["0", "2"]
    assert await pending(redis, runner) == 0
    dead = await redis.xrange(runner.dead_letter_stream)
    assert len(dead) == 1
    fields = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert fields["n"] == "1"
    assert fields["dead_letter_id"] == ids[1]
    assert fields["dead_letter_stream"] == runner.stream
    assert "cannot handle 1" in fields["dead_letter_error"]
    assert metric("recommender_stream_dead_lettered_total", runner) == 1
    # handled max_deliveries times in all: once in the batch's first delivery, then alone
    assert handler.failures == settings.streams.max_deliveries + 1


@pytest.mark.asyncio
async def test_entries_of_a_crashed_consumer_are_claimed(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    handler = Recorder()
    survivor = make_runner(redis, settings, handler, consumer="survivor")
    await survivor.ensure_group()
    await add(redis, survivor, 3)
    # The crashed consumer read them and died before acknowledging.
    await redis.xreadgroup(survivor.group, "crashed", {survivor.stream: ">"}, count=10)
    await survivor.step()
    assert handler.seen == []  # not idle long enough to be taken over
    await asyncio.sleep(settings.streams.claim_idle_ms / 1000 + 0.05)
    await survivor.step()
    assert handler.seen == ["0", "1", "2"]
    assert await pending(redis, survivor) == 0


@pytest.mark.asyncio
async def test_trim_keeps_everything_some_group_has_not_acknowledged(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    fast = make_runner(redis, settings, Recorder(), group="fast")
    slow_handler = Recorder(fail=["3"])
    slow = make_runner(redis, settings, slow_handler, group="slow")
    await fast.ensure_group()
    await slow.ensure_group()
    ids = await add(redis, fast, 6)
    await fast.step()
    await fast.trim()
    assert [e[0].decode() for e in await redis.xrange(fast.stream)] == ids  # slow read nothing

    await slow.step()  # acks all but entry 3
    await fast.trim()
    remaining = [e[0].decode() for e in await redis.xrange(fast.stream)]
    assert remaining[0] == ids[3]  # nothing at or after the unacknowledged entry is gone
    assert remaining == ids[3:]

    slow_handler.fail.clear()
    await asyncio.sleep(settings.streams.retry_delay_ms / 1000 + 0.05)
    await slow.step()
    await fast.trim()
    assert len(await redis.xrange(fast.stream)) <= 1  # only the last delivered entry may stay
    assert sorted(slow_handler.seen) == [str(i) for i in range(6)]


@pytest.mark.asyncio
async def test_stop_lets_the_batch_in_hand_finish_and_ack(
    redis: "aioredis.Redis", settings: Settings
) -> None:
    started = asyncio.Event()
    finished: list[str] = []

    async def slow(entries: Sequence[StreamEntry]) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.extend(e.id for e in entries)

    runner = make_runner(redis, settings, Recorder())
    runner.handler = slow
    await runner.ensure_group()
    ids = await add(redis, runner, 2)
    runner.start()
    await asyncio.wait_for(started.wait(), 5)
    await runner.stop()
    assert not runner.alive
    assert finished == ids
    assert await pending(redis, runner) == 0


@pytest.mark.asyncio
async def test_stop_while_idle_is_prompt(redis: "aioredis.Redis", settings: Settings) -> None:
    runner = make_runner(redis, settings, Recorder())
    runner.start()
    await asyncio.sleep(0.2)
    assert runner.alive
    await asyncio.wait_for(runner.stop(), 2)
    assert not runner.alive


@pytest.mark.asyncio
async def test_metrics_report_lag_and_pending(redis: "aioredis.Redis", settings: Settings) -> None:
    runner = make_runner(redis, settings, Recorder(fail=["0"]))
    await runner.ensure_group()
    await add(redis, runner, 2)
    await runner.refresh_metrics()
    assert metric("recommender_stream_lag", runner) == 2
    await runner.step()
    await runner.refresh_metrics()
    assert metric("recommender_stream_lag", runner) == 0
    assert metric("recommender_stream_pending", runner) == 1


@pytest.mark.asyncio
async def test_a_stopped_runner_starts_again(redis: "aioredis.Redis", settings: Settings) -> None:
    handler = Recorder()
    runner = make_runner(redis, settings, handler)
    runner.start()
    await runner.stop()
    await add(redis, runner, 1)
    runner.start()
    for _ in range(100):
        if handler.seen:
            break
        await asyncio.sleep(0.02)
    await runner.stop()
    assert handler.seen == ["0"]
