"""What one "for you" request costs: wall time, this process's CPU, Redis CPU and commands.

    python -m benchmarks.for_you_cost [--users 200] [--cutoff 2011-07-01] [--variant K=V,...]
        [--warm]

How (one private embedded Redis, everything in this process):
1. Convert the shared Online Retail data (`benchmarks.datasets.online_retail`) into a temporary
   directory; import its catalog through `CatalogService.upsert_batch` and its purchases before
   the cutoff through `TrackingService.record` (the calls `POST /products/batch` and
   `POST /events` make); run both consumers until every stream entry is handled; refit.
2. With `--warm`, first cache every product's neighbour list (the state similar requests leave
   a service in), and load the process's copy of every live vector if the catalog is small
   enough to hold one (vectors.live_vectors_max_products). Ask `RecommendService.for_you`
   (k=10, no stock filter) for the first `--users` users with history before the cutoff, each
   with and without their purchases excluded, one request at a time (warm-up: the first 20
   requests, not counted). Settings come from config.toml and RECOMMENDER_* variables, as the
   service's do; each `--variant` asks again with some settings changed (a bare key is a
   [recommend] one, else SECTION.KEY), on the same data. Every pass computes its lists: the
   lists an earlier pass kept for its shoppers are dropped first.
3. Print per request: wall time (percentiles), CPU time of this process (the service's Python
   plus the client library), Redis CPU (INFO's used_cpu_user + used_cpu_sys), Redis commands
   by name with the time spent in them (INFO commandstats; an EVALSHA's inner calls are counted
   too) and round trips (packed sends on the client's connections: a pipeline is one).

BLAS runs on one thread, as in the service's processes.

The machine's load average is printed: other work on a 2-core machine moves the times; the
command and round-trip counts do not depend on it.
"""

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import threadpoolctl
from redis.asyncio.connection import AbstractConnection

from benchmarks.datasets import online_retail
from benchmarks.support import describe_ms, machine_load, private_redis, quiet_logs
from recommender.config import load_settings
from recommender.evaluation import load_events, split_events
from recommender.importing import (
    CatalogSink,
    Progress,
    TrackingSink,
    open_source,
    read_jsonl,
    run_event_import,
    run_import,
)
from recommender.platform.redis import Keyspace, create_client
from recommender.recommending import RecommendService
from recommender.services import Services, build_services
from recommender.tracking import Shopper
from recommender.vectors import Filters

NAMESPACE = "cost:"
WARM_UP = 20


class _SendCounter:
    """Counts packed sends (round trips) on every async connection while installed.

    It counts the write every send goes through when the connection has a socket timeout
    (`create_client` always sets one): the service's connections override the public send.
    """

    def __init__(self) -> None:
        self.sends = 0
        self._original = AbstractConnection._send_packed_command

    def __enter__(self) -> "_SendCounter":
        original = self._original
        counter = self

        async def counted(connection: AbstractConnection, command: Any) -> None:
            counter.sends += 1
            await original(connection, command)

        AbstractConnection._send_packed_command = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        AbstractConnection._send_packed_command = self._original  # type: ignore[method-assign]


async def _load(services: Services, work: Path, cutoff: datetime) -> list[Shopper]:
    """Import the catalog and the history before the cutoff; the users to ask for."""
    online_retail.convert(online_retail.SOURCE, work)
    progress = Progress(interval=30.0)
    with open_source(str(work / "products.jsonl")) as stream:
        await run_import(read_jsonl(stream), CatalogSink(services.catalog), 500, progress)
    events, _ = load_events(str(work / "events.csv"))
    history = [item for item, event in events if event.timestamp and event.timestamp < cutoff]
    await run_event_import(history, TrackingSink(services.tracking), 500, progress)
    for runner in services.runners:
        await runner.ensure_group()
        while await runner.step():
            pass
    await services.vectors.settle()
    await services.vectors.refit(reason="benchmark")
    split = split_events((event for _, event in events), cutoff)
    return list(split.truth)


async def _redis_counters(client: "aioredis.Redis") -> tuple[float, Counter[str], Counter[str]]:
    """Redis CPU seconds so far, and calls and microseconds spent by command."""
    cpu: Any = await client.info("cpu")
    stats: Any = await client.info("commandstats")
    names = {name: name.removeprefix("cmdstat_") for name in stats}
    calls = Counter({names[name]: int(s["calls"]) for name, s in stats.items()})
    usec = Counter({names[name]: int(s["usec"]) for name, s in stats.items()})
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls, usec


