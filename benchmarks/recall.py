"""Recall@10 of the RediSearch HNSW index against exact cosine search on the same vectors.

    python -m benchmarks.recall [--configs 16:100,16:200,32:200] [--ef 10,20,50,100,200]
                                [--product-queries 740] [--seed 0]

How:
1. Fit the embedding model (`fit_model`) on the whole CrowdFlower catalog and embed every
   product. Store the products through `CatalogService.upsert_batch` and write their vectors
   with the real guarded `VectorIndex.write` into one index per (M, EF_CONSTRUCTION) setting,
   created by `VectorIndex.create` (one model version, i.e. one key prefix, per setting).
2. Queries: a random sample of product vectors (the product itself excluded from its own
   answers, as /similar does) plus every distinct CrowdFlower search query embedded with
   `embed_query`. Zero vectors (no known term) are counted and left out of the queries: cosine
   with a zero vector is undefined, and RediSearch answers it with a NaN distance.
3. Truth: the exact top 10 by numpy dot product over all product vectors (unit length, so the
   dot product is the cosine).
4. Each query runs as FT.SEARCH with `EF_RUNTIME $ef` for every EF in the sweep, in two shapes:
   `knn`, the bare `*=>[KNN k ...]` (k = 11 for product queries, self dropped afterwards), and
   `similar`, the filter /similar and /search send (`@in_stock:{1} -@pid:{self}`, k = 10), which
   RediSearch runs as a hybrid query. The `VectorIndex.knn_ids` row is the service's own query
   path at the index's default EF_RUNTIME (the configured `hnsw_ef_runtime`).
   The baseline is a FLAT (brute-force, exact) index over the same documents in the same Redis:
   its recall checks the measurement itself and its latency is what the HNSW times are
   compared with; a PING gives the bare round trip.

Ties: several products can share a vector (titles differing only in case or punctuation), so
the exact top 10 is not unique. `recall@10` counts a returned product as correct when its exact
cosine is at least the 10th best exact cosine minus 1e-5 (float32 rounding); `strict` is the
plain overlap with one arbitrary exact top 10 (ties broken by catalog order) and is shown only to
size the effect of ties. Latency is one query at a time from one asyncio client (redis-py), so
it includes the client's own overhead, as the service's would.
"""

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.commands.search.field import TagField, VectorField
from redis.commands.search.index_definition import IndexDefinition, IndexType
from redis.commands.search.query import Query

from benchmarks.support import (
    Catalog,
    batches,
    describe_ms,
    load_crowdflower,
    machine_load,
    milliseconds,
    private_redis,
    quiet_logs,
    wait_indexed,
)
from recommender.catalog import CatalogRepository, CatalogService, Product
from recommender.config import CatalogSettings, RedisSettings, VectorSettings
from recommender.platform.redis import Keyspace, create_client
from recommender.vectors.index import TAG_SEPARATOR, Filters, VectorIndex
from recommender.vectors.model import DIMS, EmbeddingModel, ProductText, Vectors, fit_model
from recommender.vectors.service import product_text

K = 10
TIE_TOLERANCE = 1e-5
TARGET_RECALL = 0.95
BATCH = 500
WARM_UP_QUERIES = 50
NAMESPACE = "bench:"
ZERO_PROBE_PRODUCTS = 20
ZERO_PROBE_CATEGORY = "Probe"
ZERO_PROBE_CATEGORY_PEERS = 5
# Bare KNN; the filter the service sends (RediSearch picks the hybrid policy); the same, in batches.
SHAPES = ("knn", "similar", "similar/BATCHES")

Rows = list[int]
Search = Callable[[int], Awaitable[Rows]]


@dataclass(frozen=True, slots=True)
class QuerySet:
    vectors: Vectors
    # Catalog row of the product each query vector is, -1 for a text query.
    self_rows: npt.NDArray[np.intp]

    @property
    def is_product(self) -> npt.NDArray[np.bool_]:
        return self.self_rows >= 0


