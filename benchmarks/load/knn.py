"""The store's ceiling: raw RediSearch KNN queries through redis-py against the service's index.

The live index is the highest `{ns}idx:products:v{N}` in FT._LIST; the query vectors are the
stored ones (`{ns}vec:{N}:{id}`, field `embedding`) of the imported products, read before the
clock starts. The ceiling is a query as `VectorIndex.search` sends its vector side: in
stock, the product itself excluded, KNN 10 walking the HNSW graph in batches (HYBRID_POLICY
BATCHES) at the configured EF_RUNTIME, returning the stored JSON and the distance. (An
unfiltered `/similar` reads its neighbours from the process's cache, which `knn_ids` fills.) For
comparison, the same KNN without the filter (11 nearest, the product among them) is measured
next. A few asyncio tasks each send one query and await its answer (no pipelining), on their
own connections, until the time or the count runs out.

redis-py is a Python client on the same cores, so this runs with the service idle, never beside
the HTTP load; Redis's own CPU per query is reported as well, which does not depend on the client.
"""

import asyncio
import random
import resource
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis

from benchmarks.load.servers import TICKS_PER_SECOND, process_ticks
from recommender.vectors import Filters

K = 10
SAMPLE = 1000
# What a search's KNN sends after the query: the JSON and the distance, nearest first.
QUERY_OPTIONS = ("RETURN", 2, "doc", "distance", "SORTBY", "distance", "LIMIT", 0, K,
                 "PARAMS", 2, "vector")  # fmt: skip


class KnnCeiling(msgspec.Struct, kw_only=True):
    query: str  # which variant
    index: str
    ef_runtime: int
    tasks: int
    seconds: float
    queries: int
    qps: float
    p50_ms: float
    p99_ms: float
    redis_cpu_us_per_query: float
    redis_bound_qps: float  # 1 s / Redis CPU per query: one Redis core doing nothing else
    client_cpu_percent: float  # this process (the redis-py client), % of one core


def pick_live_index(names: list[bytes], namespace: str) -> tuple[str, int]:
    """The newest `{ns}idx:products:v{N}` of an FT._LIST answer, and its N."""
    prefix = f"{namespace}idx:products:v"
    versions = [
        int(name.decode()[len(prefix) :]) for name in names if name.decode().startswith(prefix)
    ]
    if not versions:
        raise RuntimeError(f"no {prefix}N index in FT._LIST: {names}")
    return f"{prefix}{max(versions)}", max(versions)


async def _query_vectors(
    client: "aioredis.Redis", namespace: str, version: int, ids: list[str]
) -> list[tuple[str, bytes]]:
    async with client.pipeline(transaction=False) as pipe:
        for product_id in ids:
            pipe.hget(f"{namespace}vec:{version}:{product_id}", "embedding")
        raw: list[Any] = await pipe.execute()
    # A product without a known term has a zero vector: `similar` answers it without a query.
    return [
        (product_id, blob)
        for product_id, blob in zip(ids, raw, strict=True)
        if blob is not None and np.any(np.frombuffer(blob, dtype=np.float32))
    ]


def _similar_query(product_id: str, ef_runtime: int) -> str:
    # As VectorIndex builds it for broad filters (stock, exclusions): HNSW walked in batches.
    where = Filters(in_stock=True, exclude=(product_id,)).clause()
    return (
        f"({where})=>[KNN {K} @embedding $vector EF_RUNTIME {ef_runtime} "
        "HYBRID_POLICY BATCHES AS distance]"
    )


def _unfiltered_query(_: str, ef_runtime: int) -> str:
    return f"*=>[KNN {K + 1} @embedding $vector EF_RUNTIME {ef_runtime} AS distance]"


VARIANTS: dict[str, Callable[[str, int], str]] = {
    "similar's query: in stock, itself excluded": _similar_query,
    "the same KNN unfiltered (for comparison)": _unfiltered_query,
}


async def measure(
    url: str,
    namespace: str,
    ef_runtime: int,
    product_ids: list[str],
    *,
    redis_pid: int,
    tasks: int,
    seconds: float,
    max_queries: int,
    seed: int,
) -> list[KnnCeiling]:
    """Each variant in turn, `seconds` (at most `max_queries` queries) each."""
    client = aioredis.Redis.from_url(url, max_connections=tasks)
    try:
        names: Any = await client.execute_command("FT._LIST")  # type: ignore[no-untyped-call]
        index, version = pick_live_index(names, namespace)
        sample = random.Random(seed).sample(product_ids, min(SAMPLE, len(product_ids)))
        vectors = await _query_vectors(client, namespace, version, sample)
        return [
            await _measure_one(
                client,
                label,
                make_query,
                index,
                vectors,
                ef_runtime,
                redis_pid=redis_pid,
                tasks=tasks,
                seconds=seconds,
                max_queries=max_queries,
            )
            for label, make_query in VARIANTS.items()
        ]
    finally:
        await client.aclose()


async def _measure_one(
    client: "aioredis.Redis",
    label: str,
    make_query: Callable[[str, int], str],
    index: str,
    vectors: list[tuple[str, bytes]],
    ef_runtime: int,
    *,
    redis_pid: int,
    tasks: int,
    seconds: float,
    max_queries: int,
) -> KnnCeiling:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        turn = offset
        while time.monotonic() < deadline and len(latencies) < max_queries:
            product_id, blob = vectors[turn % len(vectors)]
            turn += tasks
            query = make_query(product_id, ef_runtime)
            started = time.perf_counter()
            await client.execute_command(  # type: ignore[no-untyped-call]
                "FT.SEARCH", index, query, *QUERY_OPTIONS, blob, "DIALECT", 2
            )
            latencies.append(time.perf_counter() - started)

    redis_before = process_ticks(redis_pid) or 0
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    await asyncio.gather(*(worker(offset) for offset in range(tasks)))
    elapsed = time.monotonic() - started
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    redis_seconds = ((process_ticks(redis_pid) or 0) - redis_before) / TICKS_PER_SECOND
    client_seconds = (client_after.ru_utime - client_before.ru_utime) + (
        client_after.ru_stime - client_before.ru_stime
    )
    values = np.asarray(latencies) * 1000.0
    per_query = redis_seconds / len(latencies)
    return KnnCeiling(
        query=label,
        index=index,
        ef_runtime=ef_runtime,
        tasks=tasks,
        seconds=round(elapsed, 2),
        queries=len(latencies),
        qps=round(len(latencies) / elapsed, 1),
        p50_ms=round(float(np.percentile(values, 50)), 3),
        p99_ms=round(float(np.percentile(values, 99)), 3),
        redis_cpu_us_per_query=round(per_query * 1e6, 1),
        redis_bound_qps=round(1.0 / per_query, 1) if per_query else float("inf"),
        client_cpu_percent=round(100.0 * client_seconds / elapsed, 1),
    )
