"""Freshness: time from a product write's HTTP response to its effect on /similar.

    python -m benchmarks.freshness [--trials 300] [--seed 0]

How:
1. Start the real service as a subprocess (`python -m recommender serve --port P --data-dir D`,
   access log off), which starts its own embedded Redis in a temporary D, and import the
   CrowdFlower catalog through `POST /api/v1/products/batch` (500 per request).
2. Settle: `POST /api/v1/admin/model/refit?wait=true` (retried while another refit runs), then
   wait until the indexer consumer has caught up (read from the service's Redis: the catalog
   stream's `indexer` group has been delivered the last entry and has nothing pending), no
   refit is building and none is due, and the live index holds the whole catalog.
3. Baseline: the round trip of one `GET /api/v1/products/{id}/similar?k=10&min_score=0`.
4. Trials, one at a time, each timed from the write's HTTP response:
   - create: `POST /api/v1/products` of a copy of a random product's text under a new id (price
     10), until the copy is among the original's similar products;
   - stock: `PATCH {"in_stock": false}` on a third of the copies, until it is gone;
   - price: `PATCH {"price": 1000}` on another third, with `max_price=100` on the GETs, until
     it is gone;
   - delete: `DELETE` of the last third, until it is gone.
   Trials alternate between two observers. `similar`: `GET .../{original}/similar?k=10&
   min_score=0` back to back, as fast as one client can, until a response shows the effect;
   the time runs to that response's arrival, so it overstates the delay by up to one GET round
   trip (the baseline), which is the resolution of this observer. `index`: the service's Redis
   polled directly (HGET of the live vector document's `version`; EXISTS for a delete) until the
   guarded write of the new version has landed; RediSearch indexes a hash as it is written, so
   from then on every query sees it. Its resolution is one Redis round trip.

The load generator, the service and its Redis share the machine; the one-minute load average is
printed because other work on a 2-core machine moves every figure.
"""

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import redis.asyncio as aioredis

from benchmarks.support import (
    batches,
    consumer_caught_up,
    describe_ms,
    load_crowdflower,
    machine_load,
    wait_indexed,
)
from recommender.catalog import CatalogRepository
from recommender.config import load_settings
from recommender.platform.embedded import socket_path
from recommender.platform.redis import Keyspace
from recommender.vectors import VectorIndex
from recommender.vectors.consumer import GROUP

IMPORT_BATCH = 500
START_SECONDS = 60.0
SETTLE_SECONDS = 600.0
TRIAL_SECONDS = 10.0
BASELINE_REQUESTS = 300
COPY_PRICE = 10.0
RAISED_PRICE = 1000.0
PRICE_CEILING = 100.0


OBSERVERS = ("similar", "index")
REFIT_EVENTS = ("refit_started", "refit_finished", "refit_skipped", "refit_failed")