@dataclass(frozen=True, slots=True)
class Truth:
    scores: npt.NDArray[np.float32]  # (queries, products), the query's own product at -inf
    tenth: npt.NDArray[np.float32]  # the 10th best exact score of each query
    top: npt.NDArray[np.intp]  # one exact top 10 per query, ties broken by catalog order

    @classmethod
    def exact(cls, queries: QuerySet, vectors: Vectors) -> "Truth":
        scores = queries.vectors @ vectors.T
        own = queries.is_product
        scores[np.flatnonzero(own), queries.self_rows[own]] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        tenth = np.take_along_axis(scores, top[:, K - 1 : K], axis=1)[:, 0]
        return cls(scores=scores, tenth=tenth, top=top)

    def recall(self, query: int, rows: Rows) -> tuple[float, float]:
        """(tie-aware recall, strict recall) of one query's returned rows."""
        returned = rows[:K]
        good = sum(self.scores[query, row] >= self.tenth[query] - TIE_TOLERANCE for row in returned)
        strict = len(set(returned) & set(self.top[query].tolist()))
        return good / K, strict / K


@dataclass(frozen=True, slots=True)
class Outcome:
    index: str
    shape: str
    ef: str
    recall: npt.NDArray[np.float64]
    strict: npt.NDArray[np.float64]
    seconds: list[float]

    def row(self, is_product: npt.NDArray[np.bool_], baseline_mean_ms: float) -> str:
        mean = float(milliseconds(self.seconds).mean())
        p99 = float(np.percentile(milliseconds(self.seconds), 99))
        return (
            f"{self.index:<22} {self.shape:<16} {self.ef:>4}   "
            f"{self.recall.mean():.4f}  {self.recall[is_product].mean():.4f}  "
            f"{self.recall[~is_product].mean():.4f}   {self.strict.mean():.4f}   "
            f"{mean:7.3f}  {p99:7.3f}   {mean / baseline_mean_ms:5.2f}x"
        )


HEADER = (
    f"{'index':<22} {'shape':<16} {'EF':>4}   recall@10 (all / products / queries)  strict"
    f"   mean ms   p99 ms   vs FLAT mean"
)


def hnsw_label(settings: VectorSettings) -> str:
    return f"HNSW M={settings.hnsw_m} EFC={settings.hnsw_ef_construction}"


def parse_configs(text: str) -> list[tuple[int, int]]:
    pairs = [item.split(":") for item in text.split(",")]
    return [(int(m), int(ef_construction)) for m, ef_construction in pairs]


def build_queries(
    catalog: Catalog, vectors: Vectors, embed_query: Callable[[str], Vectors], count: int, seed: int
) -> QuerySet:
    nonzero = np.flatnonzero(np.linalg.norm(vectors, axis=1) > 0)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(nonzero, size=min(count, len(nonzero)), replace=False))
    texts = np.stack([embed_query(query) for query in catalog.queries])
    known = np.linalg.norm(texts, axis=1) > 0
    print(
        f"zero vectors: {len(vectors) - len(nonzero)} of {len(vectors)} products, "
        f"{int((~known).sum())} of {len(texts)} search queries "
        f"({', '.join(repr(q) for q, k in zip(catalog.queries, known, strict=True) if not k)})"
        " - left out of the queries"
    )
    return QuerySet(
        vectors=np.concatenate([vectors[rows], texts[known]]).astype(np.float32),
        self_rows=np.concatenate([rows, np.full(int(known.sum()), -1)]).astype(np.intp),
    )


def _flatten(reply: Any) -> Iterator[str]:
    """Every scalar of a nested RESP2 or RESP3 reply, as text, in order."""
    if isinstance(reply, dict):
        for key, value in reply.items():
            yield from _flatten(key)
            yield from _flatten(value)
    elif isinstance(reply, list | tuple):
        for item in reply:
            yield from _flatten(item)
    else:
        yield reply.decode() if isinstance(reply, bytes) else str(reply)


