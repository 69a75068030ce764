"""`recommender import products`: parsing, batching, both write modes, the summary, the CLI."""

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from conftest import run_cli
from recommender.config import EmbeddedRedisSettings, Settings
from recommender.importing import (
    ApiSink,
    ImportInputError,
    ImportSummary,
    MalformedFileError,
    Progress,
    Rejection,
    SourceItem,
    batches,
    detect_format,
    import_into_redis,
    import_via_api,
    read_csv,
    read_jsonl,
)
from recommender.platform.embedded import EmbeddedRedis
from recommender.services import Services


def quiet() -> Progress:
    return Progress(io.StringIO())


def jsonl(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def read(reader: Any, data: bytes) -> list[SourceItem]:
    return list(reader(io.BytesIO(data)))


MUG = {"id": "mug-1", "name": "Red mug", "price": 9.5, "tags": ["kitchen"]}
KETTLE = {"id": "kettle-1", "name": "Steel kettle"}


# -- reading --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "explicit", "expected"),
    [
        ("a.jsonl", None, "jsonl"),
        ("a.NDJSON", None, "jsonl"),
        ("dir.v2/a.csv", None, "csv"),
        ("-", None, "jsonl"),
        ("a.txt", "csv", "csv"),
    ],
)
def test_format_comes_from_the_option_else_the_extension(
    name: str, explicit: str | None, expected: str
) -> None:
    assert detect_format(name, explicit) == expected


def test_unknown_extension_asks_for_format() -> None:
    with pytest.raises(ImportInputError, match="--format"):
        detect_format("products.txt")


def test_jsonl_items_carry_their_line_and_blank_lines_are_skipped() -> None:
    items = read(read_jsonl, b"\xef\xbb\xbf" + jsonl(MUG) + b"\n  \n" + jsonl(KETTLE, 42))
    assert [(item.line, item.data) for item in items] == [(1, MUG), (4, KETTLE), (5, 42)]


def test_invalid_json_names_its_line() -> None:
    with pytest.raises(MalformedFileError, match=r"^line 2: invalid JSON") as raised:
        read(read_jsonl, jsonl(MUG, b'{"id": "x",', KETTLE))
    assert raised.value.line == 2


def test_non_utf8_names_its_line() -> None:
    with pytest.raises(MalformedFileError, match="line 2: not UTF-8"):
        read(read_jsonl, jsonl(MUG, b'{"name": "caf\xe9"}'))


CSV = (
    "id,name,description,tags,price,in_stock,attributes\r\n"
    'mug-1,Red mug,"A mug,\nred",kitchen| red ,9.5,no,"{""size"": ""L""}"\r\n'
    "\r\n"
    'kettle-1,Steel kettle,,"[""steel""]",,TRUE,\r\n'
    "bad-1,Bad,,,cheap,maybe,{oops\r\n"
)


def test_csv_cells_become_typed_fields_and_empty_cells_are_absent() -> None:
    items = read(read_csv, CSV.encode())
    assert [(item.line, item.data) for item in items] == [
        (
            2,
            {
                "id": "mug-1", "name": "Red mug", "description": "A mug,\nred",
                "tags": ["kitchen", "red"], "price": 9.5, "in_stock": False,
                "attributes": {"size": "L"},
            },
        ),
        (5, {"id": "kettle-1", "name": "Steel kettle", "tags": ["steel"], "in_stock": True}),
        # Cells that do not convert stay text, for the service's validation to reject.
        (6, {"id": "bad-1", "name": "Bad", "price": "cheap", "in_stock": "maybe",
             "attributes": "{oops"}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("id,name\na,A\nb,B,extra\n", r"line 3: broken CSV: 3 fields where the header has 2"),
        ('id,name\na,A\nb,"B\n\nc,C\n', r"line 3: broken CSV: unexpected end of data"),
        ('id,name\na,"A"x\n', r"line 2: broken CSV"),
        ("id,name,colour\n", r"line 1: unknown column\(s\) 'colour'"),
        ("id,description\n", r"line 1: the header has no name column"),
        ("id,name,id\n", r"line 1: column\(s\) id appear more than once"),
    ],
)
def test_broken_csv_names_the_line(data: str, message: str) -> None:
    with pytest.raises(MalformedFileError, match=message):
        read(read_csv, data.encode())


def test_batches_respect_the_size_and_split_before_a_repeated_id() -> None:
    items = [SourceItem(n, {"id": product_id}) for n, product_id in enumerate("abcaxyz", 1)]
    sizes = [[item.data["id"] for item in batch] for batch in batches(items, 3)]
    # The second "a" starts a batch, so it is written after the first: the later line wins.
    assert sizes == [["a", "b", "c"], ["a", "x", "y"], ["z"]]


