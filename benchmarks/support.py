"""Shared pieces of the benchmarks: the CrowdFlower catalog, a private Redis, waits and figures.

Every benchmark converts the real CrowdFlower data with `benchmarks.datasets.crowdflower` into
its own temporary directory, starts its own embedded Redis + RediSearch there (never the
developer's `./data`), and prints its figures; nothing here asserts a time.
"""

import asyncio
import csv
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis

from benchmarks.datasets import crowdflower
from recommender.config import EmbeddedRedisSettings, LoggingSettings
from recommender.platform.embedded import EmbeddedRedis
from recommender.platform.logging import configure_logging
from recommender.vectors.model import ProductText


@dataclass(frozen=True, slots=True)
class Catalog:
    """The CrowdFlower catalog as the API takes it, and the distinct search queries."""

    products: list[dict[str, Any]]
    queries: list[str]

    def texts(self) -> list[ProductText]:
        """The model's input for every product, in catalog order (as `product_text` builds it)."""
        return [
            ProductText(name=product["name"], description=product.get("description", ""))
            for product in self.products
        ]


def load_crowdflower(work_dir: Path) -> Catalog:
    """Convert the shared CrowdFlower file into `work_dir` and read the result back."""
    out_dir = work_dir / "crowdflower"
    crowdflower.convert(crowdflower.SOURCE, out_dir)
    with (out_dir / "products.jsonl").open("rb") as handle:
        products = [msgspec.json.decode(line) for line in handle]
    with (out_dir / "judgments.csv").open(encoding="utf-8", newline="") as handle:
        queries = sorted({row["query"] for row in csv.DictReader(handle)})
    return Catalog(products=products, queries=queries)


def quiet_logs() -> None:
    """Only warnings from the service's code, so the benchmark's own lines stay readable."""
    configure_logging(LoggingSettings(level="WARNING", format="console", access_log=False))


@contextmanager
def private_redis(data_dir: Path) -> Iterator[EmbeddedRedis]:
    """A fresh embedded Redis + RediSearch in `data_dir`, stopped on exit."""
    with EmbeddedRedis(EmbeddedRedisSettings(data_dir=str(data_dir))) as server:
        yield server


def machine_load() -> str:
    """The 1-minute load average against the core count: other work skews every figure."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def milliseconds(seconds: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(seconds, dtype=np.float64) * 1000.0


def describe_ms(seconds: Sequence[float]) -> str:
    """`p50 p95 p99 max mean` of durations given in seconds, printed in milliseconds."""
    if not seconds:
        return "no samples"
    values = milliseconds(seconds)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return (
        f"p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  p99 {p99:7.2f} ms  "
        f"max {values.max():7.2f} ms  mean {values.mean():7.2f} ms  (n={len(values)})"
    )


async def index_info(client: "aioredis.Redis", index: str) -> dict[str, Any]:
    info: Any = await client.ft(index).info()  # type: ignore[no-untyped-call]
    return dict(info)


async def wait_indexed(
    client: "aioredis.Redis", index: str, expected: int, patience: float = 300.0
) -> None:
    """Until FT.INFO reports `expected` documents and no background scan in progress."""
    deadline = time.monotonic() + patience
    while True:
        info = await index_info(client, index)
        if int(info["num_docs"]) >= expected and not int(info["indexing"]):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{index}: {info['num_docs']} of {expected} documents indexed")
        await asyncio.sleep(0.005)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def consumer_caught_up(client: "aioredis.Redis", stream: str, group: str) -> bool:
    """The group has been delivered the stream's last entry and has acknowledged everything.

    Compares ids rather than trusting XINFO's `lag`, which Redis cannot compute (nil) once a
    consumer has trimmed the stream.
    """
    info: Any = await client.xinfo_stream(stream)
    groups: Any = await client.xinfo_groups(stream)
    last = _text(info["last-generated-id"])
    return any(
        _text(entry["name"]) == group
        and _text(entry["last-delivered-id"]) == last
        and int(entry["pending"]) == 0
        for entry in groups
    )


async def wait_for_consumer(
    client: "aioredis.Redis", stream: str, group: str, patience: float = 300.0
) -> None:
    """Until the group has read every entry of the stream and acknowledged all it read."""
    deadline = time.monotonic() + patience
    while not await consumer_caught_up(client, stream, group):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stream}/{group} still has a backlog after {patience:g}s")
        await asyncio.sleep(0.005)