class Bench:
    """The queries and their truth, and the ways of running a query against an index."""

    def __init__(
        self,
        client: "aioredis.Redis",
        queries: QuerySet,
        truth: Truth,
        ids: list[str],
    ) -> None:
        self.client = client
        self.queries = queries
        self.truth = truth
        self.ids = ids
        self.row_of = {product_id: row for row, product_id in enumerate(ids)}

    def _self_id(self, query: int) -> str | None:
        row = int(self.queries.self_rows[query])
        return self.ids[row] if row >= 0 else None

    def filters(self, query: int) -> Filters:
        """The filter /similar (and /search) sends: in stock, never the product itself."""
        own = self._self_id(query)
        return Filters(in_stock=True, exclude=(own,) if own else ())

    def _blob(self, query: int) -> bytes:
        return np.ascontiguousarray(self.queries.vectors[query], dtype=np.float32).tobytes()

    def request(
        self, query: int, shape: str, ef: int | None, filters: Filters | None = None
    ) -> tuple[Query, dict[str, Any]]:
        """The FT.SEARCH of one shape, with `EF_RUNTIME $ef` unless ef is None.

        The filtered shapes use `filters` if given, else the one /similar sends for this query.
        """
        own = self._self_id(query)
        clause = (filters or self.filters(query)).clause()
        knn = f"KNN {K} @embedding $vector"
        if shape == "knn":
            where, knn = "*", f"KNN {K + (1 if own else 0)} @embedding $vector"
        elif shape == "similar":
            where = clause
        else:
            where, knn = clause, f"{knn} HYBRID_POLICY BATCHES"
        ef_clause = " EF_RUNTIME $ef" if ef is not None else ""
        request = (
            Query(f"({where})=>[{knn}{ef_clause} AS distance]")
            .sort_by("distance")
            .return_fields("distance")
            .paging(0, K + 1)
            .dialect(2)
        )
        params: dict[str, Any] = {"vector": self._blob(query)}
        if ef is not None:
            params["ef"] = ef
        return request, params

    async def hybrid_mode(self, index: str, shape: str, ef: int) -> str:
        """How RediSearch ran a shape's first product query, from FT.PROFILE."""
        request, params = self.request(0, shape, ef)
        pairs = [item for pair in params.items() for item in pair]
        profile: Any = await self.client.execute_command(  # type: ignore[no-untyped-call]
            "FT.PROFILE", index, "SEARCH", "QUERY", *request.get_args(),
            "PARAMS", len(pairs), *pairs,
        )  # fmt: skip
        tokens = list(_flatten(profile))
        if "Batches number" in tokens:
            return f"BATCHES ({tokens[tokens.index('Batches number') + 1]} batch(es))"
        if "Child iterator" not in tokens:
            return "plain KNN, no filter"
        after = tokens[tokens.index("Child iterator") :]
        counter = after[after.index("Counter") + 1]
        return (
            f"ADHOC_BF, no batches: brute force behind the filter (its iterator counter {counter})"
        )

    async def found(
        self,
        index: str,
        prefix: str,
        query: int,
        shape: str,
        ef: int | None,
        filters: Filters | None = None,
    ) -> list[tuple[str, float]]:
        """(product id, distance) of a shape's FT.SEARCH, best first, the query's own dropped."""
        own = self._self_id(query)
        request, params = self.request(query, shape, ef, filters)
        result: Any = await self.client.ft(index).search(request, params)
        hits = [(doc.id[len(prefix) :], float(doc.distance)) for doc in result.docs]
        return [hit for hit in hits if hit[0] != own][:K]

    def ft_search(self, index: str, prefix: str, shape: str, ef: int | None) -> Search:
        """A shape's FT.SEARCH as a Search: the catalog rows it found."""

        async def search(query: int) -> Rows:
            hits = await self.found(index, prefix, query, shape, ef)
            return [self.row_of[product_id] for product_id, _ in hits]

        return search

    def service_knn(self, index: VectorIndex, version: int) -> Search:
        """`VectorIndex.knn_ids` exactly as RecommendService.similar calls it."""

        async def search(query: int) -> Rows:
            hits = await index.knn_ids(
                self.queries.vectors[query], K, self.filters(query), index.name(version)
            )
            return [self.row_of[hit.product_id] for hit in hits]

        return search

    async def measure(self, index: str, shape: str, ef: str, search: Search) -> Outcome:
        count = len(self.queries.vectors)
        for query in range(min(WARM_UP_QUERIES, count)):
            await search(query)
        recall = np.zeros(count)
        strict = np.zeros(count)
        seconds = []
        for query in range(count):
            started = time.perf_counter()
            rows = await search(query)
            seconds.append(time.perf_counter() - started)
            recall[query], strict[query] = self.truth.recall(query, rows)
        return Outcome(index, shape, ef, recall, strict, seconds)


