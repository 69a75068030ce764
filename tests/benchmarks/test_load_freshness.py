"""Tests for the load benchmark's freshness probe: its figures, its choices, and its trials
against a fake service (no timing is asserted, only counts and what was written)."""

import asyncio
import random
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
from benchmarks.load.freshness import (
    EVENT,
    KINDS,
    STOCK,
    WRITE,
    Freshness,
    Probe,
    cites,
    interleave,
    summarise,
    text_key,
    unique_originals,
)
from benchmarks.load.report import freshness_lines


def test_summarise_gives_percentiles_in_seconds_and_the_resolution_in_ms() -> None:
    seconds = [n / 100 for n in range(1, 101)]  # 0.01 .. 1.00

    summary = summarise(WRITE, seconds, missed=2, round_trips=[0.002, 0.004, 0.010])

    assert summary.trials == 102
    assert summary.missed == 2
    assert summary.p50_s == pytest.approx(0.505)
    assert summary.p95_s == pytest.approx(0.9505)
    assert summary.p99_s == pytest.approx(0.9901)
    assert summary.max_s == 1.0
    assert summary.round_trip_ms == 4.0
    assert summary.attributed is None


def test_summarise_without_a_sighting_has_no_percentiles() -> None:
    summary = summarise(EVENT, [], missed=3, round_trips=[], first_get=0, attributed=0)

    assert (summary.trials, summary.missed) == (3, 3)
    assert summary.p50_s is summary.p99_s is summary.max_s is summary.round_trip_ms is None
    assert summary.attributed == 0


def test_unique_originals_leave_out_products_whose_text_another_shares() -> None:
    products = [
        {"id": "a", "name": "Red Mug", "description": ""},
        {"id": "b", "name": "red  mug!", "description": ""},  # the same words as a
        {"id": "c", "name": "Blue Mug", "description": "", "category": "Kitchen"},
        {"id": "d", "name": "Blue Mug", "description": ""},  # differs from c by its category
    ]

    chosen = unique_originals(products, random.Random(0))

    assert sorted(product["id"] for product in chosen) == ["c", "d"]
    assert text_key(products[0]) == text_key(products[1]) == "red mug"


def test_interleave_alternates_and_runs_on_with_the_longer() -> None:
    assert interleave([1, 3], [2, 4, 5, 6]) == [1, 2, 3, 4, 5, 6]


def test_cites_looks_for_the_product_among_the_anchors() -> None:
    body = {"items": [{"id": "x", "reason": {"strategy": "similar", "anchor": "p"}}]}

    assert cites(body, "p")
    assert not cites(body, "q")
    assert not cites({"items": [{"id": "x", "reason": {"strategy": "popular"}}]}, "p")


class FakeService:
    """Just enough of the API: a copy shows in its original's similar list after two GETs (the
    first GET after each write fails with 503), a copy of `hidden` never does; a session's list
    changes with its first view."""

    def __init__(self, products: list[dict[str, Any]], hidden: str) -> None:
        self.by_text = {text_key(p): p["id"] for p in products}
        self.hidden = hidden
        self.copies: dict[str, dict[str, Any]] = {}  # id -> {"of", "in_stock", "polls"}
        self.views: dict[str, str] = {}  # session -> viewed product
        self.deleted: list[str] = []
        self.unavailable = False  # the next similar GET gets a 503
        self.writes_fail = False  # every product write gets a 503

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = urlsplit(str(request.url)).path.strip("/").split("/")[2:]  # after /api/v1
        body = msgspec.json.decode(request.content) if request.content else None
        if request.method == "GET" and parts == ["admin", "model"]:
            return httpx.Response(200, json={"info": {"version": 7}})
        if self.writes_fail and parts[0] == "products" and request.method != "GET":
            return httpx.Response(503, json={"error": "redis_unavailable"})
        if request.method == "POST" and parts == ["products"]:
            original = self.by_text[text_key(body)]
            self.copies[body["id"]] = {"of": original, "in_stock": True, "polls": 0}
            self.unavailable = True
            return httpx.Response(201, json=body)
        if request.method == "PATCH" and parts[0] == "products":
            self.copies[parts[1]]["in_stock"] = body["in_stock"]
            return httpx.Response(200, json={})
        if request.method == "DELETE" and parts[0] == "products":
            self.deleted.append(parts[1])
            return httpx.Response(204 if self.copies.pop(parts[1], None) else 404)
        if request.method == "GET" and parts[-1] == "similar" and self.unavailable:
            self.unavailable = False
            return httpx.Response(503, json={"error": "redis_unavailable"})
        if request.method == "GET" and parts[-1] == "similar":
            return httpx.Response(200, json={"items": self._similar(parts[1])})
        if request.method == "POST" and parts == ["events"]:
            self.views[body["session_id"]] = body["product_id"]
            return httpx.Response(202, json={"accepted": 1})
        if request.method == "GET" and parts[0] == "sessions":
            viewed = self.views.get(parts[1])
            reason = (
                {"strategy": "similar", "anchor": viewed} if viewed else {"strategy": "popular"}
            )
            items = [{"id": "n" if viewed else "p", "reason": reason}]
            return httpx.Response(200, json={"items": items})
        return httpx.Response(404)

    def _similar(self, original: str) -> list[dict[str, Any]]:
        items = []
        for copy, state in self.copies.items():
            if state["of"] != original or original == self.hidden:
                continue
            state["polls"] += 1
            if state["polls"] > 2 and state["in_stock"]:
                items.append({"id": copy, "reason": {"strategy": "similar", "anchor": original}})
        return items


