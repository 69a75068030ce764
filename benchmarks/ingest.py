"""Products/s of a bulk catalog import through the service's write path, beside raw HSET.

    python -m benchmarks.ingest [--batch 500] [--rounds 2]

How (one private embedded Redis, the real CrowdFlower catalog, everything in this process):
1. Warm-up, not counted as ingest: `CatalogService.upsert_batch` of every product (batches of
   500, services from `services.build_services`), `VectorService.refit` (timed on its own: fit,
   back-fill, swap), then the indexer (a `StreamRunner` of group `indexer`, started in-process)
   until it has caught up with the import's events. From here on a model fitted on the whole
   catalog is live and its index is full: the steady state.
2. Each round, over the whole catalog:
   - `real split`: re-import every product as an update (same content, new version) with no
     consumer running (`catalog write`), then start the indexer and time until it has been
     delivered the stream's last entry and has nothing pending (`indexing`: re-read, embed,
     guarded write into the HNSW index, ack);
   - `real together`: re-import again with the indexer running, as in production, from the first
     batch until the indexer has caught up;
   - `guarded writes`: the indexer's Redis work alone, `VectorIndex.write` of every product with
     precomputed vectors in the indexer's batch size (no stream, no embedding);
   - baseline, raw pipelined HSET of the same documents (the live index's own hashes: the same
     precomputed vectors and fields) in batches of the same size into a fresh index of identical
     schema made by `VectorIndex.create` (timed once its initial keyspace scan is over), until
     FT.INFO reports every document indexed and no scan running (`raw fresh`); then the same
     again over the now-full index (`raw overwrite`, updates like the re-imports).
3. `embedding alone`: `model.embed` of every product in the indexer's batch size, once.

Refits triggered by change counts are off (`refit_change_fraction` at its maximum): a re-import
of the whole catalog would otherwise start one mid-measurement; its cost is the refit line.
Indexing and Redis share the machine's two cores with this process: the load average is printed
because other work moves every figure; compare the ratios within one run.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from benchmarks.support import (
    Catalog,
    batches,
    load_crowdflower,
    machine_load,
    private_redis,
    quiet_logs,
    wait_for_consumer,
    wait_indexed,
)
from recommender.config import RedisSettings, Settings, VectorSettings
from recommender.platform.redis import Keyspace, create_client
from recommender.platform.streams import StreamRunner
from recommender.services import Services, build_services
from recommender.vectors.consumer import GROUP
from recommender.vectors.model import Vectors
from recommender.vectors.service import product_text

NAMESPACE = "bench:"
# No automatic refit while measuring (the setting's maximum).
NO_AUTOMATIC_REFIT = 10.0


async def upsert_all(services: Services, products: list[dict[str, Any]], size: int) -> float:
    """Seconds to upsert every product, `size` per call, as `POST /products/batch` does."""
    started = time.perf_counter()
    for batch in batches(products, size):
        result = await services.catalog.upsert_batch(batch)
        if result.rejected:
            raise RuntimeError(f"{result.rejected} products rejected: {result.items[0]}")
    return time.perf_counter() - started


def indexer(services: Services) -> StreamRunner:
    """A new runner like the services' catalog `indexer` consumer (a stopped one cannot restart)."""
    model = next(
        runner
        for runner in services.runners
        if runner.stream == services.catalog.stream and runner.group == GROUP
    )
    return StreamRunner(
        model.client,
        stream=model.stream,
        group=model.group,
        handler=model.handler,
        dead_letter_stream=model.dead_letter_stream,
        settings=model.settings,
    )


async def drain_indexer(client: "aioredis.Redis", services: Services) -> float:
    """Start the indexer, wait until its backlog is gone, stop it; seconds until drained."""
    runner = indexer(services)
    started = time.perf_counter()
    runner.start()
    try:
        await wait_for_consumer(client, services.catalog.stream, GROUP)
        return time.perf_counter() - started
    finally:
        await runner.stop()


async def import_together(
    client: "aioredis.Redis", services: Services, products: list[dict[str, Any]], size: int
) -> float:
    """Seconds from the first upsert, with the indexer running, until it has caught up."""
    runner = indexer(services)
    started = time.perf_counter()
    runner.start()
    try:
        await upsert_all(services, products, size)
        await wait_for_consumer(client, services.catalog.stream, GROUP)
        return time.perf_counter() - started
    finally:
        await runner.stop()