async def store_catalog(catalog: CatalogService, products: list[dict[str, Any]]) -> list[Product]:
    for batch in batches(products, BATCH):
        result = await catalog.upsert_batch(batch)
        if result.rejected:
            raise RuntimeError(f"{result.rejected} products rejected: {result.items[0]}")
    stored = await catalog.get_many([product["id"] for product in products])
    return [product for product in stored if product is not None]


async def build_hnsw(
    client: "aioredis.Redis",
    catalog: CatalogService,
    products: list[Product],
    vectors: Vectors,
    version: int,
    settings: VectorSettings,
) -> VectorIndex:
    index = VectorIndex(client, Keyspace(NAMESPACE), settings)
    await index.create(version)
    await wait_indexed(client, index.name(version), 0)  # FT.CREATE's scan of the keyspace
    started = time.perf_counter()
    for start in range(0, len(products), BATCH):
        chunk = products[start : start + BATCH]
        written = await index.write(
            version, catalog.product_key, chunk, vectors[start : start + len(chunk)], live=True
        )
        if set(written) != {1}:
            raise RuntimeError(f"guarded writes did not all land: {sorted(set(written))}")
    await wait_indexed(client, index.name(version), len(products))
    elapsed = time.perf_counter() - started
    print(
        f"built HNSW M={settings.hnsw_m} EF_CONSTRUCTION={settings.hnsw_ef_construction}: "
        f"{len(products)} docs in {elapsed:.1f} s ({len(products) / elapsed:,.0f} docs/s, "
        "VectorIndex.write in batches of 500)"
    )
    return index


async def build_flat(client: "aioredis.Redis", name: str, prefix: str, count: int) -> None:
    """A brute-force index over the documents of an HNSW index: the exact baseline."""
    schema: list[Any] = [
        VectorField("embedding", "FLAT",
                    {"TYPE": "FLOAT32", "DIM": DIMS, "DISTANCE_METRIC": "COSINE"}),
        TagField("pid", separator=TAG_SEPARATOR),
        TagField("in_stock"),
    ]  # fmt: skip
    definition = IndexDefinition(prefix=[prefix], index_type=IndexType.HASH)  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    await client.ft(name).create_index(schema, definition=definition)
    await wait_indexed(client, name, count)
    print(f"built FLAT baseline over the same documents in {time.perf_counter() - started:.1f} s")


async def write_products(
    catalog: CatalogService,
    model: EmbeddingModel,
    index: VectorIndex,
    version: int,
    items: list[dict[str, Any]],
) -> int:
    """Store products and write their vectors the service's way; how many embed as zero."""
    await catalog.upsert_batch(items)
    stored = [p for p in await catalog.get_many([item["id"] for item in items]) if p is not None]
    vectors = model.embed([product_text(product) for product in stored])
    await index.write(version, catalog.product_key, stored, vectors, live=True)
    return int((np.linalg.norm(vectors, axis=1) == 0).sum())