def test_progress_prints_a_line_every_interval_when_not_a_terminal() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, interval=5.0, clock=lambda: now[0])
    progress.begin("importing", "products")
    for done, at in ((100, 1.0), (1000, 5.0), (1500, 6.0), (2000, 10.0)):
        now[0] = at
        progress.update(done)
    progress.end()
    assert out.getvalue().splitlines() == [
        "importing: 1,000 products, 200/s, 0:05 elapsed",
        "importing: 2,000 products, 200/s, 0:10 elapsed",
    ]


# -- into Redis -----------------------------------------------------------------------------------


PRODUCTS = jsonl(
    MUG,
    KETTLE,
    {"id": "no-name"},
    {"id": "tea-1", "name": "Green tea", "price": -1},
    {"id": "scarf-1", "name": "Wool scarf", "category": "Fashion > Scarves"},
    ["not", "a", "product"],
)


@pytest.mark.asyncio
async def test_import_stores_products_and_reports_rejected_lines(
    settings: Settings, services: Services, redis: "aioredis.Redis"
) -> None:
    summary = await import_into_redis(read(read_jsonl, PRODUCTS), settings, 2, quiet())
    assert (summary.imported, summary.created, summary.updated) == (3, 3, 0)
    assert summary.rejected == 3
    assert [r.line for r in summary.rejections] == [3, 4, 6]
    assert "name" in summary.rejections[0].reason
    assert "price" in summary.rejections[1].reason
    assert summary.rejections[2].reason == "expected a JSON object, got an array"
    assert summary.error is None
    assert summary.note is None  # the Redis is configured, not started here
    assert (await services.catalog.get("scarf-1")).category == "Fashion > Scarves"
    # Every stored product has its catalog event, for the indexer to pick up.
    assert await redis.xlen(services.catalog.stream) == 3

    again = await import_into_redis(read(read_jsonl, jsonl(MUG)), settings, 2, quiet())
    assert (again.created, again.updated) == (0, 1)


@pytest.mark.asyncio
async def test_import_from_csv(settings: Settings, services: Services) -> None:
    summary = await import_into_redis(read(read_csv, CSV.encode()), settings, 500, quiet())
    assert (summary.imported, summary.rejected) == (2, 1)
    assert summary.rejections[0].line == 6
    mug = await services.catalog.get("mug-1")
    assert (mug.tags, mug.in_stock, mug.attributes) == (["kitchen", "red"], False, {"size": "L"})


@pytest.mark.asyncio
async def test_a_malformed_line_stops_the_import_after_the_lines_before_it(
    settings: Settings, services: Services
) -> None:
    data = jsonl(MUG, KETTLE, b"{not json", {"id": "later", "name": "Later"})
    summary = await import_into_redis(read_jsonl(io.BytesIO(data)), settings, 500, quiet())
    assert summary.error is not None
    assert summary.error.startswith("line 3: invalid JSON")
    assert summary.error_line == 3
    assert summary.imported == 2
    assert await services.catalog.get_many(["mug-1", "later"]) == [
        await services.catalog.get("mug-1"),
        None,
    ]