async def raw_hset(
    client: "aioredis.Redis", documents: list[tuple[str, dict[bytes, bytes]]], size: int
) -> float:
    """Seconds to HSET every document, `size` per pipeline round trip."""
    started = time.perf_counter()
    for batch in batches(documents, size):
        async with client.pipeline(transaction=False) as pipe:
            for key, fields in batch:
                pipe.hset(key, mapping=fields)
            await pipe.execute()
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the baselines replay, taken from the steady state once (not timed)."""

    live: int
    ids: list[str]
    vectors: Vectors  # the live model's embedding of every product, in `ids` order
    documents: list[dict[bytes, bytes]]  # the live index's hash of every product
    embed_seconds: float  # model.embed of every product in the indexer's batch size


async def prepare(services: Services, ids: list[str], batch: int) -> Prepared:
    live, model = await services.vectors.live_model()
    stored = await services.catalog.get_many(ids)
    texts = [product_text(product) for product in stored if product is not None]
    started = time.perf_counter()
    vectors = np.concatenate([model.embed(chunk) for chunk in batches(texts, batch)])
    embed_seconds = time.perf_counter() - started
    index = services.vectors.index
    async with index.client.pipeline(transaction=False) as pipe:
        for product_id in ids:
            pipe.hgetall(index.doc_key(live, product_id))
        documents: list[dict[bytes, bytes]] = await pipe.execute()
    if len(texts) != len(ids) or not all(documents):
        raise RuntimeError("the warm-up left products without a vector document")
    return Prepared(live, ids, vectors, documents, embed_seconds)


async def guarded_writes(services: Services, prepared: Prepared, batch: int) -> float:
    """Seconds of `VectorIndex.write` of every product's current version, `batch` per call."""
    stored = await services.catalog.get_many(prepared.ids)
    products = [product for product in stored if product is not None]
    index, key = services.vectors.index, services.catalog.product_key
    started = time.perf_counter()
    for start in range(0, len(products), batch):
        chunk = products[start : start + batch]
        vectors = prepared.vectors[start : start + batch]
        written = await index.write(prepared.live, key, chunk, vectors, live=True)
        if set(written) != {1}:
            raise RuntimeError(f"guarded writes did not all land: {sorted(set(written))}")
    return time.perf_counter() - started


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} ({seconds:.2f} s)"


@dataclass(frozen=True, slots=True)
class Round:
    """Seconds of each pass of one round over the whole catalog."""

    write: float
    index: float
    together: float
    guarded: float
    raw_fresh: float
    raw_overwrite: float
    scan: float  # FT.CREATE of the baseline's index until its keyspace scan finished

    @property
    def split(self) -> float:
        return self.write + self.index

    def passes(self) -> tuple[float, ...]:
        return (self.write, self.index, self.split, self.together, self.guarded,
                self.raw_fresh, self.raw_overwrite)  # fmt: skip


COLUMNS = ("catalog write", "indexing", "real split", "real together", "guarded writes",
           "raw fresh", "raw overwrite")  # fmt: skip


async def measure_round(
    client: "aioredis.Redis",
    services: Services,
    products: list[dict[str, Any]],
    prepared: Prepared,
    fresh: int,
    sizes: tuple[int, int],
) -> Round:
    """The real path twice (split, then together), its writes alone, raw HSET into `fresh`."""
    size, indexer_batch = sizes
    write = await upsert_all(services, products, size)
    index_seconds = await drain_indexer(client, services)
    together = await import_together(client, services, products, size)
    guarded = await guarded_writes(services, prepared, indexer_batch)
    index = services.vectors.index
    started = time.perf_counter()
    await index.create(fresh)
    await wait_indexed(client, index.name(fresh), 0)
    scan = time.perf_counter() - started
    documents = zip(prepared.ids, prepared.documents, strict=True)
    pairs = [(index.doc_key(fresh, product_id), doc) for product_id, doc in documents]
    raw: list[float] = []
    for _ in ("fresh", "overwrite"):
        started = time.perf_counter()
        await raw_hset(client, pairs, size)
        await wait_indexed(client, index.name(fresh), len(pairs))
        raw.append(time.perf_counter() - started)
    await index.drop(fresh)
    return Round(write, index_seconds, together, guarded, raw[0], raw[1], scan)


