"""Fault drills: kill, stop and double the service under load, then count what survived.

    python -m benchmarks.faults [DRILL ...] [--work-dir DIR]    (default: every drill, in order)

Every drill starts the real service as subprocesses (`python -m recommender serve --port P
--data-dir D`, access log off, JSON logs into the work directory) on a private temporary data
directory, sends its traffic to 127.0.0.1 only, and reads the service's Redis directly through
the unix socket in D (key names from the project's own repositories). It prints each step and
each check (PASS/FAIL with its numbers), and leaves no process behind; a table ends the run.
Every loop is bounded in count and in time. Every drill also checks the service logs: no
unhandled error, failed refit or dead-lettered entry.

kill-import
    POST 10,000 products (the CrowdFlower catalog, topped up with "(2-pack)" variants) to
    /api/v1/products/batch, 100 a request, remembering every id and version acknowledged
    (created/updated). Once 40% are acknowledged, SIGKILL the service while the next request is
    in flight; check its embedded redis-server goes too; restart on the same data directory and
    send the in-flight batch again (a client retry) and the rest. The restarted service has the
    refits a changing catalog triggers pushed out of reach (vectors.refit_min_interval_seconds),
    so no routine back-fill can hide a catalog event the indexer lost; a refit replacing one
    the kill interrupted (or the first) still runs. When the catalog stream's `indexer` group
    has read and acknowledged everything, within 300 s there must be a live model and no refit
    left half-built (GET /api/v1/admin/model: `building`); every acknowledged product answers
    GET 200 at its acknowledged version; every stored product's vector document in the live
    index (`{ns}vec:{live}:{id}`) has the product's version; no vector document exists for a
    product that does not; /similar says `embedded` for a sample.
kill-events
    POST 50,000 `view` events with unique event ids, 500 a request; SIGKILL at 40% with the next
    request in flight; restart; send that batch again and the rest. When the behaviour stream's
    `aggregator` group has caught up, the popularity day buckets (`{ns}pop:{day}`, weight 1 a
    view) must sum to the number of distinct acknowledged event ids: each counted exactly once.
kill-redis
    Under a light steady load (2 readers: GET /api/v1/popular and /similar; 1 writer: products
    and events), SIGKILL the embedded redis-server (pid in D/redis.pid). While it is down:
    requests must fail fast (503 with a JSON error, or succeed once it is back; max latency
    against the bound the Redis client settings give) and /health/ready must answer 503 naming
    redis. The service must start redis-server again by itself (its watchdog) within 30 s; if
    it does not, the check fails and the drill starts it with the arguments the launcher gave
    it (read from the live server before the kill: CONFIG GET, MODULE LIST) to measure the
    rest. Then: the time until /health/ready is 200 and reads succeed. Writes acknowledged
    more than 1 s before the kill must survive (AOF, appendfsync everysec): products by GET,
    events by sending them again (a stored event answers `duplicate`).
sigterm-under-load
    2 product writers (50 a request, each its half of the catalog, over again as updates once
    through) and 2 event writers (200 a request) post continuously; after 6 s, SIGTERM the
    service the moment a refit is fitting its model (it logged refit_started and builds no
    index yet; at most 60 s more). The process must exit 0 within
    server.graceful_shutdown_seconds and take its redis-server with it; every request sent
    before the signal must be answered or have stored nothing. Restart, note the entries the
    stopped consumers left pending, send the unanswered batches again, and check every
    acknowledged product stored and indexed and every acknowledged event counted once.
two-processes
    Two `serve` processes on one data directory, different ports: the second must join the
    first's Redis. 3,000 products and 20,000 events are posted to both at once (alternate
    batches). Each event is counted once (as in kill-events); each product stored and indexed;
    the two processes' `recommender_stream_processed_total` add up to the entries the streams
    received (each entry handled by one consumer, once). Then `POST /api/v1/admin/model/refit`
    goes to both at the same moment, without and with `?wait=true`: exactly one refit may run
    (counted in both logs). Last, the owner process is stopped first, to show what the other
    one is left with.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from benchmarks.support import batches, consumer_caught_up, load_crowdflower, machine_load
from recommender.catalog import CatalogRepository
from recommender.config import Settings, load_settings
from recommender.platform.embedded import socket_path
from recommender.platform.redis import Keyspace
from recommender.tracking import TrackingRepository
from recommender.tracking.consumer import GROUP as AGGREGATOR
from recommender.vectors import ModelStore, VectorIndex
from recommender.vectors.consumer import GROUP as INDEXER

HOST = "127.0.0.1"
PRODUCTS_PATH = "/api/v1/products/batch"
EVENTS_PATH = "/api/v1/events"
START_SECONDS = 180.0  # a shared 2-core machine: start-up, AOF replay, first refit
STOP_SECONDS = 90.0
SETTLE_SECONDS = 900.0  # includes streams.claim_idle_ms before a dead consumer's entries move
MODEL_PATIENCE = 300.0  # after a restart: a live model, no refit half-built
RETRIES = 5  # a client's attempts at one batch before the drill gives up
WRITER_REQUESTS = 2000  # most requests one writer of sigterm-under-load sends
CHECK_CONCURRENCY = 16
SIMILAR_SAMPLE = 50
KILL_FRACTION = 0.4
AOF_WINDOW_SECONDS = 1.0  # appendfsync everysec: only writes this recent may be lost
# The restarted service of kill-import must not refit on its own: see the module docstring.
NO_AUTOMATIC_REFIT = {"RECOMMENDER_VECTORS__REFIT_MIN_INTERVAL_SECONDS": "86400"}

Item = dict[str, Any]


class DrillError(Exception):
    """The drill could not go on (the service did not start, a batch kept failing)."""


# What ends a drill early, as a FAIL with the reason, so the next drill still runs.
ABORTS = (DrillError, httpx.HTTPError, RedisError)


# -- reporting ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    drill: str
    how: str
    failures: list[str]
    lost: str

    @property
    def passed(self) -> bool:
        return not self.failures


class Drill:
    """One drill's printed account: steps, checks, and what was lost."""

    def __init__(self, name: str, how: str) -> None:
        self.name = name
        self.how = how
        self.failures: list[str] = []
        self.lost = "not measured"
        print(f"\n== {name}: {how}", flush=True)

    def step(self, text: str) -> None:
        print(f"  {time.strftime('%H:%M:%S')}  {text}", flush=True)

    def check(self, ok: bool, text: str) -> None:
        print(f"  {'PASS' if ok else 'FAIL'}      {text}", flush=True)
        if not ok:
            self.failures.append(text)

    def outcome(self) -> Outcome:
        verdict = "PASS" if not self.failures else f"FAIL ({len(self.failures)} checks)"
        print(f"  => {self.name}: {verdict}; lost: {self.lost}", flush=True)
        return Outcome(self.name, self.how, list(self.failures), self.lost)


def print_table(outcomes: Sequence[Outcome]) -> None:
    rows = [("drill", "how", "outcome", "lost")]
    rows += [(o.drill, o.how, "PASS" if o.passed else "FAIL", o.lost) for o in outcomes]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    rows.insert(1, tuple("-" * width for width in widths))
    print()
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# -- the service and its Redis --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def redis_servers(data_dir: Path) -> list[int]:
    """Live redis-server processes on this data directory's socket (Redis shows it in its title)."""
    wanted = str(socket_path(data_dir.resolve())).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if b"redis-server" in cmdline and wanted in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def redis_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


