"""Quality and speed of the product embedding model: `python -m benchmarks.embedding`.

Quality: the CrowdFlower "Search Results Relevance" judgements (../shared/data, read in place).
Every distinct product title is a product (its description with HTML stripped); the model is
fitted on all of them, each query is embedded with `embed_query`, its judged products are ranked
by cosine, and NDCG@10 over the judged products only (condensed list, gain = median_relevance
- 1) is averaged over the queries. A few configurations are compared, the default among them.
Speed, for the default: fit time, one-text latency of the fast path against scikit-learn's own
pipeline (same fitted model, same run), batch throughput and the serialised size.
"""

import csv
import gzip
import html
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from msgspec.structs import replace
from sklearn.pipeline import Pipeline

from recommender.vectors.model import (
    DEFAULT_CONFIG,
    EmbeddingModel,
    FieldSpec,
    ModelConfig,
    ProductText,
    fit_pipeline,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRAIN = DATA / "crowdflower-search" / "train.csv.gz"
K = 10
SEED = 0
BATCH = 100
_TAG = re.compile(r"<[^>]+>")

WORDS = ModelConfig(
    fields=(
        FieldSpec("name", 1.0, max_features=20_000),
        FieldSpec("description", 0.5, max_features=10_000),
    )
)
CONFIGS: dict[str, ModelConfig] = {
    "words (1,2): name 1.0, description 0.5": WORDS,
    "words (1,1) only": ModelConfig(
        tuple(replace(spec, ngram_range=(1, 1)) for spec in WORDS.fields)
    ),
    "words (1,2), raw tf (sublinear_tf off)": ModelConfig(
        tuple(replace(spec, sublinear_tf=False) for spec in WORDS.fields)
    ),
    "default: words + name char_wb (2,4)": DEFAULT_CONFIG,
    "default with description 1.0 (= name)": ModelConfig(
        tuple(replace(spec, weight=1.0) for spec in DEFAULT_CONFIG.fields)
    ),
}

Judgements = dict[str, list[tuple[int, float]]]


def load() -> tuple[list[ProductText], Judgements]:
    """Products (one per distinct title) and, per query, (product index, gain) pairs."""
    with gzip.open(TRAIN, "rt", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    descriptions: dict[str, str] = {}
    for row in rows:
        title = row["product_title"]
        text = " ".join(html.unescape(_TAG.sub(" ", row["product_description"])).split())
        # A title listed with several descriptions keeps the longest, the most informative.
        if len(text) >= len(descriptions.get(title, "")):
            descriptions[title] = text
    titles = sorted(descriptions)
    index = {title: i for i, title in enumerate(titles)}
    gains: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in rows:
        gains[row["query"], index[row["product_title"]]].append(float(row["median_relevance"]) - 1)
    judged: Judgements = defaultdict(list)
    # A pair judged more than once (272 pairs) gets the mean of its gains.
    for (query, product), values in gains.items():
        judged[query].append((product, statistics.fmean(values)))
    return [ProductText(title, descriptions[title]) for title in titles], dict(judged)


def ndcg(
    products: npt.NDArray[np.float32],
    queries: Mapping[str, npt.NDArray[np.float32]],
    judged: Judgements,
) -> float:
    discounts = 1 / np.log2(np.arange(2, K + 2))
    scores = []
    for query, pairs in judged.items():
        ids = np.array([product for product, _ in pairs])
        gains = np.array([gain for _, gain in pairs])
        # Stable sort: ties keep file order, so zero vectors cannot reorder by chance.
        ranked = gains[np.argsort(-(products[ids] @ queries[query]), kind="stable")][:K]
        ideal = np.sort(gains)[::-1][:K]
        if ideal.any():
            scores.append(ranked @ discounts[: len(ranked)] / (ideal @ discounts[: len(ideal)]))
    return float(np.mean(scores))


def per_call(function: Callable[[Any], object], argument: Any, calls: int) -> float:
    """Median seconds of one call."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function(argument)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quality(texts: Sequence[ProductText], judged: Judgements) -> None:
    print(f"{len(texts)} products, {len(judged)} queries, NDCG@{K} over judged products;")
    print("query: embed_query (the query in every field); as name: the query as a name only")
    print(f"{'configuration':42} {'query':>7} {'as name':>7} {'fit s':>6} {'terms':>6} {'var':>5}")
    for label, config in CONFIGS.items():
        start = time.perf_counter()
        pipeline = fit_pipeline(texts, random_state=SEED, config=config)
        model = EmbeddingModel.from_pipeline(pipeline, version=1, documents=len(texts))
        fit = time.perf_counter() - start
        products = model.embed(texts)
        queries = {query: model.embed_query(query) for query in judged}
        as_name = {query: model.embed([ProductText(query)])[0] for query in judged}
        info = model.info
        print(
            f"{label:42} {ndcg(products, queries, judged):7.4f} "
            f"{ndcg(products, as_name, judged):7.4f} {fit:6.1f} {info.vocabulary_size:6d} "
            f"{info.explained_variance_ratio:5.3f}",
            flush=True,
        )
        if config is DEFAULT_CONFIG:
            speed(pipeline, model, texts, judged)


def speed(
    pipeline: Pipeline, model: EmbeddingModel, texts: Sequence[ProductText], judged: Judgements
) -> None:
    transform = pipeline.transform
    sample = texts[:: len(texts) // 1000][:1000]
    reference = transform(sample)
    error = np.abs(model.embed(sample)[:, : reference.shape[1]] - reference).max()
    single = [[text] for text in texts[:: len(texts) // 200]]
    fast = statistics.median(per_call(model.embed, one, 3) for one in single)
    slow = statistics.median(per_call(transform, one, 1) for one in single[:40])
    query = statistics.median(per_call(model.embed_query, q, 3) for q in list(judged)[:100])
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    start = time.perf_counter()
    for batch in batches:
        model.embed(batch)
    fast_batch = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    for batch in batches[:20]:
        transform(batch)
    slow_batch = 20 * BATCH / (time.perf_counter() - start)
    start = time.perf_counter()
    blob = model.to_bytes()
    dump = time.perf_counter() - start
    start = time.perf_counter()
    EmbeddingModel.from_bytes(blob)
    load_time = time.perf_counter() - start
    print(f"  fast path vs sklearn pipeline: max |difference| {error:.1e} over {len(sample)} texts")
    print(
        f"  one text: fast path {fast * 1e6:.0f} us, sklearn pipeline {slow * 1e3:.1f} ms "
        f"({slow / fast:.0f}x faster); one query (embed_query): {query * 1e6:.0f} us"
    )
    print(
        f"  batches of {BATCH}: fast path {fast_batch:,.0f} docs/s, sklearn pipeline "
        f"{slow_batch:,.0f} docs/s ({fast_batch / slow_batch:.1f}x)"
    )
    print(f"  to_bytes {len(blob) / 1e6:.1f} MB in {dump:.2f} s, from_bytes {load_time:.2f} s")


def main() -> None:
    start = time.perf_counter()
    texts, judged = load()
    quality(texts, judged)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