async def zero_vector_probe(
    bench: Bench,
    catalog: CatalogService,
    model: EmbeddingModel,
    index: VectorIndex,
    version: int,
    ef: int,
) -> None:
    """Products with no known term embed as zero; see what they do to everyone's results.

    A zero-vector product is counted as a wrong answer, so recall drops if they crowd in. Then a
    small category of a few ordinary products and the zero ones, as a category page would ask.
    """
    ids = [f"zero-{i}" for i in range(ZERO_PROBE_PRODUCTS)]
    # CJK ideographs: no word and no character n-gram of the English catalog.
    names = ["".join(chr(0x4E00 + 7 * i + j) for j in range(4)) for i in range(len(ids))]
    zeros = await write_products(catalog, model, index, version, [
        {"id": i, "name": n, "category": ZERO_PROBE_CATEGORY}
        for i, n in zip(ids, names, strict=True)
    ])  # fmt: skip
    print(
        f"\nzero-vector probe: {len(ids)} products with no known term ({zeros} zero vectors)"
        f" written with VectorIndex.write into {hnsw_label(index.settings)}; a zero-vector hit"
        " counts as a wrong answer"
    )
    name, prefix = index.name(version), index.prefix(version)
    for shape in ("VectorIndex.knn_ids", *SHAPES):
        polluted = nan = 0
        recall = []
        for query in range(len(bench.queries.vectors)):
            if shape == "VectorIndex.knn_ids":
                knn = await index.knn_ids(
                    bench.queries.vectors[query], K, bench.filters(query), name
                )
                hits = [(hit.product_id, 1.0 - hit.score) for hit in knn]
            else:
                hits = await bench.found(name, prefix, query, shape, ef)
            polluted += any(product_id in ids for product_id, _ in hits)
            nan += sum(np.isnan(distance) for _, distance in hits)
            rows = [bench.row_of[i] for i, _ in hits if i in bench.row_of]
            recall.append(bench.truth.recall(query, rows)[0])
        where = "" if shape == "VectorIndex.knn_ids" else f" EF {ef}"
        print(
            f"  {shape + where:<22} zero-vector products in {polluted:4} of "
            f"{len(bench.queries.vectors)} answers, {nan:4} NaN distances, "
            f"recall@10 {np.mean(recall):.4f}"
        )

    peers = [p for p in await catalog.get_many(bench.ids[:ZERO_PROBE_CATEGORY_PEERS]) if p]
    copies = [
        {"id": f"probe-{i}", "name": p.name, "description": p.description,
         "category": ZERO_PROBE_CATEGORY}
        for i, p in enumerate(peers)
    ]  # fmt: skip
    await write_products(catalog, model, index, version, copies)
    in_category = Filters(category=ZERO_PROBE_CATEGORY, in_stock=True)
    product_queries = np.flatnonzero(bench.queries.is_product).tolist()
    print(
        f"  category={ZERO_PROBE_CATEGORY!r} filter ({len(copies)} ordinary + {len(ids)} "
        f"zero-vector products), k={K}, {len(product_queries)} product queries:"
    )
    for shape in ("VectorIndex.knn_ids", "similar/BATCHES"):
        nan_answers = disordered = returned = 0
        for query in product_queries:
            if shape == "VectorIndex.knn_ids":
                knn = await index.knn_ids(bench.queries.vectors[query], K, in_category, name)
                distances = [1.0 - hit.score for hit in knn]
            else:
                found = await bench.found(name, prefix, query, shape, ef, in_category)
                distances = [distance for _, distance in found]
            returned += len(distances)
            nan_answers += any(np.isnan(distance) for distance in distances)
            real = [i for i, distance in enumerate(distances) if not np.isnan(distance)]
            disordered += bool(real) and real != list(range(len(real)))
        print(
            f"    {shape:<20} {returned / len(product_queries):4.1f} hits per answer, NaN "
            f"distances in {nan_answers} answers, a NaN ranked above a real hit in {disordered}"
        )
    await index.delete(version, ids + [copy["id"] for copy in copies], live=True)


