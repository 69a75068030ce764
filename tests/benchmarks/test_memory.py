"""The memory benchmark's core on a tiny synthetic catalog and history, on a private Redis.

A private server, not the session's: the benchmark's total is the server's used_memory before
and after, which only means something when nothing else writes to it meanwhile.
"""

from pathlib import Path

import pytest
from benchmarks.datasets.synthetic import Vocabulary, generate
from benchmarks.memory import (
    AGGREGATES,
    CATALOG_SETS,
    INDEX,
    MARKERS,
    MODEL,
    PRODUCTS,
    SHOPPERS,
    VECTORS,
    Workload,
    kind_of,
    measure,
)
from benchmarks.support import private_redis

from recommender.config import RedisSettings
from recommender.platform.redis import create_client

NAMES = [
    "Stainless Steel Water Bottle",
    "Red Cotton Throw Pillow Cover",
    "Wireless Bluetooth Headphones Black",
    "Ceramic Coffee Mug Set of Four",
    "Kids Rain Boots Yellow",
]
DESCRIPTIONS = [
    "Keeps drinks cold for a day and hot for twelve hours; the lid seals and the steel is safe.",
    "A soft cotton cover with a hidden zip, washable at forty degrees, for any sofa or bed.",
    "Over-ear headphones with a long battery, a folding frame and a case for travel.",
]


def purchases(products: list[str]) -> list[dict[str, object]]:
    """Three users' orders of a few products each, a day apart."""
    return [
        {
            "type": "purchase",
            "user_id": f"u{user}",
            "product_id": products[(user * 7 + line) % len(products)],
            "order_id": f"o{user}-{order}",
            "event_id": f"e{user}-{order}-{line}",
            "timestamp": f"2024-05-{order + 1:02d}T10:00:00Z",
        }
        for user in range(3)
        for order in range(2)
        for line in range(3)
    ]


def test_kind_of_names_every_repository_key() -> None:
    assert kind_of("product:p1") == PRODUCTS
    assert kind_of("vec:3:p1") == VECTORS
    assert kind_of("model:3") == MODEL
    assert kind_of("model:state") != MODEL
    assert kind_of("catalog:category:Home > Mugs") == CATALOG_SETS
    assert kind_of("history:user:u1") == SHOPPERS
    assert kind_of("co:purchase:p1") == AGGREGATES
    assert kind_of("recent:purchase:user:u1") == SHOPPERS
    assert kind_of("copair:view:p1") == AGGREGATES
    assert kind_of("event:seen:e1") == MARKERS
    assert kind_of("agg:clock") not in {MARKERS, AGGREGATES}


@pytest.mark.asyncio
async def test_tiny_catalog_is_measured_part_by_part(tmp_path: Path) -> None:
    products = generate(200, Vocabulary.of(NAMES, DESCRIPTIONS), seed=1)
    workload = Workload("tiny", products, purchases([p["id"] for p in products]))

    with private_redis(tmp_path / "redis") as server:
        client = create_client(RedisSettings(), server.url)
        try:
            report = await measure(client, workload, sample=50, seed=0, progress=lambda _: None)
        finally:
            await client.aclose()

    assert report.products == 200
    assert report.index_documents == 200
    assert report.total > 0
    assert report.per_product(report.total) > 0
    for name in (PRODUCTS, VECTORS, INDEX, MODEL, CATALOG_SETS, SHOPPERS, AGGREGATES, MARKERS):
        assert report.part(name).bytes > 0, name
    assert report.part(PRODUCTS).keys == 200
    assert report.part(VECTORS).keys == 200
    assert all(row.bytes > 0 for row in report.part(VECTORS).rows)
    assert 0 < report.accounted <= report.total