async def _measure(
    client: "aioredis.Redis", recommend: RecommendService, asks: list[tuple[Shopper, bool]]
) -> None:
    everything = Filters(in_stock=None)
    for shopper, exclude in asks[:WARM_UP]:
        await recommend.for_you(shopper, 10, everything, exclude)
    asks = asks[WARM_UP:]
    redis_before, calls_before, usec_before = await _redis_counters(client)
    walls: list[float] = []
    with _SendCounter() as sends:
        cpu_before = time.process_time()
        for shopper, exclude in asks:
            began = time.perf_counter()
            await recommend.for_you(shopper, 10, everything, exclude)
            walls.append(time.perf_counter() - began)
        cpu = time.process_time() - cpu_before
    redis_after, calls_after, usec_after = await _redis_counters(client)
    # The two INFO calls themselves are not the requests' doing.
    calls = calls_after - calls_before - Counter({"info": 2})
    usec = usec_after - usec_before
    n = len(asks)
    print(f'"for you", {n} requests one at a time ({machine_load()})')
    print(f"  wall          {describe_ms(walls)}")
    print(f"  process CPU   {cpu / n * 1000:.2f} ms per request")
    print(f"  Redis CPU     {(redis_after - redis_before) / n * 1000:.2f} ms per request")
    print(f"  round trips   {sends.sends / n:.1f} per request")
    print(f"  commands      {sum(calls.values()) / n:.1f} per request "
          f"({sum(usec[name] for name in calls) / n / 1000:.2f} ms inside them):")  # fmt: skip
    for name, count in calls.most_common():
        print(f"    {name:<24}{count / n:8.2f}  {usec[name] / n / 1000:6.3f} ms")


def _variant(text: str) -> dict[str, Any]:
    """`anchors=20,vectors.live_vectors_max_products=0` -> settings to change (a bare key is
    a [recommend] one)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"not KEY=VALUE[,KEY=VALUE...]: '{text}'")
    return dict(pairs)


async def _warm_neighbours(recommend: RecommendService) -> None:
    """Every product's neighbour list into this process's cache, as similar requests leave a
    service's after a while."""
    started = time.perf_counter()
    depth = recommend.neighbour_depth
    cursor, count = "", 0
    while True:
        page = await recommend.catalog.list("", cursor, 1000)
        for product in page.items:
            await recommend.vectors.neighbours(product.id, depth)
        count += len(page.items)
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    print(f"neighbour lists of {count:,} products cached in {time.perf_counter() - started:.0f} s")
    table = await recommend.vectors.every_vector()
    held = f"{len(table):,} products" if table else "none (vectors.live_vectors_max_products)"
    print(f"copy of every live vector: {held}")


async def _forget_kept_lists(recommend: RecommendService, shoppers: list[Shopper]) -> None:
    """Drop the ranked lists kept for these shoppers: the pass before would answer from them."""
    tracking = recommend.tracking.repository
    await tracking.client.delete(*(tracking.derived_key(s.kind, s.id) for s in shoppers))


async def measure(users: int, cutoff: datetime, variants: list[dict[str, Any]], warm: bool) -> None:
    quiet_logs()
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp) / "redis") as server:
        # config.toml and RECOMMENDER_* variables apply, e.g. RECOMMENDER_RECOMMEND__ANCHORS=20.
        settings = load_settings(overrides={"redis.url": server.url})
        client = create_client(settings.redis, server.url)
        services = build_services(client, Keyspace(NAMESPACE), settings)
        started = time.perf_counter()
        shoppers = (await _load(services, Path(tmp) / "data", cutoff))[:users]
        print(f"loaded in {time.perf_counter() - started:.0f} s; {machine_load()}")
        asks = [(shopper, exclude) for shopper in shoppers for exclude in (True, False)]
        for changes in [{}, *variants]:
            print(f"\nsettings: {changes or 'as configured'}")
            overrides = {"redis.url": server.url}
            overrides |= {
                key if "." in key else f"recommend.{key}": value for key, value in changes.items()
            }
            varied = load_settings(overrides=overrides)
            recommend = build_services(client, Keyspace(NAMESPACE), varied).recommend
            if warm:
                await _warm_neighbours(recommend)
            await _forget_kept_lists(recommend, shoppers)
            await _measure(client, recommend, asks)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200, help="users asked for (x2 requests)")
    parser.add_argument("--cutoff", default="2011-07-01", help="history before this day (UTC)")
    parser.add_argument(
        "--variant", type=_variant, action="append", default=[], metavar="KEY=VALUE[,...]",
        help="also measure with these settings changed (repeatable; KEY alone: [recommend])",
    )  # fmt: skip
    parser.add_argument(
        "--warm", action="store_true",
        help="first cache every product's neighbour list (and every vector, if held), as a"
        " service's caches are after a while",
    )  # fmt: skip
    args = parser.parse_args()
    cutoff = datetime.strptime(args.cutoff, "%Y-%m-%d").replace(tzinfo=UTC)
    # BLAS on one thread, as in the service's processes (its lifespan): a second thread spins
    # after each matrix product and its CPU would count as the request's.
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        asyncio.run(measure(args.users, cutoff, args.variant, args.warm))


if __name__ == "__main__":
    main()
