"""Convert the UCI "Online Retail" invoice lines into a catalog and a purchase-event log.

Products are stock codes (name = most frequent description, price = median unit price in GBP);
events are the purchased invoice lines of known customers, each with a stable event_id (invoice
number and the line's position in the invoice), so importing the file twice counts each once.
Cancellations, returns, zero-priced lines and fee codes (POST, DOT, M, ...) are dropped. Reads
the shared, read-only data in place.

    python -m benchmarks.datasets.online_retail OUT_DIR [--source PATH]
"""

import argparse
import csv
import gzip
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.datasets.catalog import DATA_DIR, NAME_MAX, Product, write_products

SOURCE = DATA_DIR / "online-retail" / "online-retail-2010-12-to-2011-09.csv.gz"
EVENT_FIELDS = (
    "event_id",
    "timestamp",
    "user_id",
    "session_id",
    "type",
    "product_id",
    "order_id",
    "quantity",
    "price",
)

# Product codes are five digits plus an optional letter; anything else is a fee or adjustment.
_PRODUCT_CODE = re.compile(r"^\d{5}[A-Za-z]?$")


@dataclass(frozen=True, slots=True)
class Summary:
    """What one conversion wrote."""

    products: int
    events: int
    users: int
    orders: int
    first_timestamp: str
    last_timestamp: str

    def __str__(self) -> str:
        return (
            f"online_retail: {self.products} products, {self.events} events, {self.users} users, "
            f"{self.orders} orders, {self.first_timestamp} .. {self.last_timestamp}"
        )


def product_code(raw: str) -> str | None:
    """The normalised product id for a StockCode, or None for fee and non-product codes."""
    code = raw.strip()
    # The source mixes "85123a" and "85123A" for the same product.
    return code.upper() if _PRODUCT_CODE.match(code) else None


def event_id(invoice: str, line: int) -> str:
    """The id of an invoice's `line`-th row (1-based, counting every row of the source)."""
    return f"{invoice}:{line}"


def to_timestamp(raw: str) -> str:
    """ISO 8601 UTC timestamp for an InvoiceDate ("2011-01-04 10:00:00" -> "...T10:00:00Z")."""
    return datetime.fromisoformat(raw).isoformat() + "Z"


def convert(source: Path, out_dir: Path) -> Summary:
    """Write OUT_DIR/products.jsonl and OUT_DIR/events.csv from the Online Retail invoice lines."""
    names: defaultdict[str, Counter[str]] = defaultdict(Counter)  # code -> description counts
    prices: defaultdict[str, list[Decimal]] = defaultdict(list)  # code -> unit prices
    events: list[tuple[str, str, str, str, str, str, str, str, str]] = []
    lines: Counter[str] = Counter()  # invoice -> rows seen so far
    with gzip.open(source, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            # Counted before any row is dropped: an id never depends on the filters below.
            lines[row["InvoiceNo"]] += 1
            code = product_code(row["StockCode"])
            quantity = int(row["Quantity"])
            price = Decimal(row["UnitPrice"])
            if code is None or row["InvoiceNo"].startswith("C") or quantity <= 0 or price <= 0:
                continue
            prices[code].append(price)  # also fixes the product order: first appearance
            if description := row["Description"].strip():
                names[code][description] += 1
            if customer := row["CustomerID"].strip():
                events.append(
                    (
                        event_id(row["InvoiceNo"], lines[row["InvoiceNo"]]),
                        to_timestamp(row["InvoiceDate"]),
                        str(int(Decimal(customer))),  # "17850.0" -> "17850"
                        "",
                        "purchase",
                        code,
                        row["InvoiceNo"],
                        str(quantity),
                        str(price),
                    )
                )

    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = [
        Product(
            id=code,
            # Counter.most_common breaks ties by first appearance, so the choice is stable.
            name=names[code].most_common(1)[0][0][:NAME_MAX],
            description="",
            price=float(statistics.median(code_prices)),
            currency="GBP",
        )
        for code, code_prices in prices.items()
        if code in names  # codes seen only without a description are left out
    ]
    products = write_products(out_dir / "products.jsonl", catalog)
    # Events must point at catalog products, so lines of description-less codes go too.
    known = {product.id for product in catalog}
    events = sorted((event for event in events if event[5] in known), key=lambda event: event[1])
    with (out_dir / "events.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(EVENT_FIELDS)
        writer.writerows(events)
    return Summary(
        products=products,
        events=len(events),
        users=len({event[2] for event in events}),
        orders=len({event[6] for event in events}),
        first_timestamp=events[0][1] if events else "",
        last_timestamp=events[-1][1] if events else "",
    )


def read_converted(out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What `convert` wrote to `out_dir`, as the API's request bodies: products and events."""
    with (out_dir / "products.jsonl").open("rb") as handle:
        products = [msgspec.json.decode(line) for line in handle]
    with (out_dir / "events.csv").open(encoding="utf-8", newline="") as handle:
        events = [
            {
                "event_id": row["event_id"],
                "type": row["type"],
                "user_id": row["user_id"],
                "product_id": row["product_id"],
                "order_id": row["order_id"],
                "quantity": int(row["quantity"]),
                "price": float(row["price"]),
                "timestamp": row["timestamp"],  # RFC 3339 with a zone ("...Z")
            }
            for row in csv.DictReader(handle)
        ]
    return products, events


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Convert the Online Retail invoice lines.")
    parser.add_argument("out_dir", type=Path, help="directory for products.jsonl and events.csv")
    parser.add_argument(
        "--source", type=Path, default=SOURCE, help="the .csv.gz file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    print(convert(args.source, args.out_dir))


if __name__ == "__main__":
    main()
