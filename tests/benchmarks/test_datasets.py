"""Tests for the benchmark data-set converters, on tiny synthetic files and on the shared data."""

import csv
import gzip
import hashlib
import io
from pathlib import Path

import msgspec
import pytest
from benchmarks.datasets import crowdflower, online_retail
from benchmarks.datasets.catalog import Product

from recommender.config import Settings
from recommender.importing import Progress, import_events_into_redis, read_event_csv
from recommender.services import Services
from recommender.tracking import Shopper

CROWDFLOWER_HEADER = [
    "id",
    "query",
    "product_title",
    "product_description",
    "median_relevance",
    "relevance_variance",
]
RETAIL_HEADER = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]


def write_gzip_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_products(path: Path) -> list[Product]:
    # Decoding with the typed struct also checks the schema constraints (id pattern, lengths).
    return [msgspec.json.decode(line, type=Product) for line in path.read_bytes().splitlines()]


def sha_id(title: str) -> str:
    return "cf-" + hashlib.sha1(title.encode()).hexdigest()[:16]


def test_crowdflower_product_id_is_stable() -> None:
    title = "Accent Pillow with Heart Design - Red/Black"
    assert crowdflower.product_id(title) == "cf-d3f052dc011c7c2a"


def test_crowdflower_convert(tmp_path: Path) -> None:
    source = write_gzip_csv(
        tmp_path / "train.csv.gz",
        CROWDFLOWER_HEADER,
        [
            [
                "1",
                "red pillow",
                "Accent Pillow",
                "<p>Red&nbsp;satin <b>pillow</b></p>\n\n8&Amp;8",
                "3",
                "0",
            ],
            ["2", "red pillow", "Accent Pillow", "", "4", "0.5"],
            ["3", "cushion", "Accent Pillow", "<ul><li>Short</li></ul>", "2", "0"],
            ["4", "projector", "ViewSonic Pro8200", "", "4", "0"],
            ["5", "projector", "Fast Sensor", "Response time < 1 ns<br/>and&39;s\t fast", "1", "0"],
        ],
    )
    out_dir = tmp_path / "out"

    summary = crowdflower.convert(source, out_dir)

    assert summary == crowdflower.Summary(products=3, judgments=4, queries=3)
    assert (out_dir / "products.jsonl").read_text(encoding="utf-8").splitlines() == [
        f'{{"id":"{sha_id("Accent Pillow")}","name":"Accent Pillow",'
        '"description":"Red satin pillow 8&8"}',
        f'{{"id":"{sha_id("ViewSonic Pro8200")}","name":"ViewSonic Pro8200","description":""}}',
        f'{{"id":"{sha_id("Fast Sensor")}","name":"Fast Sensor",'
        '"description":"Response time < 1 ns and\'s fast"}',
    ]
    assert (out_dir / "judgments.csv").read_text(encoding="utf-8") == (
        "query,product_id,relevance\n"
        f"cushion,{sha_id('Accent Pillow')},2\n"
        f"projector,{sha_id('ViewSonic Pro8200')},4\n"  # sorted by id: cf-6604... < cf-a92e...
        f"projector,{sha_id('Fast Sensor')},1\n"
        f"red pillow,{sha_id('Accent Pillow')},4\n"
    )
    assert len(read_products(out_dir / "products.jsonl")) == 3


def test_crowdflower_main_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_gzip_csv(
        tmp_path / "train.csv.gz", CROWDFLOWER_HEADER, [["1", "q", "Title", "", "4", "0"]]
    )

    crowdflower.main([str(tmp_path / "out"), "--source", str(source)])

    assert capsys.readouterr().out == "crowdflower: 1 products, 1 judgments, 1 queries\n"


