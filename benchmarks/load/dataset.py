"""The Online Retail catalog and purchase history, imported through the service's real API.

`benchmarks.datasets.online_retail` converts ../shared/data (read in place) into products.jsonl
and events.csv; the products go to `POST /api/v1/products/batch` in batches of 500; once the
indexer has caught up and no refit is building (`GET /api/v1/admin/model`), the events go to
`POST /api/v1/events` in batches of 1,000 (the API's maximum); then the model is refitted
(`POST /api/v1/admin/model/refit?wait=true`). The service counts as caught up when
`/health/ready` answers 200, every `recommender_stream_processed` counter on `/metrics` has
reached what was written to its stream, and the `recommender_stream_lag` and
`recommender_stream_pending` gauges read 0. The wait before the events keeps the automatic
refits the first products start out of the event import's way.

The store's files right after the import are kept beside them (`keep_import`, with the service
stopped) and put back before each later phase or run (`restore_import`): each starts from the
same state, not from the view events, the probe's writes and the refits of the ones before it.
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from benchmarks.datasets import online_retail
from benchmarks.load.metrics import stream_metrics
from benchmarks.support import batches

# The embedded Redis keeps everything in its AOF directory; the copy of it right after the import.
STORE_FILES = "appendonlydir"
IMPORT_SNAPSHOT = "import-snapshot"
PRODUCT_BATCH = 500
EVENT_BATCH = 1000
CATALOG_STREAM = "stream:catalog"
BEHAVIOUR_STREAM = "stream:behaviour"


@dataclass(frozen=True, slots=True)
class Dataset:
    products: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @property
    def users(self) -> list[str]:
        return sorted({event["user_id"] for event in self.events})


def convert(work_dir: Path) -> Dataset:
    """Convert the shared Online Retail file into `work_dir` and read both files back."""
    out = work_dir / "online-retail"
    online_retail.convert(online_retail.SOURCE, out)
    products, events = online_retail.read_converted(out)
    return Dataset(products=products, events=events)


class ImportReport(msgspec.Struct, kw_only=True):
    products: int
    products_rejected: int
    products_seconds: float
    indexed_seconds: float  # from the last product batch until indexed, refits done
    events: int
    events_rejected: int
    events_seconds: float
    refit_seconds: float
    caught_up_seconds: float  # from the refit's answer until caught up (see the module doc)
    # The most stream entries still unprocessed while both stream gauges already read 0.
    gauge_missed_entries: int


def keep_import(data_dir: Path) -> None:
    """Copy the store's files, at rest (no Redis running on them), as the state later runs
    start from."""
    _copy_over(data_dir / STORE_FILES, data_dir / IMPORT_SNAPSHOT)


def restore_import(data_dir: Path) -> bool:
    """Put back the store's files as the import left them (no Redis running on them); False
    when none were kept."""
    snapshot = data_dir / IMPORT_SNAPSHOT
    if not snapshot.is_dir():
        return False
    _copy_over(snapshot, data_dir / STORE_FILES)
    return True


def _copy_over(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


def import_through_api(http: httpx.Client, data: Dataset, patience: float) -> ImportReport:
    started = time.perf_counter()
    products_rejected = 0
    for batch in batches(data.products, PRODUCT_BATCH):
        response = http.post("/api/v1/products/batch", json={"items": list(batch)})
        response.raise_for_status()
        products_rejected += response.json()["rejected"]
    products_seconds = time.perf_counter() - started
    written = len(data.products) - products_rejected

    started = time.perf_counter()
    missed = wait_caught_up(http, {CATALOG_STREAM: written}, patience)
    deadline = time.monotonic() + patience
    while http.get("/api/v1/admin/model").json()["building"] is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"a refit was still building after {patience:g}s")
        time.sleep(0.25)
    indexed_seconds = time.perf_counter() - started

    started = time.perf_counter()
    accepted = events_rejected = 0
    for batch in batches(data.events, EVENT_BATCH):
        response = http.post("/api/v1/events", json=list(batch))
        response.raise_for_status()
        accepted += response.json()["accepted"]
        events_rejected += response.json()["rejected"]
    events_seconds = time.perf_counter() - started

    started = time.perf_counter()
    http.post("/api/v1/admin/model/refit", params={"wait": "true"}).raise_for_status()
    refit_seconds = time.perf_counter() - started

    started = time.perf_counter()
    expected = {CATALOG_STREAM: written, BEHAVIOUR_STREAM: accepted}
    missed = max(missed, wait_caught_up(http, expected, patience))
    return ImportReport(
        products=len(data.products),
        products_rejected=products_rejected,
        products_seconds=round(products_seconds, 2),
        indexed_seconds=round(indexed_seconds, 2),
        events=len(data.events),
        events_rejected=events_rejected,
        events_seconds=round(events_seconds, 2),
        refit_seconds=round(refit_seconds, 2),
        caught_up_seconds=round(time.perf_counter() - started, 2),
        gauge_missed_entries=missed,
    )


def wait_caught_up(http: httpx.Client, expected: dict[str, int], patience: float) -> int:
    """Until ready and caught up (module doc); returns the gauges' largest miss on the way."""
    deadline = time.monotonic() + patience
    missed = 0
    state = "no answer yet"
    while time.monotonic() < deadline:
        try:
            ready = http.get("/health/ready").status_code == 200
            metrics = stream_metrics(http.get("/metrics").text)
        except httpx.TransportError as error:  # e.g. a keep-alive connection closed under us
            state = f"no answer: {error!r}"
            time.sleep(0.25)
            continue
        behind = sum(
            max(0, count - int(metrics["processed"].get(stream, 0)))
            for stream, count in expected.items()
        )
        gauges_zero = not any(metrics["lag"].values()) and not any(metrics["pending"].values())
        if gauges_zero and behind:
            missed = max(missed, behind)
        if ready and gauges_zero and not behind:
            return missed
        state = f"ready={ready}, {behind} entries behind, {metrics}"
        time.sleep(0.25)
    raise TimeoutError(f"not caught up after {patience:g}s: {state}")
