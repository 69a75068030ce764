"""`recommender import events`: reading, recording through tracking, the summary, the CLI."""

import asyncio
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import Drain, run_cli
from recommender.config import Settings
from recommender.importing import (
    EventApiSink,
    MalformedFileError,
    Progress,
    SourceItem,
    import_events_into_redis,
    read_event_csv,
    read_events,
)
from recommender.services import Services
from recommender.tracking import Shopper

HEADER = "timestamp,user_id,session_id,type,product_id,order_id,quantity,price\n"
EVENTS = HEADER + (
    "2011-01-04T10:00:00Z,17850,,purchase,mug,o1,6,2.55\n"
    "2011-01-04T10:00:00Z,17850,,purchase,kettle,o1,1,\n"
    "2011-01-05T09:30:00Z,,s1,view,mug,,,\n"
    "2011-01-05T09:31:00Z,17850,,teleport,mug,,,\n"
    "2011-01-05T09:32:00Z,17850,,purchase,mug,o2,lots,2.55\n"
)


def quiet() -> Progress:
    return Progress(io.StringIO())


def read(data: str) -> list[SourceItem]:
    return list(read_event_csv(io.BytesIO(data.encode())))


def test_csv_cells_become_typed_event_fields_and_empty_cells_are_absent() -> None:
    items = read(EVENTS)
    assert [item.line for item in items] == [2, 3, 4, 5, 6]
    assert items[0].data == {
        "timestamp": "2011-01-04T10:00:00Z", "user_id": "17850", "type": "purchase",
        "product_id": "mug", "order_id": "o1", "quantity": 6, "price": 2.55,
    }  # fmt: skip
    assert items[2].data == {
        "timestamp": "2011-01-05T09:30:00Z", "session_id": "s1", "type": "view",
        "product_id": "mug",
    }  # fmt: skip
    # A cell that does not convert stays text, for the service's validation to reject.
    assert items[4].data["quantity"] == "lots"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("type,user_id,colour\n", r"line 1: unknown column\(s\) 'colour'; the columns are the "
         r"event fields: type, user_id"),
        ("user_id,product_id\n", r"line 1: the header has no type column"),
        (HEADER + "2011-01-04T10:00:00Z,1,,view\n", r"line 2: broken CSV: 4 fields"),
    ],
)  # fmt: skip
def test_broken_event_csv_names_the_line(data: str, message: str) -> None:
    with pytest.raises(MalformedFileError, match=message):
        read(data)


def test_jsonl_events_are_read_as_they_are() -> None:
    event = {"type": "view", "user_id": "u1", "product_id": "mug", "rec_id": "r1"}
    items = list(read_events(io.BytesIO(json.dumps(event).encode() + b"\n"), "jsonl"))
    assert [(item.line, item.data) for item in items] == [(1, event)]


@pytest.mark.asyncio
async def test_import_records_history_and_the_aggregates_use_event_time(
    settings: Settings, services: Services, drain: Drain
) -> None:
    await services.catalog.upsert_batch(
        [{"id": "mug", "name": "Mug"}, {"id": "kettle", "name": "Kettle"}]
    )
    summary = await import_events_into_redis(read(EVENTS), settings, 2, quiet())
    assert (summary.imported, summary.duplicates, summary.rejected) == (3, 0, 2)
    assert [r.line for r in summary.rejections] == [5, 6]
    assert "type" in summary.rejections[0].reason
    assert "quantity" in summary.rejections[1].reason
    assert summary.error is None
    assert summary.note is None  # the Redis is configured, not started here
    history = await services.tracking.history(Shopper("user", "17850"))
    assert [(e.type, e.product_id) for e in history] == [
        ("purchase", "kettle"),
        ("purchase", "mug"),
    ]
    assert {p for p, _ in await services.tracking.purchased(Shopper("user", "17850"))} == {
        "mug",
        "kettle",
    }
    await drain()
    # Windows end at the newest event's time, not today: 2011's week is still "the last 7 days".
    assert [p for p, _ in await services.tracking.popular(7, "", 10)] == ["mug", "kettle"]
    (co_purchased,) = await services.tracking.co_occurring_many([("purchase", "mug")], 5)
    assert [p for p, _ in co_purchased] == ["kettle"]


@pytest.mark.asyncio
async def test_an_event_id_makes_a_replayed_event_count_once(
    settings: Settings, services: Services
) -> None:
    line = {"type": "view", "user_id": "u1", "product_id": "mug", "event_id": "e1"}
    items = [SourceItem(1, line), SourceItem(2, line), SourceItem(3, ["not", "an", "event"])]
    summary = await import_events_into_redis(items, settings, 1000, quiet())
    assert (summary.imported, summary.duplicates, summary.rejected) == (1, 1, 1)
    assert summary.rejections[0].reason == "expected a JSON object, got an array"
    assert len(await services.tracking.history(Shopper("user", "u1"))) == 1


# -- the command ----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_cli_summary_json_and_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], services: Services
) -> None:
    (tmp_path / "events.csv").write_text(EVENTS)
    assert await run_cli("import", "events", str(tmp_path / "events.csv")) == 0
    out = capsys.readouterr().out
    assert "imported 3 events (0 duplicates left out)" in out
    assert "rejected 2:\n  line 5: " in out
    assert await run_cli("import", "events", str(tmp_path / "events.csv"), "--json",
                         "--strict") == 1  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert (summary["imported"], summary["rejected"]) == (3, 2)
    assert list(summary) == [
        "imported", "duplicates", "rejected", "rejections", "seconds", "events_per_second",
        "error", "error_line", "note",
    ]  # fmt: skip
    # Without event ids, the same file replayed counts again.
    assert len(await services.tracking.history(Shopper("user", "17850"))) == 4


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_cli_reads_jsonl_from_stdin_and_names_a_malformed_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], services: Services
) -> None:
    lines = b'{"type": "view", "user_id": "u1", "product_id": "mug"}\n{"type": \n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(lines)))
    assert await run_cli("import", "events", "-") == 1
    captured = capsys.readouterr()
    assert "imported 1 events" in captured.out
    assert "-: line 2: invalid JSON" in captured.err
    assert len(await services.tracking.history(Shopper("user", "u1"))) == 1


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    assert await run_cli("import", "events", str(tmp_path / "absent.csv")) == 2
    assert await run_cli("import", "events", str(tmp_path / "events.txt")) == 2


# -- over HTTP ------------------------------------------------------------------------------------


class EventsEndpoint(BaseHTTPRequestHandler):
    """Accepts a JSON list of events with 202: the first of each batch is a duplicate."""

    bodies: list[Any] = []  # noqa: RUF012 - shared with the test on purpose

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append((self.path, body))
        items = [{"index": i, "status": "duplicate" if i == 0 else "accepted"}
                 for i in range(len(body))]  # fmt: skip
        payload = json.dumps({"accepted": len(body) - 1, "duplicates": 1, "rejected": 0,
                              "items": items}).encode()  # fmt: skip
        self.send_response(202)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        return


def test_api_sink_posts_the_events_as_a_json_list() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EventsEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    EventsEndpoint.bodies = []
    events = [{"type": "view", "user_id": "u1", "product_id": p} for p in ("a", "b")]
    try:
        sink = EventApiSink(f"http://127.0.0.1:{server.server_address[1]}")
        outcome = asyncio.run(sink.record(events))
    finally:
        server.shutdown()
    assert EventsEndpoint.bodies == [("/api/v1/events", events)]
    assert [(item.index, item.status) for item in outcome.items] == [
        (0, "duplicate"), (1, "accepted"),
    ]  # fmt: skip