@dataclass(slots=True)
class Trials:
    """Seconds from each write's response to its effect, and the writes that never showed."""

    name: str
    observer: str
    seconds: list[float] = field(default_factory=list)
    polls: list[int] = field(default_factory=list)
    write_seconds: list[float] = field(default_factory=list)
    missed: int = 0

    def record(self, outcome: tuple[float, int] | None, write_seconds: float) -> None:
        self.write_seconds.append(write_seconds)
        if outcome is None:
            self.missed += 1
            return
        self.seconds.append(outcome[0])
        self.polls.append(outcome[1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Service:
    """The service as a subprocess with its own embedded Redis; stopped with SIGTERM."""

    def __init__(self, work: Path) -> None:
        self.data_dir = work / "data"
        self.log = work / "service.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        command = [
            sys.executable, "-m", "recommender", "serve",
            "--port", str(self.port), "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        env = {**os.environ, "RECOMMENDER_LOGGING__ACCESS_LOG": "false"}
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + START_SECONDS
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the service exited: {self.log_tail()}")
                try:
                    if (await client.get("/health/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the service was not ready within {START_SECONDS:g}s")

    async def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 60)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self.process = None

    def refits(self) -> str:
        """What the service's log says about refits so far (its INFO lines, JSON or console)."""
        text = self.log.read_text(errors="replace")
        counts = {event: text.count(event) for event in REFIT_EVENTS}
        return ", ".join(f"{count} {event}" for event, count in counts.items())

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        return " | ".join(lines) or "no output"


async def similar_ids(client: httpx.AsyncClient, product_id: str, **params: Any) -> list[str]:
    response = await client.get(
        f"/api/v1/products/{product_id}/similar", params={"k": 10, "min_score": 0, **params}
    )
    response.raise_for_status()
    body: Any = msgspec.json.decode(response.content)
    return [item["id"] for item in body["items"]]


async def import_catalog(client: httpx.AsyncClient, products: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for batch in batches(products, IMPORT_BATCH):
        response = await client.post("/api/v1/products/batch", json={"items": list(batch)})
        response.raise_for_status()
        if response.json()["rejected"]:
            raise RuntimeError(f"products rejected: {response.text[:500]}")
    return time.perf_counter() - started


async def describe_model(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/v1/admin/model")
    response.raise_for_status()
    model: dict[str, Any] = response.json()
    return model


async def refit(client: httpx.AsyncClient) -> float:
    """Seconds of one admin refit, retried while another refit holds the lock."""
    started = time.perf_counter()
    while True:
        response = await client.post(
            "/api/v1/admin/model/refit", params={"wait": "true"}, timeout=600
        )
        if response.status_code != 409:
            response.raise_for_status()
            return time.perf_counter() - started
        await asyncio.sleep(1.0)


class Probe:
    """The HTTP client and a direct line to the service's Redis, on the live model version."""

    def __init__(self, client: httpx.AsyncClient, redis: "aioredis.Redis") -> None:
        self.client = client
        self.redis = redis
        settings = load_settings()  # what the service loaded: same directory and environment
        self.keys = Keyspace(settings.redis.namespace)
        self.index = VectorIndex(redis, self.keys, settings.vectors)
        self.stream = CatalogRepository(redis, self.keys).stream
        self.live = 0

    async def settle(self, products: int) -> dict[str, Any]:
        """Refit, then wait for a caught-up indexer, no refit building or due, a full index."""
        deadline = time.monotonic() + SETTLE_SECONDS
        print(f"refit after the import: {await refit(self.client):.1f} s")
        while time.monotonic() < deadline:
            model = await describe_model(self.client)
            caught_up = await consumer_caught_up(self.redis, self.stream, GROUP)
            if model["building"] is not None or not caught_up:
                await asyncio.sleep(0.5)
                continue
            if model["changes_since_fit"] >= model["refit_due_at_changes"]:
                print(
                    f"refit due again after the import's backlog: {await refit(self.client):.1f} s"
                )
                continue
            await wait_indexed(self.redis, self.index.alias, products)
            self.live = int(model["info"]["version"])
            return model
        raise TimeoutError(f"the service did not settle within {SETTLE_SECONDS:g}s")

    async def in_similar(
        self, original: str, product_id: str, present: bool, **params: Any
    ) -> tuple[float, int] | None:
        """(seconds, GETs) until `product_id` is (or is no longer) similar to `original`."""
        started = time.perf_counter()
        polls = 0
        while time.perf_counter() - started < TRIAL_SECONDS:
            ids = await similar_ids(self.client, original, **params)
            polls += 1
            if (product_id in ids) == present:
                return time.perf_counter() - started, polls
        return None

    async def in_index(self, product_id: str, version: int | None) -> tuple[float, int] | None:
        """(seconds, Redis reads) until the live vector document has `version` (None: gone)."""
        key = self.index.doc_key(self.live, product_id)
        expected = None if version is None else str(version).encode()
        started = time.perf_counter()
        polls = 0
        while time.perf_counter() - started < TRIAL_SECONDS:
            stored: Any = await self.redis.hget(key, "version")
            polls += 1
            if stored == expected:
                return time.perf_counter() - started, polls
        return None

    async def write(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[float, Any]:
        """(seconds, JSON body or None) of one write; raises on an error status."""
        started = time.perf_counter()
        response = await self.client.request(method, path, json=body)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        return seconds, response.json() if response.content else None

    async def run(self, products: list[dict[str, Any]], count: int, seed: int) -> list[Trials]:
        rng = np.random.default_rng(seed)
        originals = [products[i] for i in rng.choice(len(products), size=count, replace=False)]
        create = {observer: Trials("create -> appears", observer) for observer in OBSERVERS}
        copies: list[tuple[str, str]] = []  # (copy id, original id)
        for number, original in enumerate(originals):
            observer = OBSERVERS[number % 2]
            copy = f"fresh-{number:05d}"
            body = {
                "id": copy,
                "name": original["name"],
                "description": original.get("description", ""),
                "price": COPY_PRICE,
            }
            seconds, stored = await self.write("POST", "/api/v1/products", body)
            if observer == "similar":
                outcome = await self.in_similar(original["id"], copy, present=True)
            else:
                outcome = await self.in_index(copy, stored["version"])
            create[observer].record(outcome, seconds)
            copies.append((copy, original["id"]))

        changes: list[tuple[str, str, dict[str, Any] | None, dict[str, Any]]] = [
            ("in_stock=false -> gone", "PATCH", {"in_stock": False}, {}),
            (f"price {COPY_PRICE:g} -> {RAISED_PRICE:g} -> gone (max_price {PRICE_CEILING:g})",
             "PATCH", {"price": RAISED_PRICE}, {"max_price": PRICE_CEILING}),
            ("delete -> gone", "DELETE", None, {}),
        ]  # fmt: skip
        results = list(create.values())
        third = len(copies) // 3
        for part, (name, method, change, params) in enumerate(changes):
            trials = {observer: Trials(name, observer) for observer in OBSERVERS}
            for number, (copy, original) in enumerate(copies[part * third : (part + 1) * third]):
                observer = OBSERVERS[number % 2]
                if copy not in await similar_ids(self.client, original, **params):
                    raise RuntimeError(f"{copy} is not among {original}'s similar products")
                seconds, stored = await self.write(method, f"/api/v1/products/{copy}", change)
                if observer == "similar":
                    outcome = await self.in_similar(original, copy, present=False, **params)
                else:
                    outcome = await self.in_index(copy, stored["version"] if stored else None)
                trials[observer].record(outcome, seconds)
            results += trials.values()
        return results


async def baseline(
    client: httpx.AsyncClient, products: list[dict[str, Any]], seed: int
) -> list[float]:
    """Round trips of GET similar for random products."""
    rng = np.random.default_rng(seed + 1)
    seconds = []
    for index in rng.choice(len(products), size=BASELINE_REQUESTS, replace=False):
        started = time.perf_counter()
        await similar_ids(client, products[index]["id"])
        seconds.append(time.perf_counter() - started)
    return seconds


async def measure(work: Path, trials: int, seed: int) -> None:
    catalog = load_crowdflower(work)
    service = Service(work)
    print(f"machine at start: {machine_load()}")
    await service.start()
    try:
        redis = aioredis.Redis.from_url(f"unix://{socket_path(service.data_dir.resolve())}")
        async with httpx.AsyncClient(base_url=service.url, timeout=30.0) as client:
            probe = Probe(client, redis)
            seconds = await import_catalog(client, catalog.products)
            print(
                f"import: {len(catalog.products)} products over HTTP in {seconds:.1f} s "
                "(the indexer and any refit running meanwhile)"
            )
            model = await probe.settle(len(catalog.products))
            print(f"service log since start: {service.refits()}")
            print(
                f"settled: model v{probe.live} on {model['info']['documents']} products, "
                f"{model['changes_since_fit']} changes since its fit "
                f"(a refit is due at {model['refit_due_at_changes']})"
            )
            round_trips = await baseline(client, catalog.products, seed)
            results = await probe.run(catalog.products, trials, seed)
            after = await describe_model(client)
            round_trips += await baseline(client, catalog.products, seed + 1)
        await redis.aclose()
    finally:
        await service.stop()
    print(f"machine at end: {machine_load()}")
    if after["info"]["version"] != probe.live:
        print(f"WARNING: a refit (v{after['info']['version']}) happened during the trials")

    rtt = float(np.median(round_trips))
    print(f"\nbaseline: GET similar round trip        {describe_ms(round_trips)}")
    for result in results:
        seen = "in /similar (GET poll)" if result.observer == "similar" else "in the index (Redis)"
        total = result.missed + len(result.seconds)
        print(f"\n{result.name}, observed {seen}: missed {result.missed} of {total} "
              f"(not within {TRIAL_SECONDS:g} s)")  # fmt: skip
        print(f"  write response                       {describe_ms(result.write_seconds)}")
        print(f"  response -> effect                   {describe_ms(result.seconds)}")
        if result.seconds:
            median = float(np.median(result.seconds))
            print(
                f"  median = {median / rtt:.2f} GET similar round trips; polls until seen: "
                f"median {np.median(result.polls):.0f}, max {max(result.polls)}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials",
        type=int,
        default=300,
        help="products created; a third each is then restocked, repriced, "
        "deleted (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="choice of originals")
    args = parser.parse_args(argv)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp:
        asyncio.run(measure(Path(tmp), args.trials, args.seed))


if __name__ == "__main__":
    main()
