"""Bulk import of products and events: read JSONL or CSV, write it in batches, summarise.

A file is read line by line and turned into `SourceItem`s (the product or event as the API's JSON
would have it, with the line it came from). Batches of products go to the catalog service itself
(`CatalogService.upsert_batch`, the same call `POST /api/v1/products/batch` makes) or to a running
service over HTTP (`ApiSink`); batches of events to `TrackingService.record` (the call of
`POST /api/v1/events`) or over HTTP (`EventApiSink`). Each item's outcome is mapped back to its
line for the summary.

A file that cannot be parsed (invalid JSON, broken CSV, not UTF-8) stops the import at that line
with `MalformedFileError`; every line before it is written (product upserts are idempotent, so
fixing the file and running it again is safe; events are too, if they carry an `event_id`). An
item that parses but is not a valid product or event is only rejected: it is listed in the
summary and the import goes on.
"""

import asyncio
import contextlib
import csv
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import IO, Any, Literal, Protocol, TextIO, TypeVar

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from recommender.catalog import CatalogService, ProductCreate
from recommender.config import Settings
from recommender.platform.embedded import EmbeddedRedis
from recommender.platform.errors import AppError
from recommender.platform.redis import Keyspace, create_client, require_search_module
from recommender.services import Services, build_services
from recommender.tracking import Event, TrackingService

log = structlog.get_logger()

Format = Literal["jsonl", "csv"]
_BY_NAME: dict[str, Format] = {"jsonl": "jsonl", "csv": "csv"}
FORMATS = tuple(_BY_NAME)
_EXTENSIONS: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

DEFAULT_BATCH_SIZE = 500
# The service's batch endpoint takes at most this many items per request.
MAX_BATCH_SIZE = 1000
# How many rejected lines the readable summary lists; the rest are counted.
SHOWN_REJECTIONS = 20

_BOM = "\ufeff"
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

_API_TIMEOUT_SECONDS = 60.0
_API_ATTEMPTS = 5
_HTTP_TOO_LARGE = 413
_HTTP_UNAVAILABLE = 503


class ImportInputError(Exception):
    """The command cannot start: unknown format, unreadable file."""


class MalformedFileError(Exception):
    """The file stops being JSONL or CSV at `line`."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class ImportTargetError(Exception):
    """The service at --api refused or could not take a batch."""


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One product or event as read from the file (a JSON value) and the line it starts on."""

    line: int
    data: Any


# -- reading --------------------------------------------------------------------------------------


def detect_format(name: str, explicit: str | None = None) -> Format:
    """The --format given, else the file's extension; stdin (`-`) defaults to JSONL."""
    if explicit is not None:
        try:
            return _BY_NAME[explicit]
        except KeyError:
            raise ImportInputError(
                f"unknown format '{explicit}' (use {' or '.join(_BY_NAME)})"
            ) from None
    if name == "-":
        return "jsonl"
    try:
        return _EXTENSIONS[PurePath(name).suffix.lower()]
    except KeyError:
        raise ImportInputError(
            f"cannot tell the format of '{name}' from its extension: use --format jsonl or csv"
        ) from None


@contextlib.contextmanager
def open_source(name: str) -> Iterator[IO[bytes]]:
    """The file as bytes; `-` is stdin (left open)."""
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = open(name, "rb")  # noqa: SIM115 - closed below, after the caller is done
    except OSError as error:
        raise ImportInputError(f"cannot read '{name}': {error.strerror}") from error
    with handle:
        yield handle


def read_products(stream: IO[bytes], file_format: Format) -> Iterator[SourceItem]:
    return read_jsonl(stream) if file_format == "jsonl" else read_csv(stream)


def read_events(stream: IO[bytes], file_format: Format) -> Iterator[SourceItem]:
    return read_jsonl(stream) if file_format == "jsonl" else read_event_csv(stream)


