"""Bytes per product in Redis, and what they are spent on: Online Retail and a synthetic catalog.

    python -m benchmarks.memory [--products 100000] [--only retail|synthetic] [--no-events]
                                [--sample 2000] [--seed 0] [--json PATH]

Catalogs:
- `retail`: the Online Retail catalog (~3.6k products: a short upper-case name and a price, no
  description, category or brand), converted from ../shared/data in place, and its purchase
  history (~265k events of ~3.4k customers) unless --no-events;
- `synthetic`: --products products from `benchmarks.datasets.synthetic` (names of 4-8 words,
  descriptions of a few hundred characters, 2-3 level categories, brands, tags, prices; words drawn
  by frequency from the CrowdFlower and Online Retail product texts, seed --seed). No events.

How (each catalog on its own fresh embedded Redis + RediSearch in a temporary directory, so
nothing else is in it; everything else in this process):
1. `used_memory` (INFO memory) of the empty server.
2. The real write path: `CatalogService.upsert_batch` of every product in batches of 500
   (product hashes, id and category sorted sets, catalog stream); then the indexer consumer
   (group `indexer`, started here) reads the stream, finds no model and starts the first refit,
   as it does on a new shop's first products: the model is fitted on the whole catalog in a child
   process and stored in Redis, the index of its version created, every product embedded and
   written as a vector document (the guarded write; RediSearch inserts it into the HNSW graph),
   the alias pointed at it. Timed apart: the import, the indexer through its backlog, the fit
   (until the model state shows the new version `building`) and the back-fill (until `live`).
   The import is finished before the indexer starts: running, it would fit a first model on the
   first batch and refit as the catalog grew, which ends in the same state after longer.
3. Online Retail: its events through `TrackingService.record` in batches of 1,000 (the API's
   maximum), then the aggregator consumer until it has caught up.
4. Both streams trimmed as their consumers trim them every `trim_interval_seconds` (entries every
   group has acknowledged), so what is measured is the steady state, not a backlog.
5. `used_memory` again: (after - before) / products is the figure. Its breakdown:
   - keys, by kind (product hashes, vector documents, model, sorted sets, streams, tracking):
     MEMORY USAGE ... SAMPLES 0 of up to --sample random keys of the kind, mean times the kind's
     key count; for product hashes and vector documents also the mean length of each field's
     value (HGETALL of the same sample), the rest of the key being field names and overhead;
   - the live index's own structures, from FT.INFO (`vector_index_sz_mb`: the HNSW graph with its
     own copy of every vector; `inverted_sz_mb`, `offset_vectors_sz_mb`, `doc_table_size_mb`,
     `key_table_size_mb`, tries and sortables);
   - the server's own overhead, from MEMORY STATS after minus before: the keyspace's bucket
     arrays, the Lua VMs (their garbage included) and script caches, client and AOF buffers;
   - `unaccounted`: the total minus all that (the keyspace's collision chains, allocator size
     classes, capacity the index has reserved ahead, module structures FT.INFO does not report).

`used_memory` is what Redis allocated (jemalloc), the figure maxmemory counts; RSS is shown beside
it. Refits are left to the first one (`refit_change_fraction` at its maximum); a later refit
builds the next version's documents, index and model beside the live ones before dropping them,
so it needs that much headroom on top (printed as "refit headroom").
"""

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from benchmarks.datasets.synthetic import Vocabulary, generate
from benchmarks.load.dataset import convert as convert_online_retail
from benchmarks.support import (
    batches,
    index_info,
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
from recommender.vectors.model import DIMS

NAMESPACE = "bench:"
PRODUCT_BATCH = 500
EVENT_BATCH = 1000  # the most one `POST /events` (and `TrackingService.record`) takes
NO_AUTOMATIC_REFIT = 10.0  # the setting's maximum
PATIENCE = 1800.0
PROGRESS_SECONDS = 15.0
MB = 1024 * 1024  # RediSearch's "MB"

Progress = Callable[[str], None]

# Parts of the breakdown, in printing order.
PRODUCTS = "product hashes"
VECTORS = "vector documents"
INDEX = "search index (FT.INFO)"
MODEL = "embedding model"
CATALOG_SETS = "catalog sorted sets"
STREAMS = "streams (trimmed)"
SHOPPERS = "tracking: shopper history"
AGGREGATES = "tracking: aggregates"
MARKERS = "tracking: client event ids"
OTHER = "other keys"
SERVER = "server overhead (MEMORY STATS)"
UNACCOUNTED = "unaccounted"
KEY_PARTS = (PRODUCTS, VECTORS, MODEL, CATALOG_SETS, STREAMS, SHOPPERS, AGGREGATES, MARKERS, OTHER)
ORDER = (PRODUCTS, VECTORS, INDEX, *KEY_PARTS[2:], SERVER)

# The first segment of a key after the namespace -> its part (see the repositories' docstrings).
KIND_OF_HEAD = {
    "product": PRODUCTS,
    "vec": VECTORS,
    "catalog": CATALOG_SETS,
    "stream": STREAMS,
    "vectors": STREAMS,  # the vector change log (and its epoch)
    "history": SHOPPERS,
    "bought": SHOPPERS,
    "recent": SHOPPERS,
    "derived": SHOPPERS,  # kept "for you" lists
    "pop": AGGREGATES,
    "trend": AGGREGATES,
    "co": AGGREGATES,
    "copair": AGGREGATES,
    "cototal": AGGREGATES,
    "event": MARKERS,  # a client's event id, kept `event_id_ttl_seconds` against retries
}

# Rows under a hash part: the mean length of these fields' values.
PRODUCT_FIELDS = (("json: the product's JSON", ("json",)), ("version", ("version",)))
VECTOR_FIELDS = (
    (f"embedding: {DIMS} float32", ("embedding",)),
    ("text: name, description, category, brand", ("name", "description", "category_text",
                                                   "brand_text")),
    ("filters: pid, category paths, brand, stock, price, version", ("pid", "category", "brand",
                                                                   "in_stock", "price", "version")),
)  # fmt: skip
HASH_OVERHEAD = "field names, hash overhead"
# Rows under the index: FT.INFO sizes (in MB).
INDEX_SIZES = (
    ("HNSW graph + its copy of the vectors", ("vector_index_sz_mb",)),
    ("inverted lists: text, tag, numeric", ("inverted_sz_mb",)),
    ("term offsets", ("offset_vectors_sz_mb",)),
    ("document table", ("doc_table_size_mb",)),
    ("key table", ("key_table_size_mb",)),
    ("tries, sortables", ("tag_overhead_sz_mb", "text_overhead_sz_mb", "sortable_values_size_mb",
                          "geoshapes_sz_mb")),
)  # fmt: skip
# Rows under the server's own overhead: MEMORY STATS fields. Not `overhead.hashtable.main` and
# `.expires`: they count the keys' entries too, which MEMORY USAGE already counts (measured: 100k
# keys cost 15.6 B/key beyond MEMORY USAGE, of which the bucket arrays, `lut`, are 10.5).
SERVER_STATS = (
    ("keyspace bucket arrays (main and expires)", ("overhead.db.hashtable.lut",)),
    ("Lua VMs, script caches", ("script.VMs", "lua.caches", "functions.caches")),
    ("client buffers", ("clients.normal", "clients.slaves")),
    ("AOF buffer", ("aof.buffer",)),
)


def kind_of(name: str) -> str:
    """The part a key (without the namespace) belongs to."""
    head, _, rest = name.partition(":")
    if head == "model" and rest.isdigit():
        return MODEL
    return KIND_OF_HEAD.get(head, OTHER)


@dataclass(frozen=True, slots=True)
class Workload:
    label: str
    products: list[dict[str, Any]]
    events: list[dict[str, Any]]


class Part(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    bytes: float
    keys: int | None = None  # None: not keys (the index's or the server's own structures)
    sampled: int | None = None
    rows: list["Part"] = msgspec.field(default_factory=list)


class Report(msgspec.Struct, kw_only=True):
    label: str
    products: int
    events: int
    users: int
    used_memory_before: int
    used_memory_after: int
    used_memory_peak: int
    rss_before: int
    rss_after: int
    parts: list[Part]
    seconds: dict[str, float]
    model_terms: int
    model_components: int
    index_documents: int

    @property
    def total(self) -> int:
        return self.used_memory_after - self.used_memory_before

    @property
    def accounted(self) -> float:
        return sum(part.bytes for part in self.parts)

    @property
    def unaccounted(self) -> float:
        return self.total - self.accounted

    def per_product(self, size: float) -> float:
        return size / self.products

    def part(self, name: str) -> Part:
        return next(part for part in self.parts if part.name == name)

    @property
    def refit_headroom(self) -> float:
        """What a refit writes beside the live version: documents, index and model."""
        return sum(self.part(name).bytes for name in (VECTORS, INDEX, MODEL))


async def used_memory(client: "aioredis.Redis") -> dict[str, int]:
    info: Any = await client.info("memory")
    return {
        name: int(info[name]) for name in ("used_memory", "used_memory_rss", "used_memory_peak")
    }


async def server_overhead(client: "aioredis.Redis") -> dict[str, int]:
    """The server's own allocations outside the keys, by SERVER_STATS row (MEMORY STATS)."""
    stats: Any = await client.memory_stats()
    return {row: sum(int(stats.get(name, 0)) for name in names) for row, names in SERVER_STATS}


def runner_of(services: Services, stream: str) -> StreamRunner:
    return next(runner for runner in services.runners if runner.stream == stream)


async def drain(client: "aioredis.Redis", runner: StreamRunner) -> float:
    """Run a consumer until it has caught up with its stream, stop it and trim the stream;
    seconds until it had caught up."""
    started = time.perf_counter()
    runner.start()
    try:
        await wait_for_consumer(client, runner.stream, runner.group, PATIENCE)
        caught_up = time.perf_counter() - started
    finally:
        await runner.stop()
    await runner.trim()
    return caught_up


async def follow_refit(services: Services, started: float, progress: Progress) -> float:
    """Until the first refit makes a model live: seconds from `started` until it was `building`
    (fitted, stored, its index created); the back-fill's progress is printed on the way."""
    store, index = services.vectors.store, services.vectors.index
    total = await services.catalog.count()
    building_at: float | None = None
    next_report = time.perf_counter() + PROGRESS_SECONDS
    while True:
        state = await store.state()
        now = time.perf_counter()
        if state.live is not None:
            return (building_at or now) - started
        if state.building is not None and building_at is None:
            building_at = now
            next_report = now + PROGRESS_SECONDS
            progress(f"model fitted and stored in {now - started:.1f} s; back-filling its index")
        if building_at is not None and state.building is not None and now >= next_report:
            done = await index.document_count(state.building)
            progress(f"back-fill: {done:,} of {total:,} documents "
                     f"({done / (now - building_at):,.0f}/s)")  # fmt: skip
            next_report = now + PROGRESS_SECONDS
        await asyncio.sleep(0.05)


async def write_batches(
    write: Callable[[list[dict[str, Any]]], Awaitable[Any]],
    items: list[dict[str, Any]],
    size: int,
    verb: str,
    noun: str,
    progress: Progress,
) -> float:
    """Every item through `write`, `size` at a time (none may be rejected); the seconds taken."""
    started = time.perf_counter()
    next_report = started + PROGRESS_SECONDS
    for done, batch in enumerate(batches(items, size), start=1):
        result = await write(batch)
        if result.rejected:
            raise RuntimeError(f"{result.rejected} {noun} rejected: {result.items[0]}")
        if time.perf_counter() >= next_report:
            progress(f"{verb} {done * size:,} of {len(items):,} {noun}")
            next_report += PROGRESS_SECONDS
    return time.perf_counter() - started


async def import_products(
    client: "aioredis.Redis", services: Services, products: list[dict[str, Any]], progress: Progress
) -> dict[str, float]:
    """The catalog through the write path until its live index holds every product."""
    seconds: dict[str, float] = {}
    seconds["import products"] = await write_batches(
        services.catalog.upsert_batch, products, PRODUCT_BATCH, "imported", "products", progress
    )
    progress(f"imported {len(products):,} products in {seconds['import products']:.1f} s")

    started = time.perf_counter()
    refit = asyncio.create_task(follow_refit(services, started, progress))
    try:
        seconds["indexer backlog"] = await drain(
            client, runner_of(services, services.catalog.stream)
        )
        await services.vectors.settle()  # the refit the indexer started
        live = (await services.vectors.store.state()).live
        if live is None:
            raise RuntimeError("the first refit failed (its error is logged above)")
        seconds["model fit"] = await refit
        await wait_indexed(client, services.vectors.index.name(live), len(products), PATIENCE)
    finally:
        refit.cancel()
    seconds["index back-fill"] = time.perf_counter() - started - seconds["model fit"]
    progress(f"indexer backlog {seconds['indexer backlog']:.1f} s, model fit "
             f"{seconds['model fit']:.1f} s, back-fill {seconds['index back-fill']:.1f} s "
             f"({len(products) / seconds['index back-fill']:,.0f} products/s)")  # fmt: skip
    return seconds


async def record_events(
    client: "aioredis.Redis", services: Services, events: list[dict[str, Any]], progress: Progress
) -> dict[str, float]:
    """The events through `TrackingService.record`, then the aggregator until caught up."""
    seconds: dict[str, float] = {}
    seconds["record events"] = await write_batches(
        services.tracking.record, events, EVENT_BATCH, "recorded", "events", progress
    )
    progress(f"recorded {len(events):,} events in {seconds['record events']:.1f} s; aggregating")
    seconds["aggregate events"] = await drain(client, runner_of(services, services.tracking.stream))
    progress(f"aggregated in {seconds['aggregate events']:.1f} s "
             f"({len(events) / seconds['aggregate events']:,.0f} events/s)")  # fmt: skip
    return seconds


async def keys_by_part(client: "aioredis.Redis", keys: Keyspace) -> dict[str, list[str]]:
    found: defaultdict[str, list[str]] = defaultdict(list)
    async for raw in client.scan_iter(match=keys.pattern(), count=5000):
        name = raw.decode()
        found[kind_of(name[len(keys.prefix) :])].append(name)
    return found


async def memory_usage(client: "aioredis.Redis", names: Sequence[str]) -> list[int]:
    sizes: list[int] = []
    for chunk in batches(names, 1000):
        async with client.pipeline(transaction=False) as pipe:
            for name in chunk:
                pipe.memory_usage(name, samples=0)
            sizes += [int(size or 0) for size in await pipe.execute()]
    return sizes


async def field_lengths(client: "aioredis.Redis", names: Sequence[str]) -> Counter[str]:
    """Total length of each field's values over these hashes."""
    totals: Counter[str] = Counter()
    for chunk in batches(names, 500):
        async with client.pipeline(transaction=False) as pipe:
            for name in chunk:
                pipe.hgetall(name)
            hashes: list[dict[bytes, bytes]] = await pipe.execute()
        for fields in hashes:
            totals.update({field.decode(): len(value) for field, value in fields.items()})
    return totals


async def key_part(
    client: "aioredis.Redis",
    name: str,
    names: list[str],
    sample: list[str],
    fields: Sequence[tuple[str, Sequence[str]]] = (),
) -> Part:
    """A kind of key: mean MEMORY USAGE of the sample times the count; fields' rows likewise."""
    scale = len(names) / len(sample)
    size = sum(await memory_usage(client, sample)) * scale
    rows: list[Part] = []
    if fields:
        lengths = await field_lengths(client, sample)
        rows = [
            Part(name=row, bytes=sum(lengths[field] for field in group) * scale)
            for row, group in fields
        ]
        rows.append(Part(name=HASH_OVERHEAD, bytes=size - sum(row.bytes for row in rows)))
    return Part(name=name, bytes=size, keys=len(names), sampled=len(sample), rows=rows)


async def breakdown(
    client: "aioredis.Redis",
    services: Services,
    live: int,
    overhead: tuple[dict[str, int], dict[str, int]],
    sample_size: int,
    seed: int,
) -> list[Part]:
    """Every part: keys by kind (up to `sample_size` of each given to MEMORY USAGE), the live
    index, the server's overhead (`overhead`: its MEMORY STATS rows before and after)."""
    rng = random.Random(seed)
    found = await keys_by_part(client, Keyspace(NAMESPACE))
    parts: list[Part] = []
    for name in KEY_PARTS:
        names = sorted(found.get(name, []))
        if not names:
            parts.append(Part(name=name, bytes=0.0, keys=0, sampled=0))
            continue
        sample = rng.sample(names, min(sample_size, len(names)))
        fields = {PRODUCTS: PRODUCT_FIELDS, VECTORS: VECTOR_FIELDS}.get(name, ())
        parts.append(await key_part(client, name, names, sample, fields))
    model = next(part for part in parts if part.name == MODEL)
    info = (await services.vectors.model(live)).info
    projection = info.vocabulary_size * info.dims * 4.0
    model.rows = [
        Part(name=f"projection: {info.vocabulary_size:,} terms x {info.dims} float32",
             bytes=projection),
        Part(name="vocabularies, idf, key overhead", bytes=model.bytes - projection),
    ]  # fmt: skip
    index = await index_info(client, services.vectors.index.name(live))
    rows = [
        Part(name=row, bytes=sum(float(index.get(size, 0.0)) for size in sizes) * MB)
        for row, sizes in INDEX_SIZES
    ]
    parts.insert(2, Part(name=INDEX, bytes=sum(row.bytes for row in rows), rows=rows))
    before, after = overhead
    rows = [Part(name=row, bytes=float(after[row] - before[row])) for row in after]
    parts.append(Part(name=SERVER, bytes=sum(row.bytes for row in rows), rows=rows))
    return parts


async def measure(
    client: "aioredis.Redis", workload: Workload, sample: int, seed: int, progress: Progress
) -> Report:
    """Import a workload into an empty Redis and report its memory, part by part."""
    settings = Settings(
        redis=RedisSettings(namespace=NAMESPACE),
        vectors=VectorSettings(refit_change_fraction=NO_AUTOMATIC_REFIT),
    )
    services = build_services(client, Keyspace(NAMESPACE), settings)
    before = await used_memory(client)
    overhead_before = await server_overhead(client)
    progress(f"empty server: used_memory {before['used_memory'] / MB:.1f} MB")
    seconds = await import_products(client, services, workload.products, progress)
    if workload.events:
        seconds |= await record_events(client, services, workload.events, progress)
    after = await used_memory(client)
    overhead = (overhead_before, await server_overhead(client))
    started = time.perf_counter()
    live, model = await services.vectors.live_model()
    parts = await breakdown(client, services, live, overhead, sample, seed)
    seconds["breakdown"] = time.perf_counter() - started
    progress(f"used_memory {after['used_memory'] / MB:,.1f} MB; breakdown in "
             f"{seconds['breakdown']:.1f} s")  # fmt: skip
    return Report(
        label=workload.label,
        products=len(workload.products),
        events=len(workload.events),
        users=len({event.get("user_id") for event in workload.events}),
        used_memory_before=before["used_memory"],
        used_memory_after=after["used_memory"],
        used_memory_peak=after["used_memory_peak"],
        rss_before=before["used_memory_rss"],
        rss_after=after["used_memory_rss"],
        parts=parts,
        seconds={phase: round(value, 2) for phase, value in seconds.items()},
        model_terms=model.info.vocabulary_size,
        model_components=model.info.components,
        index_documents=await services.vectors.index.document_count(live),
    )


# -- output -----------------------------------------------------------------------------------


def _share(size: float, total: float) -> str:
    return f"{size / total:6.1%}" if total else "     -"


def _row(report: Report, label: str, size: float, keys: str = "", sampled: str = "") -> str:
    return (
        f"{label:<62} {keys:>9} {sampled:>7} {size / MB:10.1f} "
        f"{report.per_product(size):10,.0f} {_share(size, report.total)}"
    )


def dominant(report: Report) -> str:
    """The parts that cost most, largest first, each with its bytes per product and share."""
    ranked = sorted(report.parts, key=lambda part: -part.bytes)[:3]
    return "; ".join(
        f"{part.name} {report.per_product(part.bytes):,.0f} B/product "
        f"({part.bytes / report.total:.0%})"
        for part in ranked
    )


def print_report(report: Report) -> None:
    events = f", {report.events:,} events of {report.users:,} users" if report.events else ""
    print(f"\n== {report.label}: {report.products:,} products{events} ==")
    print(
        f"used_memory {report.used_memory_before / MB:.1f} MB empty -> "
        f"{report.used_memory_after / MB:,.1f} MB: {report.total / MB:,.1f} MB, "
        f"{report.per_product(report.total):,.0f} B per product "
        f"(peak {report.used_memory_peak / MB:,.1f} MB; RSS {report.rss_after / MB:,.1f} MB)"
    )
    print(f"{'part':<62} {'keys':>9} {'sampled':>7} {'MB':>10} {'B/product':>10} {'share':>6}")
    for part in report.parts:
        keys = "-" if part.keys is None else f"{part.keys:,}"
        sampled = "-" if part.sampled is None else f"{part.sampled:,}"
        print(_row(report, part.name, part.bytes, keys, sampled))
        for row in part.rows:
            print(_row(report, f"  {row.name}", row.bytes))
    print(_row(report, f"{UNACCOUNTED} (entry chains, allocator, index capacity, module)",
               report.unaccounted))  # fmt: skip
    print(_row(report, "total: used_memory after - before", report.total))
    print(f"dominant: {dominant(report)}")
    print(
        f"refit headroom (next version's documents, index and model beside these): "
        f"{report.refit_headroom / MB:,.1f} MB, "
        f"{report.per_product(report.refit_headroom):,.0f} B per product"
    )
    print(
        f"model: {report.model_terms:,} terms, {report.model_components} SVD components; "
        f"index: {report.index_documents:,} documents"
    )
    if report.users:
        shoppers = report.part(SHOPPERS).bytes
        print(f"shopper history: {shoppers / report.users:,.0f} B per user")
    phases = ", ".join(f"{phase} {value:.1f} s" for phase, value in report.seconds.items())
    print(f"seconds: {phases}")


def print_summary(reports: Sequence[Report]) -> None:
    print("\n== bytes per product ==")
    print(f"{'part':<28}" + "".join(f"{report.label:>24}" for report in reports))
    names = [*ORDER, UNACCOUNTED]
    for name in names:
        cells = []
        for report in reports:
            size = report.unaccounted if name == UNACCOUNTED else report.part(name).bytes
            cells.append(f"{report.per_product(size):>15,.0f} {_share(size, report.total)}")
        print(f"{name:<28}" + "".join(f"{cell:>24}" for cell in cells))
    print(f"{'total':<28}" + "".join(
        f"{report.per_product(report.total):>15,.0f} {'100.0%':>7}" for report in reports
    ))  # fmt: skip


# -- running ----------------------------------------------------------------------------------


def workloads(work: Path, args: argparse.Namespace, progress: Progress) -> list[Workload]:
    retail = convert_online_retail(work)
    progress(f"Online Retail: {len(retail.products):,} products, {len(retail.events):,} events")
    chosen: list[Workload] = []
    if args.only in (None, "retail"):
        events = [] if args.no_events else retail.events
        chosen.append(Workload("Online Retail", retail.products, events))
    if args.only in (None, "synthetic"):
        crowdflower = load_crowdflower(work)
        vocabulary = Vocabulary.of(
            [product["name"] for product in crowdflower.products + retail.products],
            [product["description"] for product in crowdflower.products],
        )
        started = time.perf_counter()
        products = generate(args.products, vocabulary, args.seed)
        progress(f"synthetic: {len(products):,} products generated in "
                 f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        chosen.append(Workload(f"synthetic {args.products:,}", products, []))
    return chosen


async def run(args: argparse.Namespace) -> list[Report]:
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    def labelled(label: str) -> Progress:
        return lambda message: progress(f"{label}: {message}")

    progress(f"machine at start: {machine_load()}")
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        for workload in workloads(work, args, progress):
            with private_redis(work / f"redis-{len(reports)}") as server:
                client = create_client(RedisSettings(), server.url)
                try:
                    report = await measure(
                        client, workload, args.sample, args.seed, labelled(workload.label)
                    )
                    reports.append(report)
                finally:
                    await client.aclose()
    progress(f"machine at end: {machine_load()}")
    return reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--products",
        type=int,
        default=100_000,
        help="size of the synthetic catalog (default: %(default)s)",
    )
    parser.add_argument("--only", choices=("retail", "synthetic"), help="measure one catalog only")
    parser.add_argument(
        "--no-events", action="store_true", help="leave out the Online Retail purchase history"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=2000,
        help="keys of each kind given to MEMORY USAGE (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic catalog and key sample seed")
    parser.add_argument(
        "--json", type=Path, help="also write the figures as JSON here ('-': stdout)"
    )
    args = parser.parse_args(argv)
    if args.products < 1 or args.sample < 1:
        parser.error("--products and --sample must be at least 1")
    quiet_logs()
    reports = asyncio.run(run(args))
    for report in reports:
        print_report(report)
    print_summary(reports)
    if args.json is not None:
        figures = [
            msgspec.to_builtins(report)
            | {"total": report.total, "unaccounted": report.unaccounted,
               "bytes_per_product": report.per_product(report.total),
               "refit_headroom": report.refit_headroom}
            for report in reports
        ]  # fmt: skip
        encoded = msgspec.json.format(msgspec.json.encode(figures), indent=2) + b"\n"
        if str(args.json) == "-":
            sys.stdout.buffer.write(encoded)
        else:
            args.json.write_bytes(encoded)


if __name__ == "__main__":
    main()
