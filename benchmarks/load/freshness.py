"""Freshness under load: a probe that observes the service while the fixed-rate mix runs.

The performance issue asks for write -> recommendable and event -> "for you" changed, both with
p99 < 1 s, under the fixed-rate mix. The probe is one Python client (httpx on an asyncio loop in
a thread of the benchmark process) that runs one trial at a time with one request in flight, so
it observes rather than loads; its request rate and CPU are reported beside the run's. Each
trial opens its own connection, so the trials spread over the service's worker processes (each
accepts connections and keeps its own neighbour cache). Kinds of trial, write and event
alternating:

- write -> in similar: `POST /api/v1/products` of a copy of a random imported product's text
  (name, description, category) under a new id, timed from the POST's response until
  `GET /api/v1/products/{original}/similar?k=10&min_score=0`, polled (every 10 ms), lists the
  copy. The originals are products whose text (case and punctuation aside) no other product
  has, so the copy, with the original's very vector, has no ties for the top places.
- out of stock -> gone: on each copy that showed, `PATCH {"in_stock": false}`, timed from its
  response until the same GET no longer lists the copy.
- event -> for you changed: a new anonymous session each trial; `GET
  /api/v1/sessions/{id}/recommendations` (what a stranger gets), then `POST /api/v1/events` of
  one `view` of a random product for that session, timed from the POST's response until the
  session's list differs from the first one (the history is written before the event's answer,
  so it should at once). Whether the changed list names the viewed product as an anchor is
  counted too: the stranger's list follows popularity, which the mix's events keep moving.

Each time runs to the arrival of the first response that shows the effect, so it overstates the
delay by up to one GET round trip and the 10 ms pause between GETs: the resolution, reported as
the median round trip of those GETs (polled back to back, the probe's GETs had reached 10% of
the offered rate once the service answered in a few ms). A trial not seen within the deadline
counts as missed (a failed poll is one that did not show the effect); a trial still open when
the run ends, or whose write or first GET failed, is left out and counted as such; every failed
request is counted.

Pace: trials start a second into the run, once wrk's connections are open, one every period
(0.2 s by default; at once after a trial that took longer), so about 5 a second and a few tens
of requests/s, and stop at the asked count or when the run ends: 100 of each need a 41 s run.

Beside its requests, its product writes (a POST and a PATCH per write trial, about 5/s at the
default pace) cost the service work the mix alone would not: each new vector is embedded,
indexed and patched into the neighbour lists cached in every process that it enters (those of
the copied product and of its nearest). The report counts the writes; a run with
`--freshness-trials 0` gives the mix's figures without them.

Afterwards the copies are deleted (the sessions' few view events stay, like the mix's), and the
model's change count is reported: each trial's create, PATCH and delete count towards the next
automatic refit.
"""

import asyncio
import functools
import itertools
import random
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import msgspec
import numpy as np

WRITE, STOCK, EVENT = "write -> in similar", "out of stock -> gone", "event -> for you changed"
KINDS = (WRITE, STOCK, EVENT)
TARGET_SECONDS = 1.0  # the p99 target for both write and event freshness
# A trial (write and event alternating) starts every PERIOD seconds, or at once after one that
# took longer: a few tens of requests/s beside the rate's 1,000.
PERIOD = 0.2
LEAD_SECONDS = 1.0  # wait for wrk's connections to open before the first trial
REQUEST_TIMEOUT = 30.0
POLL_PAUSE = 0.01  # between polls, so that the probe's GETs stay a small share of the load
_WORD = re.compile(r"[a-z0-9]+")
T = TypeVar("T")


class KindSummary(msgspec.Struct, kw_only=True):
    """The trials of one kind: how many, how fast the effect showed, how many never did."""

    kind: str
    trials: int  # seen + missed
    missed: int  # not seen within the deadline
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None
    round_trip_ms: float | None  # median round trip of the polling GETs: the resolution
    # Seen in the answer to the first GET: the effect was there before it, the time is its
    # round trip.
    first_get: int = 0
    attributed: int | None = None  # event trials: changed lists that cite the viewed product