def _text_lines(stream: IO[bytes]) -> Iterator[tuple[int, str]]:
    """Decoded lines (endings kept) with their numbers; a byte-order mark is dropped."""
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise MalformedFileError(number, f"not UTF-8 text ({error.reason})") from None
        yield number, text.removeprefix(_BOM) if number == 1 else text


def read_jsonl(stream: IO[bytes]) -> Iterator[SourceItem]:
    """One JSON value per line; blank lines are skipped."""
    for number, text in _text_lines(stream):
        if not text.strip():
            continue
        try:
            yield SourceItem(number, msgspec.json.decode(text))
        except msgspec.DecodeError as error:
            raise MalformedFileError(number, f"invalid JSON: {error}") from None


def read_csv(stream: IO[bytes]) -> Iterator[SourceItem]:
    """A header of product field names, then one product per record (which may span lines)."""
    return _read_table(stream, _PRODUCT_COLUMNS)


def read_event_csv(stream: IO[bytes]) -> Iterator[SourceItem]:
    """A header of event field names, then one event per record."""
    return _read_table(stream, _EVENT_COLUMNS)


@dataclass(frozen=True, slots=True)
class _Columns:
    """The columns a CSV file of one kind may have, those it needs, and how cells convert."""

    kind: str
    fields: tuple[str, ...]
    required: tuple[str, ...]
    converters: dict[str, Callable[[str], Any]]


def _read_table(stream: IO[bytes], columns: _Columns) -> Iterator[SourceItem]:
    numbered = _text_lines(stream)
    reader = csv.reader((text for _, text in numbered), strict=True)
    header: list[str] | None = None
    record_start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            # The record's first line: an unclosed quote is only noticed at the end of the file.
            raise MalformedFileError(record_start, f"broken CSV: {error}") from None
        line, record_start = record_start, reader.line_num + 1
        if not row:
            continue
        if header is None:
            header = _check_header(row, line, columns)
            continue
        if len(row) != len(header):
            raise MalformedFileError(
                line, f"broken CSV: {len(row)} fields where the header has {len(header)}"
            )
        yield SourceItem(line, _record_from_cells(header, row, columns))