async def run(args: argparse.Namespace) -> None:
    configs = parse_configs(args.configs)
    efs = [int(ef) for ef in args.ef.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-recall-") as tmp:
        work = Path(tmp)
        catalog_data = load_crowdflower(work)
        texts: list[ProductText] = catalog_data.texts()
        started = time.perf_counter()
        model = fit_model(texts, version=1)
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        vectors = model.embed(texts)
        print(
            f"catalog: {len(texts)} products, {len(catalog_data.queries)} distinct queries; "
            f"fit {fitted:.1f} s ({model.info.components} components, vocabulary "
            f"{model.info.vocabulary_size}), embed all {time.perf_counter() - started:.2f} s"
        )
        queries = build_queries(
            catalog_data, vectors, model.embed_query, args.product_queries, args.seed
        )
        truth = Truth.exact(queries, vectors)
        ties = int((np.abs(truth.scores - truth.tenth[:, None]) <= TIE_TOLERANCE).sum(1).max())
        print(
            f"queries: {int(queries.is_product.sum())} product vectors + "
            f"{int((~queries.is_product).sum())} search queries; exact top 10 by numpy; "
            f"most products tied at a query's 10th score: {ties}"
        )
        with private_redis(work / "redis") as server:
            client = create_client(RedisSettings(), server.url)
            try:
                await measure_all(
                    client, catalog_data, model, vectors, queries, truth, configs, efs
                )
            finally:
                await client.aclose()


async def measure_all(
    client: "aioredis.Redis",
    catalog_data: Catalog,
    model: EmbeddingModel,
    vectors: Vectors,
    queries: QuerySet,
    truth: Truth,
    configs: Sequence[tuple[int, int]],
    efs: Sequence[int],
) -> None:
    print(f"machine: {machine_load()}")
    catalog = CatalogService(CatalogRepository(client, Keyspace(NAMESPACE)), CatalogSettings())
    products = await store_catalog(catalog, catalog_data.products)
    ids = [product.id for product in products]
    bench = Bench(client, queries, truth, ids)
    indexes: list[tuple[int, VectorIndex]] = []
    for version, (m, ef_construction) in enumerate(configs, start=1):
        settings = VectorSettings(hnsw_m=m, hnsw_ef_construction=ef_construction)
        index = await build_hnsw(client, catalog, products, vectors, version, settings)
        indexes.append((version, index))
    first_version, first = indexes[0]
    flat = f"{NAMESPACE}idx:flat"
    await build_flat(client, flat, first.prefix(first_version), len(products))

    version, index = indexes[0]
    for shape in SHAPES:
        mode = await bench.hybrid_mode(index.name(version), shape, efs[0])
        print(f"FT.PROFILE, shape {shape}: {mode}")

    pings = []
    for _ in range(1000):
        started = time.perf_counter()
        await client.ping()
        pings.append(time.perf_counter() - started)
    print(f"baseline PING round trip: {describe_ms(pings)}")

    baselines = {
        shape: await bench.measure("FLAT (exact)", shape, "-",
                                   bench.ft_search(flat, first.prefix(first_version), shape, None))
        for shape in SHAPES
    }  # fmt: skip
    outcomes: list[Outcome] = []
    for version, index in indexes:
        label = hnsw_label(index.settings)
        outcomes.append(
            await bench.measure(label, "VectorIndex.knn_ids", str(index.settings.hnsw_ef_runtime),
                                bench.service_knn(index, version))
        )  # fmt: skip
        for ef in efs:
            for shape in SHAPES:
                search = bench.ft_search(index.name(version), index.prefix(version), shape, ef)
                outcomes.append(await bench.measure(label, shape, str(ef), search))

    print(f"\nmachine: {machine_load()}")
    print(f"recall@10 (tie-aware) and latency, {len(queries.vectors)} queries, one at a time")
    print(HEADER)
    for outcome in [*baselines.values(), *outcomes]:
        baseline = baselines.get(outcome.shape, baselines["similar"])
        baseline_ms = float(milliseconds(baseline.seconds).mean())
        print(outcome.row(queries.is_product, baseline_ms))

    print(f"\nsmallest EF_RUNTIME with recall@10 >= {TARGET_RECALL} (all queries):")
    for _, index in indexes:
        label = hnsw_label(index.settings)
        for shape in SHAPES:
            passing = [
                o for o in outcomes
                if o.index == label and o.shape == shape and o.recall.mean() >= TARGET_RECALL
            ]  # fmt: skip
            best = min(passing, key=lambda o: int(o.ef), default=None)
            if best is None:
                print(f"  {label} {shape:<16}: none in the sweep")
                continue
            worst = min(
                best.recall[queries.is_product].mean(), best.recall[~queries.is_product].mean()
            )
            print(
                f"  {label} {shape:<16}: EF_RUNTIME {best.ef:>3} (recall {best.recall.mean():.4f}, "
                f"weaker subset {worst:.4f}; mean {milliseconds(best.seconds).mean():.3f} ms)"
            )
    await zero_vector_probe(bench, catalog, model, first, first_version, efs[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        default="16:100,16:200,32:200",
        help="HNSW M:EF_CONSTRUCTION pairs (default: %(default)s)",
    )
    parser.add_argument(
        "--ef", default="10,20,50,100,200", help="EF_RUNTIME values to sweep (default: %(default)s)"
    )
    parser.add_argument(
        "--product-queries",
        type=int,
        default=740,
        help="product vectors used as queries (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="query sample seed")
    args = parser.parse_args(argv)  # fmt: skip
    quiet_logs()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