def test_the_probe_times_each_kind_and_deletes_its_copies() -> None:
    products = [{"id": f"p{n}", "name": f"product {n}", "description": ""} for n in range(5)]
    probe = Probe("http://fake", products, trials=4, deadline=0.05, seed=1, lead=0.0, period=0.0)
    service = FakeService(products, hidden=probe.originals[2]["id"])
    probe.transport = httpx.MockTransport(service)

    seen: Freshness = asyncio.run(probe.run(seconds=60.0))

    kinds = {kind.kind: kind for kind in seen.kinds}
    assert (kinds[WRITE].trials, kinds[WRITE].missed) == (4, 1)  # the hidden one never shows
    assert (kinds[STOCK].trials, kinds[STOCK].missed) == (3, 0)
    assert (kinds[EVENT].trials, kinds[EVENT].missed, kinds[EVENT].attributed) == (4, 0, 4)
    # The fake shows a copy at the third GET (the first failed), a view at once.
    assert [kinds[k].first_get for k in KINDS] == [0, 3, 4]
    assert not seen.cut_short
    assert seen.product_writes == 4 + 3  # the copies, and out of stock for those that showed
    # A failed poll is one that did not show the copy: the polling went on.
    assert (seen.open_at_end, seen.failed, seen.errors) == (0, 0, {"GET 503": 4})
    assert len(set(probe.copies)) == 4
    assert all(copy.startswith(probe.prefix) for copy in probe.copies)

    with httpx.Client(base_url="http://fake", transport=httpx.MockTransport(service)) as http:
        assert probe.clean_up(http) == 4
    assert sorted(service.deleted) == sorted(probe.copies)
    assert not service.copies


def test_a_trial_whose_write_fails_is_left_out_and_counted() -> None:
    products = [{"id": f"p{n}", "name": f"product {n}", "description": ""} for n in range(3)]
    probe = Probe("http://fake", products, trials=2, deadline=1.0, seed=1, lead=0.0, period=0.0)
    service = FakeService(products, hidden="")
    service.writes_fail = True
    probe.transport = httpx.MockTransport(service)

    seen = asyncio.run(probe.run(seconds=60.0))

    assert [kind.trials for kind in seen.kinds] == [0, 0, 2]
    assert (seen.failed, seen.open_at_end, seen.errors) == (2, 0, {"POST 503": 2})


def test_a_run_that_ends_at_once_is_cut_short_and_says_so() -> None:
    products = [{"id": "p0", "name": "product", "description": ""}]
    probe = Probe("http://fake", products, trials=3, deadline=1.0, seed=1, lead=0.0, period=0.0)
    probe.transport = httpx.MockTransport(FakeService(products, hidden=""))

    seen = asyncio.run(probe.run(seconds=0.0))

    assert seen.cut_short
    assert [kind.trials for kind in seen.kinds] == [0, 0, 0]
    text = "\n".join(freshness_lines(seen, offered_rate=1000.0))
    assert "fewer trials than the 3 asked" in text
    assert "--rate-duration 0 or more" in text
    assert "-: no trial" in text


def test_the_report_gives_a_verdict_per_kind_and_the_probe_cost() -> None:
    seen = Freshness(
        kinds=[
            summarise(WRITE, [0.1] * 10, 0, [0.01]),
            summarise(STOCK, [2.0] * 10, 0, [0.01]),
            summarise(EVENT, [0.02] * 10, 1, [0.01], first_get=10, attributed=9),
        ],
        trials_asked=10,
        period_s=0.2,
        seconds_needed=5.0,
        cut_short=False,
        deadline_s=5.0,
        seconds=20.0,
        requests=400,
        rps=20.0,
        product_writes=20,
        cpu_percent=3.0,
        open_at_end=1,
        failed=2,
        errors={"GET 503": 1},
        refit_during=False,
        copies_deleted=10,
    )

    text = "\n".join(freshness_lines(seen, offered_rate=1000.0))

    lines = text.splitlines()
    assert "one every 0.2 s at most" in text
    assert "20.0/s (2.0% of the offered rate)" in text
    assert "its 20 product writes (1.0/s)" in text
    write, stock, event = (next(x for x in lines if x.strip().startswith(k)) for k in KINDS)
    assert write.rstrip().endswith("yes")
    assert stock.rstrip().endswith("NO")  # p99 of 2 s
    assert event.rstrip().endswith("NO")  # one missed
    assert "9 of 10 changed lists name the viewed product" in text
    assert "1 trial(s) left out: still open" in text
    assert "2 trial(s) left out: their write or first GET failed" in text
    assert "GET 503 x 1" in text
    assert "copies deleted: 10" in text