def _check_header(row: list[str], line: int, columns: _Columns) -> list[str]:
    """Fail at the header when no row could be valid, instead of rejecting every row."""
    header = [name.strip() for name in row]
    unknown = [name for name in header if name not in columns.fields]
    if unknown:
        raise MalformedFileError(
            line,
            f"unknown column(s) {', '.join(repr(n) for n in unknown)}; "
            f"the columns are the {columns.kind} fields: {', '.join(columns.fields)}",
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise MalformedFileError(line, f"column(s) {', '.join(repeated)} appear more than once")
    missing = [name for name in columns.required if name not in header]
    if missing:
        raise MalformedFileError(line, f"the header has no {' or '.join(missing)} column")
    return header


def _record_from_cells(header: list[str], row: list[str], columns: _Columns) -> dict[str, Any]:
    """Cells as the API's JSON types; empty cells are absent fields.

    A cell that does not convert is passed on as text, so the item is rejected by the same
    validation, with the same message, as an API client's would be.
    """
    return {
        column: columns.converters.get(column, str)(cell)
        for column, cell in zip(header, row, strict=True)
        if cell
    }


def _json_or_text(cell: str) -> Any:
    try:
        return json.loads(cell)
    except ValueError:
        return cell


def _tags(cell: str) -> Any:
    """`a|b` or a JSON list."""
    if cell.lstrip().startswith("["):
        return _json_or_text(cell)
    return [tag.strip() for tag in cell.split("|") if tag.strip()]


def _price(cell: str) -> float | str:
    try:
        price = float(cell)
    except ValueError:
        return cell
    # JSON has no NaN or infinity; the service would see null, a missing price.
    return price if math.isfinite(price) else cell


def _in_stock(cell: str) -> bool | str:
    word = cell.strip().lower()
    return True if word in _TRUE else False if word in _FALSE else cell


def _whole_number(cell: str) -> int | str:
    try:
        return int(cell)
    except ValueError:
        return cell


_PRODUCT_COLUMNS = _Columns(
    kind="product",
    fields=ProductCreate.__struct_fields__,
    required=("id", "name"),
    converters={"tags": _tags, "attributes": _json_or_text, "price": _price, "in_stock": _in_stock},
)
_EVENT_COLUMNS = _Columns(
    kind="event",
    fields=Event.__struct_fields__,
    required=("type",),
    converters={"quantity": _whole_number, "price": _price},
)


def batches(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    """Batches of at most `size`; a repeated id starts a new batch, so the later line wins.

    When the file breaks, the lines before the break still come out as a last batch.
    """
    batch: list[SourceItem] = []
    ids: set[str] = set()
    try:
        for item in items:
            product_id = item.data.get("id") if isinstance(item.data, dict) else None
            if isinstance(product_id, str) and product_id in ids:
                yield batch
                batch, ids = [], set()
            batch.append(item)
            if isinstance(product_id, str):
                ids.add(product_id)
            if len(batch) >= size:
                yield batch
                batch, ids = [], set()
    except MalformedFileError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


# -- sinks ----------------------------------------------------------------------------------------


class ItemOutcome(msgspec.Struct, kw_only=True):
    """One item's result, as `POST /api/v1/products/batch` or `POST /api/v1/events` returns it."""

    index: int
    status: Literal["created", "updated", "accepted", "duplicate", "rejected"]
    error: str | None = None


class BatchOutcome(msgspec.Struct, kw_only=True):
    items: list[ItemOutcome]


class Sink(Protocol):
    async def upsert(self, items: Sequence[Any]) -> BatchOutcome: ...


class EventSink(Protocol):
    async def record(self, items: Sequence[Any]) -> BatchOutcome: ...


Write = Callable[[Sequence[Any]], Awaitable[BatchOutcome]]


class CatalogSink:
    """Straight into the catalog service: the call the batch endpoint makes."""

    def __init__(self, catalog: CatalogService) -> None:
        self.catalog = catalog

    async def upsert(self, items: Sequence[Any]) -> BatchOutcome:
        result = await self.catalog.upsert_batch(items)
        return msgspec.convert(result, BatchOutcome, from_attributes=True)


class TrackingSink:
    """Straight into the tracking service: the call the events endpoint makes."""

    def __init__(self, tracking: TrackingService) -> None:
        self.tracking = tracking

    async def record(self, items: Sequence[Any]) -> BatchOutcome:
        result = await self.tracking.record(items)
        return msgspec.convert(result, BatchOutcome, from_attributes=True)


class _BatchPoster:
    """POSTs batches to one endpoint of a running service, over the standard library's client."""

    path: str
    # The endpoint's success status, and the body's key for the list (None: the body is the list).
    accepted_status: int
    items_key: str | None

    def __init__(self, base_url: str, timeout: float = _API_TIMEOUT_SECONDS) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ImportInputError(f"--api needs an http:// or https:// URL, not '{base_url}'")
        self.url = base_url.rstrip("/") + self.path
        self.timeout = timeout

    async def send(self, items: Sequence[Any]) -> BatchOutcome:
        return await asyncio.to_thread(self._send, list(items))

    def _send(self, items: list[Any]) -> BatchOutcome:
        """POST the batch; a body over the service's size limit is sent in halves."""
        body = msgspec.json.encode({self.items_key: items} if self.items_key else items)
        status, payload = self._post(body)
        if status == _HTTP_TOO_LARGE:
            if len(items) == 1:
                reason = f"too large for the service ({len(body):,} bytes of JSON)"
                return BatchOutcome(items=[ItemOutcome(index=0, status="rejected", error=reason)])
            half = len(items) // 2
            first, second = self._send(items[:half]), self._send(items[half:])
            shifted = [msgspec.structs.replace(i, index=i.index + half) for i in second.items]
            return BatchOutcome(items=first.items + shifted)
        if status != self.accepted_status:
            raise ImportTargetError(f"{self.url} answered {status}: {_error_detail(payload)}")
        try:
            return msgspec.json.decode(payload, type=BatchOutcome)
        except msgspec.DecodeError as error:
            raise ImportTargetError(
                f"{self.url} answered with an unexpected body: {error}"
            ) from None

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """Status and body; waits out a 503 (Redis briefly unreachable) a few times."""
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        attempt = 1
        while True:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                    return int(response.status), response.read()
            except urllib.error.HTTPError as error:
                if error.code != _HTTP_UNAVAILABLE or attempt >= _API_ATTEMPTS:
                    return error.code, error.read()
                delay = _retry_after(error.headers.get("Retry-After"), attempt)
                log.warning("import_api_unavailable", url=self.url, retry_in=delay)
                time.sleep(delay)
                attempt += 1
            except OSError as error:  # URLError, refused connections, timeouts
                reason = getattr(error, "reason", error)
                raise ImportTargetError(f"cannot reach {self.url}: {reason}") from None


class ApiSink(_BatchPoster):
    """A running service's product batch endpoint."""

    path = "/api/v1/products/batch"
    accepted_status = 200
    items_key = "items"

    async def upsert(self, items: Sequence[Any]) -> BatchOutcome:
        return await self.send(items)


class EventApiSink(_BatchPoster):
    """A running service's events endpoint (it takes a JSON list of events)."""

    path = "/api/v1/events"
    accepted_status = 202
    items_key = None

    async def record(self, items: Sequence[Any]) -> BatchOutcome:
        return await self.send(items)


def _retry_after(header: str | None, attempt: int) -> float:
    try:
        return min(float(header or ""), 30.0)
    except ValueError:
        return float(attempt)


def _error_detail(payload: bytes) -> str:
    """The `detail` of the service's error body, else the body itself (shortened)."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return payload.decode("utf-8", "replace")[:500] or "no body"


# -- progress -------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    """Elapsed time as m:ss (h:mm:ss past an hour)."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """One status line on stderr: redrawn in place on a terminal, else a line every few seconds."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        # Redraws are cheap on a terminal; in a log, a line every ~5 s is plenty.
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.clock = clock
        self.label = ""
        self.unit = ""
        self.total: int | None = None
        self.started = self.last = clock()
        self.done = 0

    def begin(self, label: str, unit: str, total: int | None = None) -> None:
        self.label, self.unit, self.total = label, unit, total
        self.started = self.last = self.clock()
        self.done = 0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._draw()

    def end(self) -> None:
        """Leave the terminal line finished (a log only gets the periodic lines)."""
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def say(self, message: str) -> None:
        self.stream.write(f"{message}\n")
        self.stream.flush()

    def line(self) -> str:
        elapsed = self.elapsed
        count = f"{self.done:,}" + (f"/{self.total:,}" if self.total is not None else "")
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return f"{self.label}: {count} {self.unit}, {rate:,.0f}/s, {_clock(elapsed)} elapsed"

    def _draw(self) -> None:
        if self.tty:
            # \x1b[K clears what a longer previous line left behind.
            self.stream.write(f"\r{self.line()}\x1b[K")
        else:
            self.stream.write(f"{self.line()}\n")
        self.stream.flush()


# -- running --------------------------------------------------------------------------------------


class Rejection(msgspec.Struct):
    line: int
    reason: str


class ImportSummary(msgspec.Struct, kw_only=True):
    imported: int
    created: int
    updated: int
    rejected: int
    rejections: list[Rejection]
    seconds: float
    products_per_second: float
    # Set when the import stopped early: what stopped it, and at which line of the file.
    error: str | None = None
    error_line: int | None = None
    note: str | None = None

    def render(self) -> str:
        """The summary for people: counts, rate, the first rejections, what stopped it."""
        return _render(
            f"imported {self.imported:,} products ({self.created:,} created, "
            f"{self.updated:,} updated) in {self.seconds:.1f} s, "
            f"{self.products_per_second:,.0f} products/s",
            self.rejections, self.error, self.note,
        )  # fmt: skip


class EventImportSummary(msgspec.Struct, kw_only=True):
    imported: int
    # Events whose event_id had been seen already: counted once, so not stored again.
    duplicates: int
    rejected: int
    rejections: list[Rejection]
    seconds: float
    events_per_second: float
    error: str | None = None
    error_line: int | None = None
    note: str | None = None

    def render(self) -> str:
        return _render(
            f"imported {self.imported:,} events ({self.duplicates:,} duplicates left out) in "
            f"{self.seconds:.1f} s, {self.events_per_second:,.0f} events/s",
            self.rejections, self.error, self.note,
        )  # fmt: skip


def _render(headline: str, rejections: list[Rejection], error: str | None, note: str | None) -> str:
    lines = [headline]
    if rejections:
        lines.append(f"rejected {len(rejections):,}:")
        lines += [f"  line {r.line}: {r.reason}" for r in rejections[:SHOWN_REJECTIONS]]
        if len(rejections) > SHOWN_REJECTIONS:
            lines.append(f"  ...and {len(rejections) - SHOWN_REJECTIONS:,} more")
    if error is not None:
        lines.append(f"stopped early: {error} (nothing after it was imported)")
    if note is not None:
        lines.append(f"note: {note}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Tally:
    """What writing a file's items did: outcomes by status, the rejected lines, what stopped it."""

    counts: Counter[str]
    rejections: list[Rejection]
    seconds: float
    error: str | None
    error_line: int | None

    def rate(self, count: int) -> float:
        return round(count / self.seconds, 1) if self.seconds > 0 else 0.0


async def _write_all(
    items: Iterable[SourceItem], write: Write, batch_size: int, progress: Progress, unit: str
) -> _Tally:
    """Write every item in batches, mapping each outcome back to the item's line."""
    counts: Counter[str] = Counter()
    rejections: list[Rejection] = []
    error: str | None = None
    error_line: int | None = None
    progress.begin("importing", unit)
    try:
        for batch in batches(items, batch_size):
            # The batch endpoints refuse a whole batch over one non-object item: reject it here.
            objects = [item for item in batch if isinstance(item.data, dict)]
            for item in batch:
                if not isinstance(item.data, dict):
                    counts["rejected"] += 1
                    reason = f"expected a JSON object, got {_json_type(item.data)}"
                    rejections.append(Rejection(item.line, reason))
            outcome = await write([item.data for item in objects]) if objects else None
            for result in outcome.items if outcome else ():
                counts[result.status] += 1
                if result.status == "rejected":
                    reason = result.error or "rejected"
                    rejections.append(Rejection(objects[result.index].line, reason))
            progress.update(counts.total())
    except MalformedFileError as malformed:
        error, error_line = str(malformed), malformed.line
    except (ImportTargetError, RedisError, AppError) as failure:
        error = str(failure)
    progress.end()
    rejections.sort(key=lambda rejection: rejection.line)
    return _Tally(counts, rejections, round(progress.elapsed, 3), error, error_line)


async def run_import(
    items: Iterable[SourceItem], sink: Sink, batch_size: int, progress: Progress
) -> ImportSummary:
    """Write every product in batches; the summary says what happened to each line."""
    tally = await _write_all(items, sink.upsert, batch_size, progress, "products")
    imported = tally.counts["created"] + tally.counts["updated"]
    summary = ImportSummary(
        imported=imported,
        created=tally.counts["created"],
        updated=tally.counts["updated"],
        rejected=tally.counts["rejected"],
        rejections=tally.rejections,
        seconds=tally.seconds,
        products_per_second=tally.rate(imported),
        error=tally.error,
        error_line=tally.error_line,
    )
    log.info("import_finished", imported=imported, rejected=summary.rejected, error=tally.error)
    return summary


async def run_event_import(
    items: Iterable[SourceItem], sink: EventSink, batch_size: int, progress: Progress
) -> EventImportSummary:
    """Record every event in batches; the summary says what happened to each line."""
    tally = await _write_all(items, sink.record, batch_size, progress, "events")
    imported = tally.counts["accepted"]
    summary = EventImportSummary(
        imported=imported,
        duplicates=tally.counts["duplicate"],
        rejected=tally.counts["rejected"],
        rejections=tally.rejections,
        seconds=tally.seconds,
        events_per_second=tally.rate(imported),
        error=tally.error,
        error_line=tally.error_line,
    )
    log.info(
        "event_import_finished", imported=imported, rejected=summary.rejected, error=tally.error
    )
    return summary


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


@dataclass(frozen=True, slots=True)
class RedisConnection:
    client: "aioredis.Redis"
    # True when no service was running on the embedded data directory and this process started
    # the server itself (it stops again when the command ends).
    started_server: bool


@contextlib.asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[RedisConnection]:
    """The configured Redis, or the embedded one of the configured data directory.

    With a service running on that directory this joins its server; otherwise it starts one
    for the duration of the command, as `serve` would.
    """
    embedded = None
    url = settings.redis.url
    if not url:
        embedded = await asyncio.to_thread(EmbeddedRedis(settings.redis.embedded).start)
        url = embedded.url
    client = create_client(settings.redis, url)
    try:
        await require_search_module(client, where=url)
        yield RedisConnection(client, started_server=embedded is not None and embedded.owner)
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.close)


async def import_into_redis(
    items: Iterable[SourceItem], settings: Settings, batch_size: int, progress: Progress
) -> ImportSummary:
    """Mode (a): through the catalog service on the configured Redis and namespace."""
    return await _into_configured_redis(
        settings,
        lambda services: run_import(items, CatalogSink(services.catalog), batch_size, progress),
        "the products are stored, and they are indexed (searchable, recommendable) when the "
        "service next runs",
    )


async def import_events_into_redis(
    items: Iterable[SourceItem], settings: Settings, batch_size: int, progress: Progress
) -> EventImportSummary:
    """Mode (a) for events: through the tracking service on the configured Redis and namespace."""
    return await _into_configured_redis(
        settings,
        lambda services: run_event_import(
            items, TrackingSink(services.tracking), batch_size, progress
        ),
        "the events are in the shoppers' histories, and popularity, trending and co-occurrence "
        "take them in when the service next runs",
    )


Summary = TypeVar("Summary", ImportSummary, EventImportSummary)


async def _into_configured_redis(
    settings: Settings, run: Callable[[Services], Awaitable[Summary]], pending: str
) -> Summary:
    """Run an import on the services of the configured namespace; say what waits for a service."""
    async with connect(settings) as connection:
        services = build_services(connection.client, Keyspace(settings.redis.namespace), settings)
        summary = await run(services)
    if connection.started_server and summary.imported:
        # The stream entries stay in the stream until the service's consumers read them.
        note = f"no service was running, so this started Redis for the import only: {pending}"
        summary = msgspec.structs.replace(summary, note=note)
    return summary


async def import_via_api(
    items: Iterable[SourceItem], base_url: str, batch_size: int, progress: Progress
) -> ImportSummary:
    """Mode (b): POST batches to a running service's batch endpoint."""
    return await run_import(items, ApiSink(base_url), batch_size, progress)


async def import_events_via_api(
    items: Iterable[SourceItem], base_url: str, batch_size: int, progress: Progress
) -> EventImportSummary:
    """Mode (b) for events: POST batches to a running service's events endpoint."""
    return await run_event_import(items, EventApiSink(base_url), batch_size, progress)