class Freshness(msgspec.Struct, kw_only=True):
    """What the probe saw during one run, and what it cost and left behind."""

    kinds: list[KindSummary]
    trials_asked: int  # per kind (write and event; stock follows the writes that showed)
    period_s: float  # a trial (of either kind) starts this often, or later after a long one
    seconds_needed: float  # the run's length that would leave room for every trial asked
    cut_short: bool  # the run ended before that many
    deadline_s: float
    seconds: float  # from the first trial's start to the last one's end
    requests: int
    rps: float
    product_writes: int  # POST and PATCH sent: each new vector is embedded and indexed
    cpu_percent: float  # of one core, the probe's thread (part of the run's "other" CPU)
    open_at_end: int  # trials still open when the run ended: left out
    failed: int  # trials left out as their write or first GET failed (see errors)
    errors: dict[str, int]  # failed requests, by method and status (or exception)
    refit_during: bool = False  # the live model changed while the probe ran
    copies_deleted: int = 0
    # The model's change count after the clean-up, and the count at which a refit is due.
    changes_since_fit: int | None = None
    refit_due_at_changes: int | None = None

    def cleanup_text(self) -> str:
        text = f"clean-up: copies deleted: {self.copies_deleted}"
        if self.changes_since_fit is not None:
            text += (
                f"; {self.changes_since_fit} catalog changes since the model's fit "
                f"(a refit is due at {self.refit_due_at_changes})"
            )
        return text


def summarise(
    kind: str,
    seconds: Sequence[float],
    missed: int,
    round_trips: Sequence[float],
    first_get: int = 0,
    attributed: int | None = None,
) -> KindSummary:
    """Percentiles (linear interpolation) of the seen trials, in seconds, and the resolution."""
    p50 = p95 = p99 = top = None
    if seconds:
        p50, p95, p99 = (round(float(v), 4) for v in np.percentile(seconds, [50, 95, 99]))
        top = round(max(seconds), 4)
    resolution = round(float(np.median(round_trips)) * 1000, 2) if round_trips else None
    return KindSummary(
        kind=kind,
        trials=len(seconds) + missed,
        missed=missed,
        p50_s=p50,
        p95_s=p95,
        p99_s=p99,
        max_s=top,
        round_trip_ms=resolution,
        first_get=first_get,
        attributed=attributed,
    )


def text_key(product: dict[str, Any]) -> str:
    """The words of a product's text, lower-cased: two products with one key embed alike."""
    text = " ".join(product.get(field, "") for field in ("name", "description", "category"))
    return " ".join(_WORD.findall(text.lower()))


def unique_originals(
    products: Sequence[dict[str, Any]], rng: random.Random
) -> list[dict[str, Any]]:
    """Products whose text no other product shares, in random order."""
    counts = Counter(text_key(product) for product in products)
    chosen = [product for product in products if counts[text_key(product)] == 1]
    rng.shuffle(chosen)
    return chosen


def cites(body: dict[str, Any], product_id: str) -> bool:
    """Whether a recommendation list names `product_id` as the anchor of one of its items."""
    return any(item["reason"].get("anchor") == product_id for item in body["items"])


def listed_ids(body: dict[str, Any]) -> list[str]:
    """The ids of a recommendation list, in its order."""
    return [item["id"] for item in body["items"]]


def interleave(*sequences: Sequence[T]) -> list[T]:
    """The first item of each sequence, then the second of each, and so on (None is skipped)."""
    rows = itertools.zip_longest(*sequences)
    return [item for row in rows for item in row if item is not None]


@dataclass(slots=True)
class _Tally:
    """The trials' outcomes so far, per kind."""

    seen: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    missed: Counter[str] = field(default_factory=Counter)
    first_get: Counter[str] = field(default_factory=Counter)
    round_trips: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    attributed: int = 0

    def summary(self, kind: str) -> KindSummary:
        return summarise(
            kind,
            self.seen[kind],
            self.missed[kind],
            self.round_trips[kind],
            self.first_get[kind],
            self.attributed if kind == EVENT else None,
        )