# -- the command ----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_cli_prints_a_summary_and_exits_0_despite_rejections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], services: Services
) -> None:
    (tmp_path / "products.jsonl").write_bytes(PRODUCTS)
    assert await run_cli("import", "products", str(tmp_path / "products.jsonl")) == 0
    out = capsys.readouterr().out
    assert "imported 3 products (3 created, 0 updated)" in out
    assert "rejected 3:\n  line 3: " in out
    assert await services.catalog.get("mug-1")


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_cli_json_summary_and_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "products.csv").write_text(CSV)
    assert await run_cli("import", "products", str(tmp_path / "products.csv"), "--json",
                         "--strict") == 1  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert (summary["imported"], summary["rejected"]) == (2, 1)
    assert summary["rejections"][0]["line"] == 6


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_cli_malformed_file_exits_1_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.jsonl").write_bytes(jsonl(MUG, b"[1, 2"))
    assert await run_cli("import", "products", str(tmp_path / "p.jsonl")) == 1
    assert "p.jsonl: line 2: invalid JSON" in capsys.readouterr().err


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("import", "products", str(tmp_path / "absent.jsonl")) == 2
    assert await run_cli("import", "products", str(tmp_path / "p.xml")) == 2
    assert "--format" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_embedded_default_joins_a_running_owner_or_starts_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECOMMENDER_REDIS__URL", "")
    monkeypatch.setenv("RECOMMENDER_LOGGING__FORMAT", "json")
    (tmp_path / "p.jsonl").write_bytes(jsonl(MUG))
    alone = await run_cli("import", "products", str(tmp_path / "p.jsonl"), "--json",
                          "--data-dir", str(tmp_path / "alone"))  # fmt: skip
    assert alone == 0
    assert (
        "indexed (searchable, recommendable) when the service next runs"
        in (json.loads(capsys.readouterr().out)["note"])
    )

    owner = EmbeddedRedis(EmbeddedRedisSettings(data_dir=str(tmp_path / "shared"))).start()
    try:
        joined = await run_cli("import", "products", str(tmp_path / "p.jsonl"), "--json",
                               "--data-dir", str(tmp_path / "shared"))  # fmt: skip
        assert joined == 0
        assert json.loads(capsys.readouterr().out)["note"] is None
        client = aioredis.Redis.from_url(owner.url)
        assert await client.exists("rec:product:mug-1")
        await client.aclose()
    finally:
        owner.close()


# -- over HTTP ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def service(redis: "aioredis.Redis", redis_url: str, namespace: str) -> Iterator[str]:
    """`recommender serve` as a process on the session Redis and this test's namespace."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "recommender", "serve", "--port", str(port)],
        env={
            **os.environ,
            "RECOMMENDER_REDIS__URL": redis_url,
            "RECOMMENDER_REDIS__NAMESPACE": namespace,
            "RECOMMENDER_LOGGING__FORMAT": "json",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "the service exited before it was ready"
            assert time.monotonic() < deadline, "the service did not start"
            try:
                with urllib.request.urlopen(f"{url}/health/live", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:  # stopped before the `redis` fixture drops the namespace
        process.terminate()
        process.wait(timeout=15)


@pytest.mark.asyncio
async def test_api_mode_posts_batches_and_maps_results_to_lines(
    service: str, services: Services
) -> None:
    summary = await import_via_api(read(read_jsonl, PRODUCTS), service, 2, quiet())
    assert (summary.imported, summary.created, summary.rejected) == (3, 3, 3)
    assert [r.line for r in summary.rejections] == [3, 4, 6]
    assert summary.error is None
    assert (await services.catalog.get("kettle-1")).name == "Steel kettle"


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_api_mode_unreachable_service_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.jsonl").write_bytes(jsonl(MUG))
    url = f"http://127.0.0.1:{free_port()}"
    assert await run_cli("import", "products", str(tmp_path / "p.jsonl"), "--api", url) == 1
    assert "cannot reach" in capsys.readouterr().err


class FussyBatchEndpoint(BaseHTTPRequestHandler):
    """A 503 first, then a 413 for any batch of more than one item; otherwise all created."""

    calls: list[int] = []  # noqa: RUF012 - shared with the test on purpose

    def do_POST(self) -> None:
        items = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["items"]
        self.calls.append(len(items))
        if len(self.calls) == 1:
            self._answer(503, {"error": "store_unavailable", "detail": "retry"}, retry="0")
        elif len(items) > 1:
            self._answer(413, {"error": "request_entity_too_large", "detail": "too big"})
        else:
            self._answer(200, {"items": [{"index": 0, "id": items[0]["id"], "status": "created"}],
                               "created": 1, "updated": 0, "rejected": 0})  # fmt: skip

    def _answer(self, status: int, body: dict[str, Any], retry: str | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        if retry is not None:
            self.send_header("Retry-After", retry)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        return


def test_api_sink_waits_out_a_503_and_halves_a_batch_that_is_too_large() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FussyBatchEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FussyBatchEndpoint.calls = []
    try:
        sink = ApiSink(f"http://127.0.0.1:{server.server_address[1]}")
        outcome = asyncio.run(sink.upsert([{"id": c} for c in "abc"]))
    finally:
        server.shutdown()
    assert [(item.index, item.status) for item in outcome.items] == [
        (0, "created"), (1, "created"), (2, "created"),
    ]  # fmt: skip
    assert FussyBatchEndpoint.calls == [3, 3, 1, 2, 1, 1]


def test_api_url_must_be_http() -> None:
    with pytest.raises(ImportInputError, match="http"):
        ApiSink("ftp://example.com")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal() -> None:
    now = [0.0]
    out = Terminal()
    progress = Progress(out, clock=lambda: now[0])
    progress.begin("importing", "products")
    now[0] = 2.0
    progress.update(500)
    progress.end()
    line = "importing: 500 products, 250/s, 0:02 elapsed"
    assert out.getvalue() == f"\r{line}\x1b[K\r{line}\x1b[K\n"


def test_summary_lists_the_first_20_rejections_and_counts_the_rest() -> None:
    summary = ImportSummary(
        imported=1, created=1, updated=0, rejected=23,
        rejections=[Rejection(line, "bad") for line in range(2, 25)],
        seconds=2.0, products_per_second=0.5,
    )  # fmt: skip
    text = summary.render().splitlines()
    assert text[0] == "imported 1 products (1 created, 0 updated) in 2.0 s, 0 products/s"
    assert text[1:3] == ["rejected 23:", "  line 2: bad"]
    assert text[21:] == ["  line 21: bad", "  ...and 3 more"]