async def measure(client: "aioredis.Redis", catalog: Catalog, size: int, rounds: int) -> None:
    settings = Settings(
        redis=RedisSettings(namespace=NAMESPACE),
        vectors=VectorSettings(refit_change_fraction=NO_AUTOMATIC_REFIT),
    )
    services = build_services(client, Keyspace(NAMESPACE), settings)
    products = catalog.products
    count = len(products)
    indexer_batch = settings.streams.batch_size
    print(f"machine at start: {machine_load()}")

    first_write = await upsert_all(services, products, size)
    started = time.perf_counter()
    info = await services.vectors.refit(reason="benchmark")
    refit_seconds = time.perf_counter() - started
    first_index = await drain_indexer(client, services)
    print(
        f"warm-up: import {first_write:.1f} s; refit (fit on {info.documents} products, "
        f"back-fill, swap) {refit_seconds:.1f} s; indexer through the import's events "
        f"{first_index:.1f} s"
    )
    prepared = await prepare(services, [product["id"] for product in products], indexer_batch)

    print(f"\n{count} products per pass, upsert and HSET batches of {size}, indexer batches of "
          f"{indexer_batch}; products/s (seconds)")  # fmt: skip
    print(f"{'round':<6}" + "".join(f"{column:>20}" for column in COLUMNS))
    results: list[Round] = []
    for number in range(1, rounds + 1):
        # A version number no refit here will reach: the raw baseline's own index.
        fresh = info.version + 1000 + number
        result = await measure_round(
            client, services, products, prepared, fresh, (size, indexer_batch)
        )
        results.append(result)
        print(f"{number:<6}" + "".join(f"{rate(count, s):>20}" for s in result.passes()))
    print(f"machine at end: {machine_load()}")
    keys: int = await client.dbsize()

    def median(name: str) -> float:
        return float(statistics.median(getattr(result, name) for result in results))

    split, index_seconds, embed = median("split"), median("index"), prepared.embed_seconds
    raw_fresh, raw_overwrite, together = (
        median("raw_fresh"),
        median("raw_overwrite"),
        median("together"),
    )
    print(f"\nmedians over {rounds} round(s):")
    shares = ", ".join(f"{r.raw_overwrite / r.split:.2f}/{r.raw_overwrite / r.together:.2f}"
                       for r in results)  # fmt: skip
    print(f"  per round, real split/together throughput as a share of raw overwrite: {shares}")
    print(
        f"  real throughput as a share of raw HSET overwrite: split {raw_overwrite / split:.3f}, "
        f"together {raw_overwrite / together:.3f} (of raw fresh: split {raw_fresh / split:.3f}, "
        f"together {raw_fresh / together:.3f})"
    )
    print(
        f"  real split: catalog write {median('write'):.2f} s ({median('write') / split:.0%}), "
        f"indexing {index_seconds:.2f} s ({index_seconds / split:.0%})"
    )
    print(
        f"  FT.CREATE of the baseline's empty index: {median('scan'):.2f} s until FT.INFO stops "
        f"reporting `indexing` (it scans all {keys:,} keys of the database; not in the times above)"
    )
    rest = index_seconds - embed - median("guarded")
    print(
        f"  indexing: embedding alone {embed:.2f} s ({embed / index_seconds:.0%}), guarded writes "
        f"alone {median('guarded'):.2f} s ({median('guarded') / index_seconds:.0%}), the rest "
        f"(stream read and ack, re-reading products, bookkeeping, waiting) {rest:.2f} s"
    )


async def run(size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        catalog = load_crowdflower(work)
        with private_redis(work / "redis") as server:
            client = create_client(RedisSettings(), server.url)
            try:
                await measure(client, catalog, size, rounds)
            finally:
                await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500, help="products per upsert_batch call")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (default: 2)")
    args = parser.parse_args(argv)
    quiet_logs()
    asyncio.run(run(args.batch, args.rounds))


if __name__ == "__main__":
    main()
