"""Behaviour tracking on the real Online Retail history: ingest, aggregation, memory, freshness.

Run: `python -m benchmarks.tracking [--events N]`. It converts ../shared/data/online-retail,
starts the service (`recommender serve`) on a private data directory and a free port, imports
the catalog and the purchase history through the HTTP API, and prints:

- event ingest: events/s through `POST /api/v1/events` in batches of 500, beside raw pipelined
  XADD of the same events into a stream of the same Redis (the store's ceiling), same run;
- aggregation: events/s of the aggregator consumer (time until its lag and pending reach 0);
- memory: bytes of the aggregates per product and of the shopper data per user (MEMORY USAGE);
- freshness: from an event's response to a "for you" response that reflects it, p50/p99,
  beside the time of one "for you" request alone.
"""

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import msgspec
import redis.asyncio as aioredis

from benchmarks.datasets import online_retail
from benchmarks.support import batches, describe_ms, wait_for_consumer

BATCH = 500


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def load_data(work: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = work / "online-retail"
    online_retail.convert(online_retail.SOURCE, out)
    products, events = online_retail.read_converted(out)
    return products, events


def start_service(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RECOMMENDER_LOGGING__ACCESS_LOG": "false",
           "RECOMMENDER_LOGGING__LEVEL": "WARNING"}  # fmt: skip
    command = [sys.executable, "-m", "recommender", "serve", "--port", str(port),
               "--data-dir", str(data_dir)]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


def wait_ready(http: httpx.Client, patience: float = 60) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            if http.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the service did not become ready")


async def raw_xadd(url: str, events: list[dict[str, Any]]) -> float:
    """Seconds to XADD the same events, pipelined in the same batches, into a scratch stream."""
    client = aioredis.Redis.from_url(url)
    encoder = msgspec.json.Encoder()
    started = time.perf_counter()
    for batch in batches(events, BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for event in batch:
                pipe.xadd("bench:raw-events", {"event": encoder.encode(event)})
            await pipe.execute()
    elapsed = time.perf_counter() - started
    await client.delete("bench:raw-events")
    await client.aclose()
    return elapsed


async def memory_by_group(url: str, namespace: str) -> dict[str, int]:
    """Bytes per kind of key (history, bought, co, pop, trend, ...), by MEMORY USAGE."""
    client = aioredis.Redis.from_url(url)
    totals: dict[str, int] = defaultdict(int)
    async for key in client.scan_iter(match=f"{namespace}*", count=5000):
        kind = key.decode()[len(namespace) :].split(":", 1)[0]
        totals[kind] += int(await client.memory_usage(key, samples=0) or 0)
    await client.aclose()
    return dict(totals)


def freshness(http: httpx.Client, users: list[str], products: list[str], rounds: int) -> None:
    reflected, event_to_list, alone = [], [], []
    for user in random.sample(users, rounds):
        started = time.perf_counter()
        before = http.get(f"/api/v1/users/{user}/recommendations").json()["items"]
        alone.append(time.perf_counter() - started)
        product = random.choice(products)
        http.post("/api/v1/events", json={"type": "view", "user_id": user, "product_id": product})
        answered = time.perf_counter()
        after = http.get(f"/api/v1/users/{user}/recommendations").json()["items"]
        event_to_list.append(time.perf_counter() - answered)
        reflected.append(after != before)
    share = sum(reflected) / len(reflected)
    print(f"  event response -> 'for you' reflecting it: {describe_ms(event_to_list)}")
    print(f"  one 'for you' request alone (baseline):     {describe_ms(alone)}")
    print(f"  lists changed by the view on the very next request: {share:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=0, help="use only the first N events")
    parser.add_argument("--freshness-rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        work = Path(tmp)
        products, events = load_data(work)
        if args.events:
            events = events[: args.events]
        users = sorted({event["user_id"] for event in events})
        print(f"Online Retail: {len(products)} products, {len(events)} events, {len(users)} users")
        port = free_port()
        service = start_service(work / "data", port)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        try:
            wait_ready(http)
            started = time.perf_counter()
            for batch in batches(products, BATCH):
                http.post("/api/v1/products/batch", json={"items": list(batch)})
            print(f"products: {len(products) / (time.perf_counter() - started):,.0f}/s imported")

            started = time.perf_counter()
            for batch in batches(events, BATCH):
                response = http.post("/api/v1/events", json=list(batch))
                if response.json()["rejected"]:
                    print("  rejected:", response.json()["items"][:3])
            api_seconds = time.perf_counter() - started
            url = f"unix://{work / 'data' / 'redis.sock'}"
            client = aioredis.Redis.from_url(url)
            asyncio.run(wait_for_consumer(client, "rec:stream:behaviour", "aggregator", 1800))
            aggregated_seconds = time.perf_counter() - started
            raw_seconds = asyncio.run(raw_xadd(url, events))
            print("event ingest (batches of 500):")
            print(f"  POST /api/v1/events     {len(events) / api_seconds:10,.0f} events/s")
            print(f"  raw pipelined XADD      {len(events) / raw_seconds:10,.0f} events/s  "
                  f"(API at {raw_seconds / api_seconds:.1%} of it)")  # fmt: skip
            print(f"  aggregated (lag 0)      {len(events) / aggregated_seconds:10,.0f} events/s "
                  f"({aggregated_seconds:.1f} s from first POST)")  # fmt: skip

            memory = asyncio.run(memory_by_group(url, "rec:"))
            per_user = sum(memory.get(k, 0) for k in ("history", "bought", "cowindow"))
            per_product = sum(memory.get(k, 0) for k in ("co", "pop", "trend", "order"))
            print("memory (MEMORY USAGE, bytes):")
            for kind, size in sorted(memory.items(), key=lambda item: -item[1]):
                print(f"  {kind:12s} {size:14,d}")
            print(f"  shopper data per user:     {per_user / len(users):10,.0f} B")
            print(f"  aggregates per product:    {per_product / len(products):10,.0f} B")
            print("freshness (event -> 'for you'):")
            freshness(http, users, [p["id"] for p in products], args.freshness_rounds)
        finally:
            http.close()
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)


if __name__ == "__main__":
    main()