class _RunEnded(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The run ended before the trial's outcome was known."""


class _Failed(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A request failed: its trial is left out, unless it was one of the polls."""


class Probe:
    """The trials beside a wrk run: `start` (a thread running `run`); `halt` once wrk has
    ended, then `result`; `clean_up` deletes the copies."""

    def __init__(
        self,
        url: str,
        products: Sequence[dict[str, Any]],
        trials: int,
        deadline: float,
        seed: int,
        lead: float = LEAD_SECONDS,
        period: float = PERIOD,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: a fake service
    ) -> None:
        self.url = url
        self.lead = lead
        self.period = period
        self.transport = transport
        self.products = products
        self.trials = trials
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.originals = unique_originals(products, self.rng)
        self.prefix = f"probe-{time.strftime('%Y%m%d%H%M%S')}-"
        self.copies: list[str] = []
        # Made once: httpx would make one (a fifth of its CPU here) for each trial's client.
        self._tls = ssl.create_default_context()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: Freshness | None = None
        self._failure: BaseException | None = None
        self._ends_at = 0.0
        self._version_before: int | None = None
        self._requests = 0
        self._product_writes = 0
        self._errors: Counter[str] = Counter()
        self._left_out: Counter[type[Exception]] = Counter()

    def start(self, seconds: float) -> None:
        """Begin `run(seconds)` in a thread of its own, with its own event loop."""
        self._version_before = self._model_version()
        self._thread = threading.Thread(
            target=self._main, args=(seconds,), name="freshness-probe", daemon=True
        )
        self._thread.start()

    def halt(self) -> None:
        """End the trials (an open one is left out) and wait for the thread; never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=REQUEST_TIMEOUT + 10)
        after = self._model_version()
        if self._result is not None and None not in (self._version_before, after):
            self._result.refit_during = self._version_before != after

    def result(self) -> Freshness:
        """What the trials saw, once halted."""
        if self._failure is not None:
            raise RuntimeError("the freshness probe failed") from self._failure
        if self._result is None:
            raise RuntimeError("the freshness probe did not finish")
        return self._result

    def _main(self, seconds: float) -> None:
        try:
            self._result = asyncio.run(self.run(seconds))
        except BaseException as error:  # noqa: BLE001 - handed to the caller by result()
            self._failure = error

    def _over(self) -> bool:
        return self._stop.is_set() or time.perf_counter() >= self._ends_at

    async def run(self, seconds: float) -> Freshness:
        """The trials, until they are done or `seconds` from now (an open trial is left out)."""
        self._ends_at = time.perf_counter() + seconds
        await asyncio.sleep(self.lead)
        tally = _Tally()
        started, cpu_at_start = time.perf_counter(), time.thread_time()
        writes = [
            functools.partial(self._write_trial, original, tally)
            for original in self.originals[: self.trials]
        ]
        events = [
            functools.partial(self._event_trial, number, tally) for number in range(self.trials)
        ]
        for number, trial in enumerate(interleave(writes, events)):
            # On schedule, or at once when behind it (trials do not bunch up to catch up).
            due = min(started + number * self.period, self._ends_at)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if self._over():
                break
            try:
                await trial()
            except (_RunEnded, _Failed) as reason:
                self._left_out[type(reason)] += 1
        ended = time.perf_counter()
        busy = max(ended - started, 1e-9)
        kinds = [tally.summary(kind) for kind in KINDS]
        return Freshness(
            kinds=kinds,
            trials_asked=self.trials,
            period_s=self.period,
            # Write and event trials alternate, one period apart at the most.
            seconds_needed=round(self.lead + 2 * self.trials * self.period, 1),
            cut_short=any(k.trials < self.trials for k in kinds if k.kind != STOCK),
            deadline_s=self.deadline,
            seconds=round(busy, 2),
            requests=self._requests,
            rps=round(self._requests / busy, 1),
            product_writes=self._product_writes,
            cpu_percent=round(100.0 * (time.thread_time() - cpu_at_start) / busy, 1),
            open_at_end=self._left_out[_RunEnded],
            failed=self._left_out[_Failed],
            errors=dict(self._errors.most_common()),
        )

    def _client(self) -> httpx.AsyncClient:
        """A client (one connection) per trial, so that the trials spread over the service's
        worker processes, which each accept connections."""
        return httpx.AsyncClient(
            base_url=self.url, timeout=REQUEST_TIMEOUT, verify=self._tls, transport=self.transport
        )

    async def _request(
        self, client: httpx.AsyncClient, method: str, path: str, **kwargs: Any
    ) -> tuple[Any, float]:
        """(decoded JSON body, seconds) of one request; _Failed, counted, if it fails."""
        self._requests += 1
        started = time.perf_counter()
        # No answer by the run's end is no answer under its load: the trial stays open.
        timeout = min(REQUEST_TIMEOUT, max(0.05, self._ends_at - started))
        try:
            response = await client.request(method, path, timeout=timeout, **kwargs)
        except httpx.HTTPError as error:
            if isinstance(error, httpx.TimeoutException) and self._over():
                raise _RunEnded from error
            self._errors[f"{method} {type(error).__name__}"] += 1
            raise _Failed from error
        seconds = time.perf_counter() - started
        if response.status_code >= 400:
            self._errors[f"{method} {response.status_code}"] += 1
            raise _Failed
        return (msgspec.json.decode(response.content) if response.content else None), seconds

    def _model_version(self) -> int | None:
        """The live model's version, read outside the load (None where it cannot be)."""
        try:
            response = httpx.get(f"{self.url}/api/v1/admin/model", timeout=REQUEST_TIMEOUT)
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        version: int | None = (response.json().get("info") or {}).get("version")
        return version

    async def _poll(
        self,
        client: httpx.AsyncClient,
        path: str,
        shown: Callable[[Any], bool],
        kind: str,
        tally: _Tally,
    ) -> Any:
        """GET `path` every POLL_PAUSE until `shown(body)`, and record the time it took (or a miss
        at the deadline) under `kind`; the last body, or None on a miss. A failed GET shows
        nothing and the polling goes on (leaving the trial out would hide slow ones)."""
        started = time.perf_counter()
        polls = 0
        while True:
            if self._over():
                raise _RunEnded
            polls += 1
            if polls > 1:
                await asyncio.sleep(POLL_PAUSE)
            try:
                body, seconds = await self._request(client, "GET", path)
            except _Failed:
                body = None
            else:
                tally.round_trips[kind].append(seconds)
            waited = time.perf_counter() - started
            if waited > self.deadline:  # even if this answer shows it: not within the deadline
                tally.missed[kind] += 1
                return None
            if body is not None and shown(body):
                tally.seen[kind].append(waited)
                tally.first_get[kind] += polls == 1
                return body

    async def _write_trial(self, original: dict[str, Any], tally: _Tally) -> None:
        async with self._client() as client:
            await self._write_and_stock(client, original, tally)

    async def _write_and_stock(
        self, client: httpx.AsyncClient, original: dict[str, Any], tally: _Tally
    ) -> None:
        copy = f"{self.prefix}{len(self.copies):05d}"
        body = {
            "id": copy,
            "name": original["name"],
            "description": original.get("description", ""),
            "category": original.get("category", ""),
        }
        self.copies.append(copy)
        self._product_writes += 1
        await self._request(client, "POST", "/api/v1/products", json=body)
        similar = f"/api/v1/products/{original['id']}/similar?k=10&min_score=0"
        if await self._poll(client, similar, lambda found: copy in listed_ids(found), WRITE, tally):
            self._product_writes += 1
            await self._request(
                client, "PATCH", f"/api/v1/products/{copy}", json={"in_stock": False}
            )
            await self._poll(
                client, similar, lambda found: copy not in listed_ids(found), STOCK, tally
            )

    async def _event_trial(self, number: int, tally: _Tally) -> None:
        async with self._client() as client:
            await self._view_and_watch(client, number, tally)

    async def _view_and_watch(self, client: httpx.AsyncClient, number: int, tally: _Tally) -> None:
        session = f"{self.prefix}s{number:05d}"
        path = f"/api/v1/sessions/{session}/recommendations"
        first, _ = await self._request(client, "GET", path)
        product = self.rng.choice(self.products)["id"]
        event = {"type": "view", "session_id": session, "product_id": product}
        await self._request(client, "POST", "/api/v1/events", json=event)
        changed = await self._poll(
            client, path, lambda body: listed_ids(body) != listed_ids(first), EVENT, tally
        )
        if changed is not None and cites(changed, product):
            tally.attributed += 1

    def clean_up(self, client: httpx.Client) -> int:
        """Delete the copies the trials wrote; how many were deleted."""
        deleted = 0
        for copy in self.copies:
            response = client.delete(f"/api/v1/products/{copy}")
            if response.status_code != 404:
                response.raise_for_status()
                deleted += 1
        return deleted
