"""A big catalog's fit runs in a child process: the event loop keeps serving, and a stop kills it.

No timing is asserted beyond generous bounds: the machine is shared and slow.
"""

import asyncio
import multiprocessing
import random
import signal
import string
import time
from multiprocessing.process import BaseProcess

import pytest

from recommender.services import Services

# A fit holding the GIL in a thread stalls the loop for seconds on this many products.
BIG_CATALOG = 2000
LOOP_GAP_BOUND = 1.0
STOP_BOUND = 10.0


async def add_synthetic(services: Services, count: int) -> None:
    """Products with a varied vocabulary, so the fit has real TF-IDF and SVD work to do."""
    rng = random.Random(0)
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
                  for _ in range(1000)]  # fmt: skip
    items = [
        {
            "id": f"p{n:05d}",
            "name": " ".join(rng.choices(vocabulary, k=4)),
            "description": " ".join(rng.choices(vocabulary, k=15)),
        }
        for n in range(count)
    ]
    for start in range(0, count, 500):
        await services.catalog.upsert_batch(items[start : start + 500])


async def the_child() -> BaseProcess:
    """The child process fitting the model, once it exists (bounded wait)."""
    for _ in range(1500):
        children = multiprocessing.active_children()
        if children:
            return children[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no child process within 30 s")


@pytest.mark.asyncio
async def test_a_big_refit_fits_in_a_child_process_while_the_loop_keeps_serving(
    services: Services,
) -> None:
    await add_synthetic(services, BIG_CATALOG)
    gaps: list[float] = []
    children: set[int] = set()

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            children.update(child.pid or 0 for child in multiprocessing.active_children())

    ticker = asyncio.create_task(tick())
    try:
        info = await services.vectors.refit(reason="test")
    finally:
        ticker.cancel()
    assert info.documents == BIG_CATALOG
    assert (await services.vectors.store.state()).live == info.version
    assert children, "no child process was running during the refit"
    assert max(gaps) < LOOP_GAP_BOUND, f"the event loop stalled {max(gaps):.2f} s"


@pytest.mark.asyncio
async def test_stopping_mid_fit_kills_the_child_and_a_later_refit_succeeds(
    services: Services,
) -> None:
    vectors = services.vectors
    await add_synthetic(services, 300)
    vectors.start_refit(reason="test")
    child = await the_child()
    await asyncio.wait_for(vectors.stop(), STOP_BOUND)
    await asyncio.to_thread(child.join, STOP_BOUND)
    assert child.exitcode == -signal.SIGKILL  # killed, not left to finish
    state = await vectors.store.state()
    assert (state.live, state.building) == (None, None)
    assert not await vectors.store.locked()  # released, not left to lapse
    info = await vectors.refit(reason="after the stop")
    assert info.documents == 300
    assert (await vectors.store.state()).live == info.version