def test_online_retail_convert(tmp_path: Path) -> None:
    uk = "United Kingdom"
    source = write_gzip_csv(
        tmp_path / "retail.csv.gz",
        RETAIL_HEADER,
        [
            [
                "536365",
                "85123A",
                "WHITE HANGING HEART T-LIGHT HOLDER",
                "6",
                "2010-12-01 08:26:00",
                "2.55",
                "17850.0",
                uk,
            ],
            [
                "536365",
                "71053",
                "WHITE METAL LANTERN",
                "6",
                "2010-12-01 08:26:00",
                "3.39",
                "17850.0",
                uk,
            ],
            ["536365", "POST", "POSTAGE", "1", "2010-12-01 08:26:00", "18.0", "17850.0", uk],
            [
                "C536379",
                "85123A",
                "WHITE HANGING HEART T-LIGHT HOLDER",
                "-1",
                "2010-12-01 09:41:00",
                "2.55",
                "17850.0",
                uk,
            ],
            [
                "536380",
                "85123a",
                "WHITE HANGING HEART T-LIGHT HOLDER ",
                "2",
                "2010-12-01 09:00:00",
                "2.95",
                "",
                uk,
            ],
            [
                "536381",
                "22632",
                "HAND WARMER RED POLKA DOT",
                "-3",
                "2010-12-01 10:00:00",
                "1.85",
                "13047.0",
                uk,
            ],
            [
                "536382",
                "22632",
                "HAND WARMER RED RETROSPOT",
                "12",
                "2010-12-02 11:00:00",
                "1.85",
                "13047.0",
                uk,
            ],
            [
                "536383",
                "22632",
                "HAND WARMER RED RETROSPOT",
                "6",
                "2010-12-01 12:00:00",
                "2.10",
                "14000.0",
                uk,
            ],
            [
                "536384",
                "22633",
                "HAND WARMER UNION JACK",
                "1",
                "2010-12-01 13:00:00",
                "0.0",
                "14000.0",
                uk,
            ],
            ["536385", "21000", "", "5", "2010-12-01 14:00:00", "1.00", "14000.0", uk],
            [
                "536386",
                "15056BL",
                "EDWARDIAN PARASOL BLACK",
                "1",
                "2010-12-01 15:00:00",
                "5.95",
                "14000.0",
                uk,
            ],
        ],
    )
    out_dir = tmp_path / "out"

    summary = online_retail.convert(source, out_dir)

    assert summary == online_retail.Summary(
        products=3,
        events=4,
        users=3,
        orders=3,
        first_timestamp="2010-12-01T08:26:00Z",
        last_timestamp="2010-12-02T11:00:00Z",
    )
    assert (out_dir / "products.jsonl").read_text(encoding="utf-8").splitlines() == [
        '{"id":"85123A","name":"WHITE HANGING HEART T-LIGHT HOLDER","description":"",'
        '"price":2.75,"currency":"GBP"}',
        '{"id":"71053","name":"WHITE METAL LANTERN","description":"","price":3.39,'
        '"currency":"GBP"}',
        '{"id":"22632","name":"HAND WARMER RED RETROSPOT","description":"","price":1.975,'
        '"currency":"GBP"}',
    ]
    assert (out_dir / "events.csv").read_text(encoding="utf-8") == (
        "event_id,timestamp,user_id,session_id,type,product_id,order_id,quantity,price\n"
        "536365:1,2010-12-01T08:26:00Z,17850,,purchase,85123A,536365,6,2.55\n"
        "536365:2,2010-12-01T08:26:00Z,17850,,purchase,71053,536365,6,3.39\n"
        "536383:1,2010-12-01T12:00:00Z,14000,,purchase,22632,536383,6,2.10\n"
        "536382:1,2010-12-02T11:00:00Z,13047,,purchase,22632,536382,12,1.85\n"
    )
    assert len(read_products(out_dir / "products.jsonl")) == 3


def retail_row(invoice: str, code: str, customer: str = "17850.0") -> list[str]:
    return [invoice, code, f"ITEM {code}", "1", "2011-01-04 10:00:00", "1.00", customer, "UK"]


@pytest.mark.asyncio
async def test_online_retail_events_import_twice_count_once(
    tmp_path: Path, settings: Settings, services: Services
) -> None:
    source = write_gzip_csv(
        tmp_path / "retail.csv.gz",
        RETAIL_HEADER,
        [
            retail_row("536365", "POST"),  # dropped, yet it is the invoice's first line
            retail_row("536365", "10002"),
            retail_row("536365", "10002"),  # the same product twice: two lines, two events
            retail_row("536366", "10003", customer=""),  # a guest: no event
            retail_row("536366", "10002", customer="12346.0"),
        ],
    )
    online_retail.convert(source, tmp_path / "a")
    online_retail.convert(source, tmp_path / "b")
    events = (tmp_path / "a" / "events.csv").read_text(encoding="utf-8")
    assert events == (tmp_path / "b" / "events.csv").read_text(encoding="utf-8")
    with (tmp_path / "a" / "events.csv").open(encoding="utf-8", newline="") as handle:
        ids = [row["event_id"] for row in csv.DictReader(handle)]
    assert ids == ["536365:2", "536365:3", "536366:2"]

    for expected in ((3, 0), (0, 3)):
        with (tmp_path / "a" / "events.csv").open("rb") as handle:
            summary = await import_events_into_redis(
                read_event_csv(handle), settings, 500, Progress(io.StringIO())
            )
        assert (summary.imported, summary.duplicates) == expected
    assert len(await services.tracking.history(Shopper("user", "17850"))) == 2


def test_online_retail_main_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_gzip_csv(
        tmp_path / "retail.csv.gz",
        RETAIL_HEADER,
        [["1", "10002", "X", "1", "2011-01-04 10:00:00", "0.85", "12346.0", "UK"]],
    )

    online_retail.main([str(tmp_path / "out"), "--source", str(source)])

    assert capsys.readouterr().out == (
        "online_retail: 1 products, 1 events, 1 users, 1 orders, "
        "2011-01-04T10:00:00Z .. 2011-01-04T10:00:00Z\n"
    )


def test_crowdflower_real_data(tmp_path: Path) -> None:
    if not crowdflower.SOURCE.exists():
        pytest.skip(f"shared data not found at {crowdflower.SOURCE}")

    summary = crowdflower.convert(crowdflower.SOURCE, tmp_path)

    assert summary.products == 9_708
    assert summary.queries == 261
    assert 9_708 <= summary.judgments <= 10_158
    products = read_products(tmp_path / "products.jsonl")
    assert len({product.id for product in products}) == summary.products
    assert not any("<br" in product.description for product in products)


def test_online_retail_real_data(tmp_path: Path) -> None:
    if not online_retail.SOURCE.exists():
        pytest.skip(f"shared data not found at {online_retail.SOURCE}")

    summary = online_retail.convert(online_retail.SOURCE, tmp_path)

    assert 3_000 <= summary.products <= 3_887
    assert summary.events > 200_000
    assert 3_000 <= summary.users <= 3_658
    assert 10_000 <= summary.orders <= 18_786
    assert summary.first_timestamp.startswith("2010-12-01T")
    assert summary.last_timestamp.startswith("2011-09-30T")
    catalog = {product.id for product in read_products(tmp_path / "products.jsonl")}
    with (tmp_path / "events.csv").open(encoding="utf-8", newline="") as handle:
        assert {row["product_id"] for row in csv.DictReader(handle)} <= catalog
