"""The change follower against a real Redis: what it applies, and how concurrent callers share
one read."""

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import redis
import redis.asyncio as aioredis
import structlog

from recommender.platform import changelog
from recommender.platform.changelog import ChangeFollower, Entry, log_change_lua
from recommender.platform.redis import Keyspace


class Log:
    """A change log in the test's namespace, and what a follower of it was handed."""

    def __init__(self, redis: "aioredis.Redis", namespace: str) -> None:
        keys = Keyspace(namespace)
        self.redis = redis
        self.counter, self.stream = keys.key("epoch"), keys.key("changes")
        self.write = redis.register_script(
            log_change_lua() + "log_change(KEYS[1], KEYS[2], 'id', ARGV[1])"
        )
        self.applied: list[str] = []
        self.clears = 0

    def follower(self, period: float) -> ChangeFollower:
        return ChangeFollower(
            self.redis, self.counter, self.stream, period=period,
            apply=self._apply, clear=self._clear,
        )  # fmt: skip

    async def change(self, product_id: str) -> None:
        await self.write(keys=[self.counter, self.stream], args=[product_id])

    def _apply(self, entries: Sequence[Entry]) -> bool:
        self.applied.extend(entry[b"id"].decode() for entry in entries)
        return True

    def _clear(self) -> None:
        self.clears += 1


@pytest.fixture
def log(redis: "aioredis.Redis", namespace: str) -> Log:
    return Log(redis, namespace)


@pytest.mark.asyncio
async def test_applies_what_was_logged_since_its_last_read(log: Log) -> None:
    follower = log.follower(period=0)
    await log.change("before")
    await follower.follow()  # the first read starts from the log's end
    assert (log.clears, log.applied) == (1, [])
    await log.change("a")
    await log.change("b")
    await follower.follow()
    await follower.follow()
    assert (log.clears, log.applied) == (1, ["a", "b"])


@pytest.mark.asyncio
async def test_within_its_period_it_does_not_read_again(log: Log) -> None:
    follower = log.follower(period=60)
    await follower.follow()
    await log.change("a")
    await follower.follow()
    assert log.applied == []


@pytest.mark.asyncio
async def test_callers_during_one_read_share_it_and_wake_in_the_same_step(log: Log) -> None:
    # Behind a lock they would wake one per event-loop step: a convoy under load.
    follower = log.follower(period=60)
    steps = 0
    woke: list[int] = []

    async def call() -> None:
        await follower.follow()
        woke.append(steps)

    async def count_steps() -> None:
        nonlocal steps
        while len(woke) < 20:
            steps += 1
            await asyncio.sleep(0)

    await asyncio.gather(count_steps(), *(call() for _ in range(20)))
    assert log.clears == 1  # one read for all twenty
    assert max(woke) - min(woke) <= 1


@pytest.mark.asyncio
async def test_with_no_period_a_call_never_relies_on_a_read_begun_before_it(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    follower = log.follower(period=0)
    await follower.follow()
    reads = 0
    xrange = log.redis.xrange

    async def counted_xrange(*args: object, **kwargs: object) -> object:
        nonlocal reads
        reads += 1
        return await xrange(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(log.redis, "xrange", counted_xrange)
    first = asyncio.create_task(follower.follow())
    await asyncio.sleep(0)  # the first call has begun its read
    await follower.follow()
    await first
    assert reads == 2


@pytest.mark.asyncio
async def test_a_cancelled_caller_leaves_the_read_to_the_others(log: Log) -> None:
    follower = log.follower(period=60)
    first = asyncio.create_task(follower.follow())
    second = asyncio.create_task(follower.follow())
    await asyncio.sleep(0)  # both wait on the one read
    first.cancel()
    await second
    assert log.clears == 1
    with pytest.raises(asyncio.CancelledError):
        await first


@pytest.mark.asyncio
async def test_past_half_its_period_it_reads_ahead_without_making_the_caller_wait(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SimpleNamespace(monotonic=lambda: 100.0)
    monkeypatch.setattr(changelog, "time", clock)  # this module's clock only, not the loop's
    follower = log.follower(period=1)
    await follower.follow()
    await log.change("a")
    clock.monotonic = lambda: 100.6
    await follower.follow()
    assert log.applied == []  # the caller went on with what was applied...
    for _ in range(500):  # ...while the read it started applies the change
        if log.applied:
            break
        await asyncio.sleep(0.01)
    assert log.applied == ["a"]
    await log.change("b")
    clock.monotonic = lambda: 101.0  # the last read began 0.4 s ago: nothing to do
    await follower.follow()
    await asyncio.sleep(0.05)
    assert log.applied == ["a"]


@pytest.mark.asyncio
async def test_a_burst_longer_than_one_read_is_applied_not_cleared(log: Log) -> None:
    follower = log.follower(period=0)
    await follower.follow()
    burst = [f"p{n}" for n in range(changelog.PER_READ * 2 + 5)]
    for product_id in burst:
        await log.change(product_id)
    await follower.follow()
    assert (log.clears, log.applied) == (1, burst)


@pytest.mark.asyncio
async def test_a_gap_in_the_log_clears(log: Log) -> None:
    follower = log.follower(period=0)
    await follower.follow()
    await log.change("a")
    await log.redis.delete(log.stream)  # trimmed before this follower read it
    await log.change("b")
    await follower.follow()
    assert (log.clears, log.applied) == (2, [])


@pytest.mark.asyncio
async def test_a_failed_read_ahead_is_logged_and_the_next_caller_due_sees_the_error(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SimpleNamespace(monotonic=lambda: 100.0)
    monkeypatch.setattr(changelog, "time", clock)
    follower = log.follower(period=1)
    await follower.follow()

    async def unreachable(*args: object, **kwargs: object) -> object:
        raise redis.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(log.redis, "xrange", unreachable)
    clock.monotonic = lambda: 100.6
    with structlog.testing.capture_logs() as logs:
        await follower.follow()  # starts a read ahead and does not wait for it
        await asyncio.sleep(0.05)
    failed = [(entry["event"], entry["error"]) for entry in logs]
    assert failed == [("change_log_read_failed", "Redis went away")]
    clock.monotonic = lambda: 101.5  # past the period: this caller waits for a read, and fails
    with pytest.raises(redis.exceptions.ConnectionError):
        await follower.follow()
