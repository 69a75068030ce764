"""Faults: two drills of benchmarks/faults.py at CI size, the refit lock a dead process leaves,
and a consumer stopped while a read's reply is on its way.

The drills start the real service as subprocesses (SIGKILL mid-import, restart, resend) and
check their invariants, which hold wherever the kill lands; `python -m benchmarks.faults` runs
them, and the others, at full size.
"""

import asyncio
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from benchmarks import faults
from conftest import Drain
from recommender.catalog import ProductCreate
from recommender.config import Settings
from recommender.platform.redis import Keyspace
from recommender.platform.streams import StreamEntry, StreamRunner
from recommender.services import Services
from recommender.vectors import service as vector_service
from recommender.vectors.model import fit_model_bytes
from recommender.vectors.service import RefitBusyError

# Quick recovery for CI: a dead consumer's entries claimed after 1 s, a dead refit's lock lapses
# after 2 s and is noticed within 0.5 s.
FAST = {
    "RECOMMENDER_STREAMS__CLAIM_IDLE_MS": "1000",
    "RECOMMENDER_VECTORS__REFIT_LOCK_SECONDS": "2",
    "RECOMMENDER_VECTORS__REFIT_CHECK_SECONDS": "0.5",
}
LEASE_SECONDS = 0.6


def catalog(count: int) -> list[dict[str, Any]]:
    colours = ("Red", "Navy", "Olive", "Grey", "Ivory")
    materials = ("wool", "cotton", "linen", "leather", "silk")
    things = ("scarf", "jacket", "tote bag", "cushion cover", "blanket", "glove")
    names = itertools.cycle(itertools.product(colours, materials, things))
    return [
        {"id": f"p{n:05d}", "name": f"{colour} {material} {thing}", "description": f"Style {n}."}
        for n, (colour, material, thing) in zip(range(count), names, strict=False)
    ]


@pytest.mark.asyncio
async def test_sigkill_mid_event_import_counts_each_acknowledged_event_once(
    tmp_path: Path,
) -> None:
    product_ids = [product["id"] for product in catalog(100)]
    outcome = await faults.kill_events(tmp_path, product_ids, count=3000, batch_size=300, env=FAST)
    assert outcome.passed, outcome.failures


@pytest.mark.asyncio
async def test_sigkill_mid_product_import_loses_nothing_and_indexes_everything(
    tmp_path: Path,
) -> None:
    outcome = await faults.kill_import(tmp_path, catalog(1000), batch_size=100, env=FAST)
    assert outcome.passed, outcome.failures


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A short refit-lock lease, so a dead refit's lock lapses within the test."""
    vectors = msgspec.structs.replace(settings.vectors, refit_lock_seconds=LEASE_SECONDS)
    return msgspec.structs.replace(settings, vectors=vectors)


async def fitted(services: Services, drain: Drain) -> int:
    for number, product in enumerate(catalog(30)):
        await services.catalog.create(ProductCreate(id=f"p{number}", name=product["name"]))
    await drain()
    version, _ = await services.vectors.live_model()
    return version


@pytest.mark.asyncio
async def test_a_refit_whose_process_died_is_taken_over(
    services: Services, drain: Drain, redis: "aioredis.Redis"
) -> None:
    live = await fitted(services, drain)
    store, index = services.vectors.store, services.vectors.index
    # What a process killed mid-refit leaves: the lock (no longer renewed) and a half-built index.
    dead = await store.acquire(LEASE_SECONDS)
    assert dead is not None
    await index.create(dead)
    await store.mark_building(dead)
    with pytest.raises(RefitBusyError):
        await services.vectors.refit(reason="while the lock is held")

    watcher = asyncio.create_task(services.vectors.refit_when_due(check_seconds=0.1))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = await store.state()
            if state.building is None and state.live not in (None, live):
                break
            await asyncio.sleep(0.1)
        await services.vectors.settle()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    state = await store.state()
    assert state.building is None
    assert state.live not in (None, live, dead)
    assert index.name(dead).encode() not in await redis.execute_command("FT._LIST")
    assert await redis.exists(store.model_key(dead)) == 0


@pytest.mark.asyncio
async def test_the_refit_watch_ends_when_a_redis_call_absorbed_its_cancel(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel landing in a Redis call can come out as a Redis error; the watch still ends."""
    reading = asyncio.Event()

    async def absorbing_state() -> Any:
        reading.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError as cancel:
            raise redis.exceptions.TimeoutError("Timeout reading from socket") from cancel

    monkeypatch.setattr(services.vectors.store, "state", absorbing_state)
    watcher = asyncio.create_task(services.vectors.refit_when_due(check_seconds=0.01))
    await reading.wait()
    watcher.cancel()
    try:
        await asyncio.wait({watcher}, timeout=5)
        assert watcher.cancelled()
    finally:
        monkeypatch.undo()  # a watch that went on is cancelled in its sleep, for the next test
        while not watcher.done():
            watcher.cancel()
            await asyncio.wait({watcher}, timeout=0.1)


@pytest.mark.asyncio
async def test_a_refit_slower_than_its_lease_keeps_the_lock(
    services: Services, drain: Drain, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = await fitted(services, drain)

    def slow_fit(*args: Any, **kwargs: Any) -> Any:
        time.sleep(LEASE_SECONDS * 3)  # in the worker thread that fits a catalog this small
        return fit_model_bytes(*args, **kwargs)

    monkeypatch.setattr(vector_service, "fit_model_bytes", slow_fit)
    info = await services.vectors.refit(reason="slow")
    assert info.version > live
    assert not await services.vectors.store.locked()


@pytest.mark.asyncio
async def test_a_consumer_stopped_mid_read_handles_what_redis_delivered(
    redis: "aioredis.Redis", settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while XREADGROUP's reply is on its way: Redis counts those entries as delivered,
    so a consumer that dropped the reply would leave them pending until claim_idle_ms."""
    handled: list[str] = []

    async def handler(entries: Sequence[StreamEntry]) -> None:
        handled.extend(entry.id for entry in entries)

    keys = Keyspace(settings.redis.namespace)
    runner = StreamRunner(
        redis, stream=keys.key("stream", "faults"), group="g", handler=handler,
        dead_letter_stream=keys.key("stream", "dead"), settings=settings.streams,
    )  # fmt: skip
    await runner.ensure_group()
    read = redis.xreadgroup
    replied = asyncio.Event()

    async def slow_reply(*args: Any, **kwargs: Any) -> Any:
        response = await read(*args, **kwargs)
        if response:
            replied.set()
            await asyncio.sleep(0.3)  # still on its way when the stop comes
        return response

    monkeypatch.setattr(redis, "xreadgroup", slow_reply)
    ids = [(await redis.xadd(runner.stream, {"n": str(n)})).decode() for n in range(3)]
    runner.start()
    await asyncio.wait_for(replied.wait(), 5)
    await runner.stop()
    assert handled == ids
    assert (await redis.xpending(runner.stream, "g"))["pending"] == 0
