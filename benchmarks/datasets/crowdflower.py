"""Convert the CrowdFlower "Search Results Relevance" training file into a catalog and judgments.

Every distinct product title becomes one product (id derived from the title); every graded
(query, title) pair becomes one judgment row. Reads the shared, read-only data in place.

    python -m benchmarks.datasets.crowdflower OUT_DIR [--source PATH]
"""

import argparse
import csv
import gzip
import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.datasets.catalog import DATA_DIR, DESCRIPTION_MAX, NAME_MAX, Product, write_products

SOURCE = DATA_DIR / "crowdflower-search" / "train.csv.gz"

# A tag starts with a letter, "/" or "!"; this leaves bare "<" in text ("< 1 ns") alone.
_TAG = re.compile(r"<[A-Za-z/!][^<>]*>")
# The source title-cases some entity names (&Amp;) and drops the "#" from some numeric ones (&39;).
_SLOPPY_ENTITY = re.compile(r"&([A-Z][a-z]+|\d+);")


@dataclass(frozen=True, slots=True)
class Summary:
    """What one conversion wrote."""

    products: int
    judgments: int
    queries: int

    def __str__(self) -> str:
        return (
            f"crowdflower: {self.products} products, {self.judgments} judgments, "
            f"{self.queries} queries"
        )


def product_id(title: str) -> str:
    """Stable product id for a title: "cf-" plus the first 16 hex digits of its SHA-1."""
    return "cf-" + hashlib.sha1(title.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]


def _fix_entity(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"&#{name};" if name.isdigit() else f"&{name.lower()};"


def clean_description(raw: str) -> str:
    """Plain text of an HTML-ish description: no tags, entities decoded, whitespace collapsed."""
    # Tags become spaces so "<li>a</li><li>b</li>" does not glue words together.
    text = _TAG.sub(" ", raw)
    text = html.unescape(_SLOPPY_ENTITY.sub(_fix_entity, text))
    return " ".join(text.split())[:DESCRIPTION_MAX]


def convert(source: Path, out_dir: Path) -> Summary:
    """Write OUT_DIR/products.jsonl and OUT_DIR/judgments.csv from the CrowdFlower train file."""
    descriptions: dict[str, str] = {}  # title -> longest cleaned description; keeps source order
    relevance: dict[tuple[str, str], int] = {}  # (query, title) -> highest median relevance
    with gzip.open(source, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            title = row["product_title"]
            description = clean_description(row["product_description"])
            if len(description) > len(descriptions.setdefault(title, "")):
                descriptions[title] = description
            pair = (row["query"], title)
            relevance[pair] = max(relevance.get(pair, 0), int(row["median_relevance"]))

    out_dir.mkdir(parents=True, exist_ok=True)
    products = write_products(
        out_dir / "products.jsonl",
        (
            Product(id=product_id(title), name=title[:NAME_MAX], description=description)
            for title, description in descriptions.items()
        ),
    )
    judgments = sorted(
        (query, product_id(title), grade) for (query, title), grade in relevance.items()
    )
    with (out_dir / "judgments.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["query", "product_id", "relevance"])
        writer.writerows(judgments)
    return Summary(
        products=products,
        judgments=len(judgments),
        queries=len({query for query, _, _ in judgments}),
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Convert CrowdFlower search relevance data.")
    parser.add_argument("out_dir", type=Path, help="directory for products.jsonl and judgments.csv")
    parser.add_argument(
        "--source", type=Path, default=SOURCE, help="train.csv.gz (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    print(convert(args.source, args.out_dir))


if __name__ == "__main__":
    main()