async def wait_until(
    condition: Callable[[], Awaitable[bool]], patience: float, poll: float = 0.2
) -> float | None:
    """Seconds until `condition()` held, or None when it did not within `patience`."""
    started = time.monotonic()
    while time.monotonic() - started < patience:
        if await condition():
            return time.monotonic() - started
        await asyncio.sleep(poll)
    return None


class Service:
    """`python -m recommender serve` as a subprocess on one data directory, logging JSON."""

    def __init__(self, data_dir: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.env = {
            **os.environ,
            "RECOMMENDER_LOGGING__ACCESS_LOG": "false",
            "RECOMMENDER_LOGGING__FORMAT": "json",
            "RECOMMENDER_LOGGING__LEVEL": "INFO",
            **(env or {}),
        }
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> float:
        """Launch, then wait for /health/ready 200; the seconds that took."""
        started = time.monotonic()
        command = [
            sys.executable, "-m", "recommender", "serve",
            "--port", str(self.port), "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        with self.log.open("ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=self.env
            )
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() - started < START_SECONDS:
                if self.process.returncode is not None:
                    raise DrillError(f"the service exited with {self.process.returncode}: "
                                     f"{self.log_tail()}")  # fmt: skip
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health/ready")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.2)
        raise DrillError(f"the service was not ready within {START_SECONDS:g} s")

    async def kill(self) -> None:
        if self.process is not None and self.running:
            self.process.kill()
            await self.process.wait()

    async def terminate(self) -> tuple[int | None, float]:
        """SIGTERM; (exit status, seconds to exit), or (None, ...) if it had to be killed."""
        if self.process is None:
            return None, 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), STOP_SECONDS)
        except TimeoutError:
            await self.kill()
            return None, time.monotonic() - started
        return code, time.monotonic() - started

    def log_offset(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_count(self, event: str, since: int = 0) -> int:
        """How many JSON log lines since byte `since` have this `event`."""
        with self.log.open("rb") as handle:
            handle.seek(since)
            lines = handle.read().splitlines()
        count = 0
        for line in lines:
            with contextlib.suppress(ValueError):
                count += json.loads(line).get("event") == event
        return count

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        return " | ".join(lines) or "no output"


class Store:
    """The service's Redis, read directly through the unix socket in its data directory."""

    def __init__(self, data_dir: Path, settings: Settings) -> None:
        self.redis = aioredis.Redis(
            unix_socket_path=str(socket_path(data_dir.resolve())), socket_timeout=10
        )
        keys = Keyspace(settings.redis.namespace)
        self.catalog = CatalogRepository(self.redis, keys)
        self.index = VectorIndex(self.redis, keys, settings.vectors)
        self.tracking = TrackingRepository(self.redis, keys)
        self.models = ModelStore(self.redis, keys)
        self.popularity_days = keys.key("pop", "days")  # see tracking/repository.py

    async def close(self) -> None:
        await self.redis.aclose()

    async def caught_up(self, stream: str, group: str) -> bool:
        """The group read and acknowledged every entry (a stream never written counts as read)."""
        try:
            return await consumer_caught_up(self.redis, stream, group)
        except ResponseError as error:
            if "no such key" in str(error):
                return True
            raise

    async def pending_of(self, stream: str, group: str, pid: int) -> int:
        """Entries still pending for the consumers of one process (their names hold its pid)."""
        consumers: Any = await self.redis.xinfo_consumers(stream, group)
        return sum(
            int(consumer["pending"])
            for consumer in consumers
            if f"-{pid}-" in _text(consumer["name"])
        )

    async def entries_added(self, stream: str) -> int:
        info: Any = await self.redis.xinfo_stream(stream)
        return int(info["entries-added"])

    async def product_ids(self) -> list[str]:
        raw: Any = await self.redis.zrange(self.catalog.ids_key, 0, -1)
        return [_text(product_id) for product_id in raw]

    async def stored_versions(self, ids: Sequence[str]) -> list[int | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for product_id in ids:
                pipe.hget(self.catalog.product_key(product_id), "version")
            raw: list[Any] = await pipe.execute()
        return [None if value is None else int(value) for value in raw]

    async def orphan_vectors(self, version: int) -> list[str]:
        """Ids with a vector document in this version's index and no product."""
        prefix = self.index.prefix(version)
        pattern = Keyspace.escape(prefix) + "*"
        ids = [_text(key)[len(prefix) :] async for key in self.redis.scan_iter(pattern, 1000)]
        stored = await self.stored_versions(ids)
        return [product_id for product_id, v in zip(ids, stored, strict=True) if v is None]

    async def popularity_total(self) -> float:
        """Sum of every shop-wide popularity day bucket (category buckets left out)."""
        days: Any = await self.redis.zrange(self.popularity_days, 0, -1, withscores=True)
        total = 0.0
        for key, day in days:
            if _text(key) != self.tracking.popularity_key(int(day)):
                continue
            members: Any = await self.redis.zrange(key, 0, -1, withscores=True)
            total += sum(score for _, score in members)
        return total

    async def launch_command(self) -> list[str]:
        """The running server's command line as EmbeddedRedis._launch built it."""
        executable = (await self.redis.info("server"))["executable"]
        command = [str(executable)]
        for name in ("port", "unixsocket", "unixsocketperm", "dir", "pidfile", "logfile",
                     "appendonly", "appendfsync", "save"):  # fmt: skip
            value: Any = await self.redis.config_get(name)
            command += [f"--{name}", str(value[name])]
        modules: Any = await self.redis.module_list()
        for module in modules:
            if module[b"path"]:
                command += ["--loadmodule", _text(module[b"path"])]
        return command

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except RedisError:
            return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextlib.asynccontextmanager
async def drill_resources(data_dir: Path, services: Sequence[Service]) -> AsyncIterator[Store]:
    """A Store on the data directory; on the way out, no service and no redis-server is left."""
    store = Store(data_dir, load_settings())
    try:
        yield store
    finally:
        await store.close()
        for service in services:
            await service.kill()  # its redis-server gets SIGTERM (PR_SET_PDEATHSIG)

        async def no_redis() -> bool:
            return not redis_servers(data_dir)

        if await wait_until(no_redis, 30.0) is None:
            for pid in redis_servers(data_dir):
                print(f"  cleanup: redis-server {pid} still running; SIGTERM", flush=True)
                os.kill(pid, signal.SIGTERM)


@contextlib.asynccontextmanager
async def watch_liveness(drill: Drill, service: Service) -> AsyncIterator[None]:
    """GET /health/live every 0.5 s meanwhile; report the longest round trip. The route touches
    nothing but the event loop, so its delays are the loop's stalls (a fit in a worker thread
    holding the GIL, say); a liveness probe with a 1 s timeout would fail on longer ones."""
    stop = asyncio.Event()
    round_trips: list[float] = []

    async def probe() -> None:
        async with http(service, patience=60.0) as client:
            while not stop.is_set():
                started = time.monotonic()
                with contextlib.suppress(httpx.TransportError):
                    await client.get("/health/live")
                round_trips.append(time.monotonic() - started)
                await asyncio.sleep(0.5)

    task = asyncio.create_task(probe())
    try:
        yield
    finally:
        stop.set()
        await task
        slow = sum(seconds > 1.0 for seconds in round_trips)
        drill.step(
            f"GET /health/live every 0.5 s meanwhile: longest {max(round_trips, default=0):.2f} s,"
            f" {slow} of {len(round_trips)} over 1 s"
        )


@contextlib.asynccontextmanager
async def http(service: Service, patience: float = 120.0) -> AsyncIterator[httpx.AsyncClient]:
    """A client for one incarnation of the service (no keep-alive connection outlives it)."""
    # Idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them, so no
    # request races the server's close.
    limits = httpx.Limits(keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=service.url, timeout=patience, limits=limits) as client:
        yield client


# -- sending batches ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What one batch request got back."""

    acked: dict[str, int]  # product id -> acknowledged version; event id -> 0
    duplicates: int = 0  # events the service already had
    rejected: int = 0
    error: str = ""  # no answer: the transport error, or the error status and its JSON code
    status: int = 0  # 0: no response
    seconds: float = 0.0


async def send(client: httpx.AsyncClient, kind: str, items: Sequence[Item]) -> Answer:
    """POST one batch of products or events; what the API acknowledged."""
    started = time.perf_counter()
    try:
        if kind == "products":
            response = await client.post(PRODUCTS_PATH, json={"items": list(items)})
        else:
            response = await client.post(EVENTS_PATH, json=list(items))
    except httpx.TransportError as error:
        return Answer({}, error=type(error).__name__, seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    status = response.status_code
    if not response.is_success:
        return Answer({}, error=f"{status} {error_code(response)}", status=status, seconds=seconds)
    body = response.json()
    if kind == "products":
        acked = {
            item["id"]: int(item["version"])
            for item in body["items"]
            if item["status"] in ("created", "updated")
        }
        return Answer(acked, rejected=body["rejected"], status=status, seconds=seconds)
    acked = {
        item["event_id"]: 0 for item in body["items"] if item["status"] in ("accepted", "duplicate")
    }
    return Answer(acked, body["duplicates"], body["rejected"], status=status, seconds=seconds)


def error_code(response: httpx.Response) -> str:
    """The `error` of a JSON error body, or what is wrong with the body."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return "no JSON error body"


@dataclass(slots=True)
class Ledger:
    """Everything the API acknowledged, latest version per product."""

    acked: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    rejected: int = 0
    requests: int = 0

    def record(self, answer: Answer) -> None:
        self.acked.update(answer.acked)
        self.duplicates += answer.duplicates
        self.rejected += answer.rejected
        self.requests += 1


async def feed(
    client: httpx.AsyncClient, kind: str, chunks: Sequence[Sequence[Item]], ledger: Ledger
) -> int:
    """Send every chunk, each retried on failure like a client would; how many retries."""
    retries = 0
    for chunk in chunks:
        for _ in range(RETRIES):
            answer = await send(client, kind, chunk)
            if not answer.error:
                ledger.record(answer)
                break
            retries += 1
            await asyncio.sleep(1.0)
        else:
            raise DrillError(f"a batch of {kind} failed {RETRIES} times: {answer.error}")
    return retries


async def feed_until_kill(
    drill: Drill,
    service: Service,
    client: httpx.AsyncClient,
    kind: str,
    chunks: Sequence[Sequence[Item]],
    ledger: Ledger,
    kill_after: int,
) -> int:
    """Send chunks until `kill_after` items are acknowledged, then SIGKILL the service while the
    next one is in flight (a quarter of a median request after sending it); the chunk to
    resume from."""
    latencies: list[float] = []
    for number, chunk in enumerate(chunks):
        if len(ledger.acked) < kill_after:
            answer = await send(client, kind, chunk)
            if answer.error:
                raise DrillError(f"batch {number} failed before the kill: {answer.error}")
            ledger.record(answer)
            latencies.append(answer.seconds)
            continue
        delay = statistics.median(latencies) / 4
        drill.step(
            f"{len(ledger.acked)} {kind} acknowledged in {ledger.requests} requests (median "
            f"{statistics.median(latencies) * 1000:.0f} ms); sending request {number + 1} and "
            f"SIGKILL the service (pid {service.pid}) {delay * 1000:.0f} ms later"
        )
        in_flight = asyncio.create_task(send(client, kind, chunk))
        await asyncio.sleep(delay)
        await service.kill()
        answer = await in_flight
        if answer.error:
            drill.step(f"the in-flight request got no answer ({answer.error}): a client retries it")
            return number
        drill.step("the in-flight request was answered before the kill landed")
        ledger.record(answer)
        return number + 1
    return len(chunks)


async def check_redis_went_with_service(drill: Drill, data_dir: Path) -> None:
    async def gone() -> bool:
        return not redis_servers(data_dir)

    seconds = await wait_until(gone, 30.0, poll=0.05)
    drill.check(
        seconds is not None,
        "the orphaned redis-server exited by itself (PR_SET_PDEATHSIG -> SIGTERM -> clean "
        + (f"shutdown) {seconds:.2f} s after the kill" if seconds is not None else
           "shutdown): still running after 30 s"),
    )  # fmt: skip


# -- waiting and checking -------------------------------------------------------------------------


async def settle(drill: Drill, store: Store, groups: Sequence[tuple[str, str]]) -> None:
    """Until every (stream, group) has read and acknowledged everything."""

    async def caught_up() -> bool:
        return all([await store.caught_up(stream, group) for stream, group in groups])

    seconds = await wait_until(caught_up, SETTLE_SECONDS, poll=0.5)
    names = ", ".join(f"{stream}/{group}" for stream, group in groups)
    drill.check(
        seconds is not None,
        f"consumers caught up (nothing undelivered, nothing pending) on {names}"
        + (f" {seconds:.1f} s after the last write" if seconds is not None
           else f": still a backlog after {SETTLE_SECONDS:g} s"),
    )  # fmt: skip


async def get(
    client: httpx.AsyncClient, path: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    """GET, retried as a client would on a 503 or a dropped connection (a refit writing a big
    batch can keep Redis busy past the service's socket timeout)."""
    problem = ""
    for _ in range(RETRIES):
        try:
            response = await client.get(path, params=params)
        except httpx.TransportError as error:
            problem = type(error).__name__
        else:
            if response.status_code != 503:
                return response
            problem = f"503 {error_code(response)}"
        await asyncio.sleep(1.0)
    raise DrillError(f"GET {path}: {problem} {RETRIES} times")


async def describe_model(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await get(client, "/api/v1/admin/model")
    response.raise_for_status()
    model: dict[str, Any] = response.json()
    return model


def live_version(model: dict[str, Any]) -> int | None:
    return int(model["info"]["version"]) if model["info"] else None


async def fetch_versions(client: httpx.AsyncClient, ids: Sequence[str]) -> dict[str, int | None]:
    """GET every product: its version, or None for a 404."""
    gate = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def one(product_id: str) -> tuple[str, int | None]:
        async with gate:
            response = await get(client, f"/api/v1/products/{product_id}")
        if response.status_code == 404:
            return product_id, None
        response.raise_for_status()
        return product_id, int(response.json()["version"])

    return dict(await asyncio.gather(*(one(product_id) for product_id in ids)))


async def check_model_settles(drill: Drill, client: httpx.AsyncClient, store: Store) -> None:
    """A live model and no refit left half-built, soon after the restart."""

    async def settled() -> bool:
        model = await describe_model(client)
        return live_version(model) is not None and model["building"] is None

    seconds = await wait_until(settled, MODEL_PATIENCE, poll=1.0)
    model = await describe_model(client)
    lock: Any = await store.redis.get(store.models.lock_key)
    lock_ttl = await store.redis.pttl(store.models.lock_key)
    waited = f"after {seconds:.1f} s" if seconds is not None else f"within {MODEL_PATIENCE:g} s"
    holder = f"held by token {_text(lock)} for another {lock_ttl / 1000:.0f} s" if lock else "free"
    drill.check(
        seconds is not None,
        f"a live model and no refit half-built {waited}: live v{live_version(model)}, building "
        f"{model['building']}, refit lock {holder}",
    )


async def check_catalog(
    drill: Drill, client: httpx.AsyncClient, store: Store, acked: dict[str, int]
) -> tuple[int, int]:
    """Every acknowledged product stored at its version; every stored product indexed at its
    version in the live index; no vector without a product. How many acknowledged products are
    (missing or at another version, stored but not indexed at their version)."""
    versions = await fetch_versions(client, list(acked))
    missing = [pid for pid, version in versions.items() if version is None]
    moved = [pid for pid, version in versions.items() if version not in (None, acked[pid])]
    drill.check(
        not missing and not moved,
        f"GET 200 at the acknowledged version: {len(acked) - len(missing) - len(moved)} of "
        f"{len(acked)} acknowledged products ({len(missing)} missing, {len(moved)} at another "
        "version)",
    )
    for _ in range(3):  # a refit swapping the live index mid-check: look again
        model = await describe_model(client)
        live = live_version(model)
        if live is None:
            drill.check(False, "a live embedding model exists")
            return len(missing) + len(moved), len(acked)
        ids = await store.product_ids()
        stored = await store.stored_versions(ids)
        indexed = await store.index.indexed_versions(live, ids)
        orphans = await store.orphan_vectors(live)
        if live_version(await describe_model(client)) == live:
            break
        drill.step("a refit swapped the live index during the check; checking again")
    unindexed = [pid for pid, s, v in zip(ids, stored, indexed, strict=True) if s != v]
    extra = len(set(ids) - set(acked))
    drill.check(
        not unindexed,
        f"live index v{live}: {len(ids) - len(unindexed)} of {len(ids)} stored products "
        f"({extra} stored though never acknowledged) have a vector at their current version"
        + (f"; e.g. {unindexed[:3]}" if unindexed else ""),
    )
    drill.check(not orphans, f"vector documents of products that do not exist: {len(orphans)}")
    drill.step(
        f"model: live v{live} fitted on {model['info']['documents']} products, building "
        f"{model['building']}; FT.INFO num_docs {await store.index.document_count(live)}"
    )
    sample = random.Random(0).sample(sorted(acked), min(SIMILAR_SAMPLE, len(acked)))
    embedded = 0
    for product_id in sample:
        response = await get(client, f"/api/v1/products/{product_id}/similar", {"k": 5})
        embedded += response.status_code == 200 and response.json()["embedded"]
    drill.check(embedded == len(sample),
                f"/similar says embedded: {embedded} of {len(sample)} sampled")  # fmt: skip
    return len(missing) + len(moved), len(set(unindexed) & set(acked))


async def check_counted_once(drill: Drill, store: Store, ledger: Ledger) -> int:
    """Popularity sums to the distinct acknowledged events; the signed difference."""
    total = await store.popularity_total()
    expected = len(ledger.acked)
    drill.check(
        total == expected,
        f"popularity day buckets sum to {total:g}; distinct event ids acknowledged {expected} "
        f"({ledger.duplicates} answered 'duplicate' on a retry)",
    )
    return expected - round(total)


def describe_loss(what: str, acked: int, lost: int, unindexed: int = 0) -> str:
    if lost == 0:
        text = f"nothing ({acked} {what} acknowledged)"
    elif lost < 0:
        text = f"none lost, but {-lost} {what} counted twice"
    else:
        text = f"{lost} of {acked} {what}"
    return text + (f", {unindexed} not indexed" if unindexed else "")


# Log events that must not appear, and those worth counting, in every drill.
LOG_PROBLEMS = ("unhandled_error", "refit_failed", "stream_entry_dead_lettered")
LOG_NOTES = ("redis_unavailable", "stream_runner_redis_error", "stream_entry_failed",
             "refit_lock_lost", "refit_dropping_dead_build")  # fmt: skip


def check_logs(drill: Drill, services: Sequence[Service]) -> None:
    counts = {
        event: sum(service.log_count(event) for service in services if service.log.exists())
        for event in (*LOG_PROBLEMS, *LOG_NOTES)
    }
    drill.check(
        not any(counts[event] for event in LOG_PROBLEMS),
        "service logs: " + ", ".join(f"{event} {count}" for event, count in counts.items()),
    )


# -- the data -------------------------------------------------------------------------------------


def catalog_products(work: Path, count: int) -> list[Item]:
    """`count` products: the CrowdFlower catalog, then "(2-pack)" variants of it."""
    products = load_crowdflower(work).products
    variants = [
        {**product, "id": f"{product['id']}-2pk", "name": f"{product['name']} (2-pack)"}
        for product in products[: max(0, count - len(products))]
    ]
    return (products + variants)[:count]


def event_batches(prefix: str, size: int, product_ids: Sequence[str]) -> Iterator[list[Item]]:
    """Batches of views without end, every event id unique."""
    for number in itertools.count():
        yield view_events(f"{prefix}-{number:05d}", size, product_ids)


def view_events(prefix: str, count: int, product_ids: Sequence[str]) -> list[Item]:
    """`count` views by 997 users over the products, each with a unique event id."""
    return [
        {
            "type": "view",
            "user_id": f"u-{number % 997}",
            "product_id": product_ids[number % len(product_ids)],
            "event_id": f"{prefix}-{number:07d}",
        }
        for number in range(count)
    ]


# -- drill 1 and 2: SIGKILL mid-import ------------------------------------------------------------


async def kill_import(
    work: Path, products: Sequence[Item], batch_size: int = 100, env: dict[str, str] | None = None
) -> Outcome:
    drill = Drill(
        "kill-import",
        f"SIGKILL at {KILL_FRACTION:.0%} of {len(products)} products ({batch_size}/request), "
        "restart, resend",
    )
    data_dir = work / "kill-import"
    service = Service(data_dir, work / "kill-import.log", env)
    ledger = Ledger()
    chunks = list(batches(products, batch_size))
    try:
        async with drill_resources(data_dir, [service]) as store:
            drill.step(f"service ready in {await service.start():.1f} s ({machine_load()})")
            async with http(service) as client:
                resume = await feed_until_kill(
                    drill, service, client, "products", chunks, ledger,
                    int(len(products) * KILL_FRACTION),
                )  # fmt: skip
            await check_redis_went_with_service(drill, data_dir)
            service.env.update(NO_AUTOMATIC_REFIT)
            drill.step(f"restarted in {await service.start():.1f} s (automatic refits off)")
            if resume < len(chunks):
                ids = [item["id"] for item in chunks[resume]]
                stored = sum(v is not None for v in await store.stored_versions(ids))
                drill.step(f"of the in-flight batch, {stored} of {len(ids)} products were stored")
            async with watch_liveness(drill, service), http(service) as client:
                retries = await feed(client, "products", chunks[resume:], ledger)
                drill.step(
                    f"sent batches {resume + 1}-{len(chunks)} ({retries} retries); "
                    f"{len(ledger.acked)} products acknowledged, {ledger.rejected} rejected"
                )
                await settle(drill, store, [(store.catalog.stream, INDEXER)])
                await check_model_settles(drill, client, store)
                lost, unindexed = await check_catalog(drill, client, store, ledger.acked)
            drill.lost = describe_loss("products", len(ledger.acked), lost, unindexed)
    except ABORTS as error:
        drill.check(False, f"drill aborted: {type(error).__name__}: {error}")
    check_logs(drill, [service])
    return drill.outcome()


async def kill_events(
    work: Path,
    product_ids: Sequence[str],
    count: int = 50_000,
    batch_size: int = 500,
    env: dict[str, str] | None = None,
) -> Outcome:
    drill = Drill(
        "kill-events",
        f"SIGKILL at {KILL_FRACTION:.0%} of {count} view events ({batch_size}/request), "
        "restart, resend",
    )
    data_dir = work / "kill-events"
    service = Service(data_dir, work / "kill-events.log", env)
    ledger = Ledger()
    chunks = list(batches(view_events("kill", count, product_ids), batch_size))
    try:
        async with drill_resources(data_dir, [service]) as store:
            drill.step(f"service ready in {await service.start():.1f} s ({machine_load()})")
            async with http(service) as client:
                resume = await feed_until_kill(
                    drill, service, client, "events", chunks, ledger, int(count * KILL_FRACTION)
                )
            await check_redis_went_with_service(drill, data_dir)
            drill.step(f"restarted in {await service.start():.1f} s")
            async with watch_liveness(drill, service), http(service) as client:
                retries = await feed(client, "events", chunks[resume:], ledger)
                drill.step(
                    f"sent batches {resume + 1}-{len(chunks)} ({retries} retries): "
                    f"{len(ledger.acked)} distinct events acknowledged, {ledger.duplicates} "
                    f"duplicates, {ledger.rejected} rejected"
                )
                await settle(drill, store, [(store.tracking.stream, AGGREGATOR)])
            lost = await check_counted_once(drill, store, ledger)
            drill.lost = describe_loss("events", len(ledger.acked), lost)
    except ABORTS as error:
        drill.check(False, f"drill aborted: {type(error).__name__}: {error}")
    check_logs(drill, [service])
    return drill.outcome()


# -- drill 3: SIGKILL the embedded Redis ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    kind: str
    started: float  # monotonic
    seconds: float
    status: int  # 0: no response
    error: str  # the JSON error code, or the transport error


class SteadyLoad:
    """Two readers (popular, similar) and a writer (products, events), each bounded in time."""

    def __init__(
        self, client: httpx.AsyncClient, ids: Sequence[str], spare: Sequence[Item]
    ) -> None:
        self.client = client
        self.ids = list(ids)
        self.spare = list(spare)
        self.requests: list[Request] = []
        self.products: dict[str, tuple[int, float]] = {}  # id -> (version, acknowledged at)
        self.events: dict[str, float] = {}  # event id -> acknowledged at
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.tasks = [asyncio.create_task(self._read(number, deadline)) for number in range(2)] + [
            asyncio.create_task(self._write(deadline))
        ]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def _get(self, kind: str, path: str, params: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            response = await self.client.get(path, params=params)
        except httpx.TransportError as error:
            self.requests.append(Request(kind, started, time.monotonic() - started, 0,
                                         type(error).__name__))  # fmt: skip
            return
        error = "" if response.is_success else error_code(response)
        seconds = time.monotonic() - started
        self.requests.append(Request(kind, started, seconds, response.status_code, error))

    async def _read(self, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set() and time.monotonic() < deadline:
            await self._get("popular", "/api/v1/popular", {"k": 10})
            product_id = rng.choice(self.ids)
            await self._get("similar", f"/api/v1/products/{product_id}/similar", {"k": 10})
            await asyncio.sleep(0.02)

    async def _write(self, deadline: float) -> None:
        for number, chunk in enumerate(batches(self.spare, 5)):
            if self.stop.is_set() or time.monotonic() >= deadline:
                return
            events = view_events(f"steady{number:05d}", 20, self.ids)
            for kind, items in (("products", chunk), ("events", events)):
                answer = await send(self.client, kind, items)
                acked_at = time.monotonic()
                error = answer.error.partition(" ")[2] if answer.status else answer.error
                self.requests.append(Request(f"write {kind}", acked_at - answer.seconds,
                                             answer.seconds, answer.status, error))  # fmt: skip
                for item_id, version in answer.acked.items():
                    if kind == "products":
                        self.products[item_id] = (version, acked_at)
                    else:
                        self.events[item_id] = acked_at
            await asyncio.sleep(0.1)


def redis_timeout_bound(settings: Settings) -> float:
    """Longest a request may wait on a dead Redis: every attempt of the first failing command
    (socket or connect timeout each), the client's backoffs (capped at 1 s), and the pool's
    wait for a free connection."""
    timeouts = settings.redis
    per_attempt = max(timeouts.socket_timeout_seconds, timeouts.connect_timeout_seconds)
    return (
        (timeouts.retries + 1) * per_attempt
        + timeouts.retries * 1.0
        + (timeouts.socket_timeout_seconds)
    )


async def kill_redis(
    work: Path, products: Sequence[Item], env: dict[str, str] | None = None
) -> Outcome:
    drill = Drill("kill-redis", "SIGKILL redis-server under light read/write load, restart it")
    settings = load_settings()
    data_dir = work / "kill-redis"
    service = Service(data_dir, work / "kill-redis.log", env)
    seed, spare = list(products[:500]), list(products[500:3000])
    relaunched: asyncio.subprocess.Process | None = None
    try:
        async with drill_resources(data_dir, [service]) as store:
            drill.step(f"service ready in {await service.start():.1f} s ({machine_load()})")
            async with http(service, patience=60.0) as client:
                ids = [item["id"] for item in seed]
                await feed(client, "products", list(batches(seed, 100)), Ledger())
                await feed(client, "events", list(batches(view_events("seed", 2000, ids), 500)),
                           Ledger())  # fmt: skip
                await settle(drill, store, [(store.catalog.stream, INDEXER),
                                            (store.tracking.stream, AGGREGATOR)])  # fmt: skip

                async def model_live() -> bool:
                    return live_version(await describe_model(client)) is not None

                await wait_until(model_live, START_SECONDS, poll=1.0)
                load = SteadyLoad(client, ids, spare)
                load.start(seconds=120.0)
                await asyncio.sleep(3.0)
                pid = redis_pid(data_dir)
                if pid is None:
                    raise DrillError("no redis.pid in the data directory")
                command = await store.launch_command()
                killed_at = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                drill.step(f"SIGKILL redis-server (pid {pid}) under load")

                async def replaced() -> bool:
                    return any(other != pid for other in redis_servers(data_dir)) and (
                        await store.ping()
                    )

                # /health/ready is probed until the service has a new redis-server answering.
                probes: list[tuple[int, float, str, float]] = []
                probing = asyncio.create_task(probe_readiness(client, probes))
                back_after = await wait_until(replaced, 30.0, poll=0.02)
                up_at = time.monotonic()
                probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probing
                readiness = [probe for probe in probes if probe[3] < up_at]
                drill.check(
                    back_after is not None,
                    f"the service started redis-server again by itself {back_after or 0:.2f} s "
                    f"after the kill (pids now {redis_servers(data_dir)})",
                )
                if back_after is None:  # go on measuring the rest: start it as the launcher did
                    relaunched = await asyncio.create_subprocess_exec(
                        *command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, start_new_session=True,
                    )  # fmt: skip
                    up_at = time.monotonic()
                pinged = await wait_until(store.ping, 60.0, poll=0.05)

                async def ready() -> bool:
                    with contextlib.suppress(httpx.TransportError):
                        return (await client.get("/health/ready")).status_code == 200
                    return False

                await wait_until(ready, 60.0, poll=0.1)
                ready_after = time.monotonic() - up_at if await ready() else None
                await asyncio.sleep(3.0)
                await load.finish()
                report_outage(drill, settings, load.requests, readiness, killed_at, up_at,
                              pinged, ready_after)  # fmt: skip
                drill.lost = await check_survivors(drill, client, load, killed_at)
            code, seconds = await service.terminate()
            drill.check(
                code == 0,
                f"service exited {code} {seconds:.1f} s after SIGTERM (server."
                f"graceful_shutdown_seconds {settings.server.graceful_shutdown_seconds:g})",
            )
            left = redis_servers(data_dir)
            drill.step(
                f"after the service stopped, redis-servers on its data directory: {left}"
                + (" (the one the drill started: the service stops only the one it launched)"
                   if relaunched is not None and relaunched.pid in left else "")
            )  # fmt: skip
            if relaunched is not None:
                relaunched.terminate()
                await asyncio.wait_for(relaunched.wait(), STOP_SECONDS)
    except ABORTS as error:
        drill.check(False, f"drill aborted: {type(error).__name__}: {error}")
    finally:
        if relaunched is not None and relaunched.returncode is None:
            relaunched.terminate()
            await asyncio.wait_for(relaunched.wait(), STOP_SECONDS)
    drill.check(not redis_servers(data_dir), "no redis-server left running")
    check_logs(drill, [service])
    return drill.outcome()


async def probe_readiness(
    client: httpx.AsyncClient, answers: list[tuple[int, float, str, float]]
) -> None:
    """GET /health/ready every 50 ms until cancelled: (status, latency, what it says fails,
    when the answer came)."""
    while True:
        started = time.monotonic()
        try:
            response = await client.get("/health/ready")
            body = response.json()
            failing = "; ".join(f"{name}: {body['checks'][name]}" for name in body["failing"])
            status = response.status_code
        except (httpx.TransportError, ValueError, KeyError) as error:
            status, failing = 0, type(error).__name__
        answered = time.monotonic()
        answers.append((status, answered - started, failing, answered))
        await asyncio.sleep(0.05)


def report_outage(
    drill: Drill,
    settings: Settings,
    requests: Sequence[Request],
    readiness: Sequence[tuple[int, float, str, float]],
    killed_at: float,
    up_at: float,
    pinged: float | None,
    ready_after: float | None,
) -> None:
    bound = redis_timeout_bound(settings)
    before = [r for r in requests if r.started + r.seconds < killed_at]
    down = [r for r in requests if killed_at <= r.started < up_at]
    spanning = [r for r in requests if r.started < up_at and r.started + r.seconds > killed_at]
    statuses: dict[str, int] = {}
    for r in down:
        key = f"{r.kind}: {r.status} {r.error}".strip()
        statuses[key] = statuses.get(key, 0) + 1
    drill.step(f"before the kill: {len(before)} requests, "
               f"{sum(200 <= r.status < 300 for r in before)} answered 2xx")  # fmt: skip
    # A request may also succeed: Redis came back while its client was retrying.
    drill.check(
        all(r.status < 300 or (r.status, r.error) == (503, "store_unavailable") for r in down),
        f"while Redis was down ({up_at - killed_at:.2f} s): {len(down)} requests, by status and "
        f"JSON error: {statuses}",
    )
    latencies = [r.seconds for r in spanning]
    worst = max(latencies, default=0.0)
    drill.check(
        worst <= bound,
        f"latency of requests overlapping the outage: median "
        f"{statistics.median(latencies or [0.0]) * 1000:.0f} ms, max {worst * 1000:.0f} ms "
        f"(bound from the redis settings: {bound:.1f} s)",
    )
    named = [r for r in readiness if r[0] == 503 and "redis" in r[2]]
    # A probe that reached the new server while the drill had yet to see it may say 200.
    drill.check(
        bool(named) and all(r in named or r[0] == 200 for r in readiness),
        f"/health/ready while down: {len(named)} of {len(readiness)} probes 503 naming redis "
        f"(max {max((r[1] for r in readiness), default=0.0) * 1000:.0f} ms); e.g. "
        f"{readiness[0][2] if readiness else '-'}",
    )
    drill.check(pinged is not None, f"restarted redis-server answers PING in {pinged or 0:.2f} s")
    drill.check(
        ready_after is not None,
        f"/health/ready 200 again {ready_after or 0:.2f} s after the restart of redis-server",
    )
    for kind in ("popular", "similar"):
        served = [r.started + r.seconds - up_at for r in requests
                  if r.kind == kind and r.started >= up_at and r.status == 200]  # fmt: skip
        first = min(served, default=0.0)
        drill.check(bool(served), f"GET {kind} succeeds again {first:.2f} s after the restart")
    errors = [r for r in requests if r.status >= 500 and r.status != 503]
    drill.check(not errors, f"no 5xx other than 503 anywhere: {len(errors)}")


async def check_survivors(
    drill: Drill, client: httpx.AsyncClient, load: SteadyLoad, killed_at: float
) -> str:
    """Writes acknowledged before the kill are still there (older than the AOF window: must)."""
    old = {pid: v for pid, (v, at) in load.products.items() if killed_at - at > AOF_WINDOW_SECONDS}
    recent = {pid: v for pid, (v, at) in load.products.items()
              if 0 <= killed_at - at <= AOF_WINDOW_SECONDS}  # fmt: skip
    versions = await fetch_versions(client, [*old, *recent])
    old_lost = [pid for pid, v in old.items() if (versions[pid] or 0) < v]
    recent_lost = [pid for pid, v in recent.items() if (versions[pid] or 0) < v]
    drill.check(not old_lost, f"products acknowledged > {AOF_WINDOW_SECONDS:g} s before the kill: "
                f"{len(old) - len(old_lost)} of {len(old)} stored")  # fmt: skip
    drill.step(f"products acknowledged within {AOF_WINDOW_SECONDS:g} s of the kill: "
               f"{len(recent) - len(recent_lost)} of {len(recent)} stored")  # fmt: skip
    before = sorted(eid for eid, at in load.events.items() if at < killed_at)
    kept: set[str] = set()
    for chunk in batches(before, 1000):
        response = await client.post(EVENTS_PATH, json=[
            {"type": "view", "user_id": "u-resend", "product_id": load.ids[0], "event_id": eid}
            for eid in chunk
        ])  # fmt: skip
        response.raise_for_status()
        kept |= {i["event_id"] for i in response.json()["items"] if i["status"] == "duplicate"}
    old_events = [eid for eid in before if killed_at - load.events[eid] > AOF_WINDOW_SECONDS]
    recent_events = [eid for eid in before if eid not in set(old_events)]
    old_events_kept = sum(eid in kept for eid in old_events)
    drill.check(
        old_events_kept == len(old_events),
        f"events acknowledged > {AOF_WINDOW_SECONDS:g} s before the kill: {old_events_kept} of "
        f"{len(old_events)} still known (sent again, they answer 'duplicate')",
    )
    recent_kept = sum(eid in kept for eid in recent_events)
    drill.step(f"events acknowledged within {AOF_WINDOW_SECONDS:g} s of the kill: "
               f"{recent_kept} of {len(recent_events)} still known")  # fmt: skip
    lost = len(old_lost) + len(recent_lost) + len(before) - len(kept)
    total = len(old) + len(recent) + len(before)
    return describe_loss("writes", total, lost)


# -- drill 4: SIGTERM under load ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    kind: str
    items: Sequence[Item]
    started: float
    answer: Answer


async def writer(
    client: httpx.AsyncClient, kind: str, chunks: Iterable[Sequence[Item]], log: list[Sent],
    deadline: float,
) -> None:  # fmt: skip
    """Post chunks back to back until the service refuses connections (or time runs out)."""
    for chunk in itertools.islice(chunks, WRITER_REQUESTS):
        if time.monotonic() >= deadline:
            return
        started = time.monotonic()
        answer = await send(client, kind, chunk)
        log.append(Sent(kind, chunk, started, answer))
        if answer.error == "ConnectError":
            return


async def sigterm_under_load(
    work: Path, products: Sequence[Item], env: dict[str, str] | None = None
) -> Outcome:
    drill = Drill("sigterm-under-load", "SIGTERM while 4 clients post products and events")
    settings = load_settings()
    data_dir = work / "sigterm"
    service = Service(data_dir, work / "sigterm.log", env)
    seed = list(products[:300])
    seed_ids = [product["id"] for product in seed]
    # Each product writer has its half of the rest; once through it, it sends them again.
    product_chunks = [itertools.cycle(list(batches(products[300 + n :: 2], 50))) for n in range(2)]
    event_chunks = [event_batches(f"term{n}", 200, seed_ids) for n in range(2)]
    ledgers = {"products": Ledger(), "events": Ledger()}
    try:
        async with drill_resources(data_dir, [service]) as store:
            drill.step(f"service ready in {await service.start():.1f} s ({machine_load()})")
            async with http(service) as client:
                await feed(client, "products", list(batches(seed, 100)), ledgers["products"])

                async def model_live() -> bool:
                    return live_version(await describe_model(client)) is not None

                await wait_until(model_live, START_SECONDS, poll=1.0)
            first_redis = redis_pid(data_dir)
            old_pid = service.pid
            offset = service.log_offset()
            log: list[Sent] = []
            deadline = time.monotonic() + 120.0
            async with http(service) as client:
                tasks = [asyncio.create_task(writer(client, "products", chunks, log, deadline))
                         for chunks in product_chunks]  # fmt: skip
                tasks += [asyncio.create_task(writer(client, "events", chunks, log, deadline))
                          for chunks in event_chunks]  # fmt: skip
                await asyncio.sleep(6.0)

                async def fitting() -> bool:  # a refit logged its start, builds no index yet
                    started = service.log_count("refit_started", offset)
                    if started <= service.log_count("refit_finished", offset):
                        return False
                    return (await store.models.state()).building is None

                fit = await wait_until(fitting, 60.0, poll=0.1)
                term_at = time.monotonic()
                drill.step(
                    f"{len(log)} requests answered so far; SIGTERM pid {old_pid} "
                    + ("while a refit fits its model" if fit is not None
                       else "(no refit started within 60 s)")
                )  # fmt: skip
                code, seconds = await service.terminate()
                await asyncio.gather(*tasks)
            grace = settings.server.graceful_shutdown_seconds
            drill.check(code == 0 and seconds <= grace,
                        f"exit status {code} {seconds:.2f} s after SIGTERM "
                        f"(server.graceful_shutdown_seconds {grace:g})")  # fmt: skip
            drill.check(
                first_redis is not None
                and not redis_servers(data_dir)
                and not (data_dir / "redis.pid").exists(),
                f"its redis-server (pid {first_redis}) stopped with it; redis.pid removed",
            )
            for sent in log:
                if not sent.answer.error:
                    ledgers[sent.kind].record(sent.answer)
            unanswered = [sent for sent in log if sent.answer.error]
            in_flight = [s for s in log if s.started < term_at < s.started + s.answer.seconds]
            drill.step(
                f"{len(log)} requests in all; {len(in_flight)} in flight at SIGTERM, of which "
                f"{sum(not s.answer.error for s in in_flight)} answered 2xx; unanswered: "
                + describe_errors(unanswered, term_at)
            )
            drill.step(f"restarted in {await service.start():.1f} s")
            left = {name: await store.pending_of(stream, group, old_pid) for name, stream, group
                    in (("indexer", store.catalog.stream, INDEXER),
                        ("aggregator", store.tracking.stream, AGGREGATOR))}  # fmt: skip
            drill.check(
                not any(left.values()),
                f"entries the stopped process left pending (unacknowledged): {left}",
            )
            dropped = await stored_without_answer(store, unanswered, ledgers["products"].acked)
            drill.check(
                not dropped,
                "requests sent before SIGTERM that stored something yet got no answer: "
                f"{dropped} (unanswered requests that stored nothing were never read)",
            )
            async with watch_liveness(drill, service), http(service) as client:
                for sent in unanswered:
                    await feed(client, sent.kind, [sent.items], ledgers[sent.kind])
                drill.step(f"sent the {len(unanswered)} unanswered batches again")
                await settle(drill, store, [(store.catalog.stream, INDEXER),
                                            (store.tracking.stream, AGGREGATOR)])  # fmt: skip
                await check_model_settles(drill, client, store)
                lost_products, unindexed = await check_catalog(
                    drill, client, store, ledgers["products"].acked
                )
                lost_events = await check_counted_once(drill, store, ledgers["events"])
            drill.lost = (
                describe_loss("products", len(ledgers["products"].acked), lost_products, unindexed)
                + "; "
                + describe_loss("events", len(ledgers["events"].acked), lost_events)
            )  # fmt: skip
            code, seconds = await service.terminate()
            drill.check(code == 0, f"restarted service exited {code} {seconds:.1f} s after SIGTERM")
    except ABORTS as error:
        drill.check(False, f"drill aborted: {type(error).__name__}: {error}")
    drill.check(not redis_servers(data_dir), "no redis-server left running")
    check_logs(drill, [service])
    return drill.outcome()


def describe_errors(unanswered: Sequence[Sent], term_at: float) -> str:
    counts: dict[str, int] = {}
    for sent in unanswered:
        when = "sent before SIGTERM" if sent.started < term_at else "sent after"
        key = f"{sent.answer.error} ({when})"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{count} {key}" for key, count in sorted(counts.items())) or "none"


async def stored_without_answer(
    store: Store, unanswered: Sequence[Sent], acked: dict[str, int]
) -> int:
    """Unanswered requests any of whose items reached Redis (a product stored at a version newer
    than the last acknowledged, an event seen)."""
    dropped = 0
    for sent in unanswered:
        if sent.kind == "products":
            ids = [item["id"] for item in sent.items]
            stored = await store.stored_versions(ids)
            found = any((v or 0) > acked.get(i, 0) for i, v in zip(ids, stored, strict=True))
        else:
            keys = [store.tracking.keys.key("event", "seen", item["event_id"])
                    for item in sent.items]  # fmt: skip
            found = bool(await store.redis.exists(*keys))
        dropped += found
    return dropped


# -- drill 5: two processes on one Redis ----------------------------------------------------------

_PROCESSED = re.compile(r"^recommender_stream_processed_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_GROUP_LABEL = re.compile(r'group="(?P<group>[^"]*)"')


async def processed_counts(service: Service) -> dict[str, float]:
    """`recommender_stream_processed_total` of one process, by group."""
    async with http(service, patience=30.0) as client:
        text = (await get(client, "/metrics")).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        match = _PROCESSED.match(line)
        group = _GROUP_LABEL.search(match["labels"]) if match else None
        if match and group:
            counts[group["group"]] = counts.get(group["group"], 0.0) + float(match["value"])
    return counts


async def two_processes(
    work: Path, products: Sequence[Item], event_count: int = 20_000,
    env: dict[str, str] | None = None,
) -> Outcome:  # fmt: skip
    drill = Drill("two-processes", "2 serve processes on one data dir: writes to both, refit race")
    data_dir = work / "two"
    first = Service(data_dir, work / "two-a.log", env)
    second = Service(data_dir, work / "two-b.log", env)
    chunks = list(batches(products, 100))
    event_chunks = list(batches(view_events("two", event_count, [p["id"] for p in products]), 500))
    ledgers = {"products": Ledger(), "events": Ledger()}
    try:
        async with drill_resources(data_dir, [second, first]) as store:
            drill.step(f"A (port {first.port}) ready in {await first.start():.1f} s "
                       f"({machine_load()})")  # fmt: skip
            owner_redis = redis_pid(data_dir)
            drill.step(f"B (port {second.port}) ready in {await second.start():.1f} s")
            drill.check(
                second.log_count("embedded_redis_joined") == 1
                and redis_pid(data_dir) == owner_redis
                and redis_servers(data_dir) == [owner_redis],
                f"B joined A's redis-server (pid {owner_redis}): one redis-server, B logged "
                f"embedded_redis_joined {second.log_count('embedded_redis_joined')} time(s)",
            )

            async def post(service: Service, parity: int) -> None:
                async with http(service) as client:
                    for number in range(max(len(chunks), len(event_chunks))):
                        if number % 2 != parity:
                            continue
                        if number < len(chunks):
                            await feed(client, "products", [chunks[number]], ledgers["products"])
                        if number < len(event_chunks):
                            await feed(client, "events", [event_chunks[number]],
                                       ledgers["events"])  # fmt: skip

            async with watch_liveness(drill, first):
                started = time.monotonic()
                await asyncio.gather(post(first, 0), post(second, 1))
                drill.step(
                    f"posted {len(chunks)} product and {len(event_chunks)} event batches, even "
                    f"ones to A and odd ones to B at the same time, in "
                    f"{time.monotonic() - started:.1f} s"
                )
                await settle(drill, store, [(store.catalog.stream, INDEXER),
                                            (store.tracking.stream, AGGREGATOR)])  # fmt: skip
                counts = [await processed_counts(first), await processed_counts(second)]
                for group, stream in ((INDEXER, store.catalog.stream),
                                      (AGGREGATOR, store.tracking.stream)):  # fmt: skip
                    added = await store.entries_added(stream)
                    handled = [c.get(group, 0.0) for c in counts]
                    drill.check(
                        sum(handled) == added,
                        f"{group}: entries handled A {handled[0]:g} + B {handled[1]:g} = "
                        f"{sum(handled):g}; entries the stream received {added}",
                    )
                async with http(first) as client:
                    lost_events = await check_counted_once(drill, store, ledgers["events"])
                    await check_model_settles(drill, client, store)
                    lost_products, unindexed = await check_catalog(
                        drill, client, store, ledgers["products"].acked
                    )
                    for wait in (False, True):
                        await refit_race(drill, store, client, first, second, wait)
            drill.lost = (
                describe_loss("products", len(ledgers["products"].acked), lost_products, unindexed)
                + "; "
                + describe_loss("events", len(ledgers["events"].acked), lost_events)
            )  # fmt: skip
            await stop_owner_first(drill, first, second, data_dir)
    except ABORTS as error:
        drill.check(False, f"drill aborted: {type(error).__name__}: {error}")
    drill.check(not redis_servers(data_dir), "no redis-server left running")
    check_logs(drill, [first, second])
    return drill.outcome()


async def quiet_model(client: httpx.AsyncClient, store: Store) -> dict[str, Any] | None:
    """Until no refit is building, none holds the lock, and none is due; the model then."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        model = await describe_model(client)
        locked = await store.redis.exists(store.models.lock_key)
        due = model["changes_since_fit"] >= model["refit_due_at_changes"]
        if model["building"] is None and not locked and not due:
            return model
        await asyncio.sleep(1.0)
    return None


async def refit_race(
    drill: Drill, store: Store, client: httpx.AsyncClient, first: Service, second: Service,
    wait: bool,
) -> None:  # fmt: skip
    before = await quiet_model(client, store)
    if before is None:
        drill.check(False, "the model settled (no refit building or due) before the refit race")
        return
    offsets = [first.log_offset(), second.log_offset()]

    async def refit(service: Service) -> int:
        async with http(service, patience=STOP_SECONDS * 10) as one:
            response = await one.post("/api/v1/admin/model/refit", params={"wait": wait})
        return response.status_code

    statuses = await asyncio.gather(refit(first), refit(second))
    after = await quiet_model(client, store)
    events = {
        name: [first.log_count(name, offsets[0]), second.log_count(name, offsets[1])]
        for name in ("refit_started", "refit_finished", "refit_skipped", "refit_failed")
    }
    versions = (live_version(before), live_version(after) if after else None)
    expected = [200, 409] if wait else None
    statuses_ok = (sorted(statuses) == expected if wait
                   else 202 in statuses and set(statuses) <= {202, 409})  # fmt: skip
    drill.check(
        statuses_ok and sum(events["refit_finished"]) == 1 and versions[1] != versions[0],
        f"refit{'?wait=true' if wait else ''} to A and B at once: statuses A {statuses[0]}, "
        f"B {statuses[1]}; log events [A, B]: {events}; live version {versions[0]} -> "
        f"{versions[1]}",
    )


async def stop_owner_first(drill: Drill, first: Service, second: Service, data_dir: Path) -> None:
    """Stop A (the owner of the redis-server) while B still serves; see what B is left with."""
    code, seconds = await first.terminate()
    drill.check(code == 0, f"A (owner) exited {code} {seconds:.1f} s after SIGTERM")
    async with http(second, patience=10.0) as client:
        answers: list[tuple[int, float, str, float]] = []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(probe_readiness(client, answers), 3.0)
    drill.step(
        f"B after A stopped: redis-servers on the data directory {redis_servers(data_dir)}; "
        f"B /health/ready: {sorted({answer[0] for answer in answers})} "
        f"({answers[-1][2] if answers else '-'})"
    )
    code, seconds = await second.terminate()
    drill.check(code == 0, f"B exited {code} {seconds:.1f} s after SIGTERM")


# -- the command ----------------------------------------------------------------------------------

PRODUCT_COUNT = 10_000

DRILLS = ("kill-import", "kill-events", "kill-redis", "sigterm-under-load", "two-processes")


async def run(names: Sequence[str], work: Path) -> list[Outcome]:
    products = catalog_products(work, PRODUCT_COUNT)
    ids = [product["id"] for product in products]
    runs: dict[str, Callable[[], Awaitable[Outcome]]] = {
        "kill-import": lambda: kill_import(work, products),
        "kill-events": lambda: kill_events(work, ids),
        "kill-redis": lambda: kill_redis(work, products),
        "sigterm-under-load": lambda: sigterm_under_load(work, products),
        "two-processes": lambda: two_processes(work, products[:3000]),
    }
    return [await runs[name]() for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("drills", nargs="*", metavar="DRILL",
                        help=f"any of {', '.join(DRILLS)} (default: all)")  # fmt: skip
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep data and service logs here (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.drills if name not in DRILLS]
    if unknown:
        parser.error(f"unknown drill(s): {', '.join(unknown)}; choose from {', '.join(DRILLS)}")
    names = args.drills or list(DRILLS)
    print(f"machine: {machine_load()}")
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        outcomes = asyncio.run(run(names, args.work_dir.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            outcomes = asyncio.run(run(names, Path(tmp)))
    print_table(outcomes)
    return 0 if all(outcome.passed for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
