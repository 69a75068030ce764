"""`recommender evaluate search`: the metrics by hand, then a whole run on a tiny catalog."""

import asyncio
import io
import json
import math
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from conftest import evaluation_namespaces_left, run_cli
from recommender.config import Settings
from recommender.evaluation import (
    Evaluation,
    EvaluationError,
    condense,
    dcg,
    evaluate_search,
    hit,
    load_judgments,
    ndcg,
    score,
)
from recommender.importing import Progress

# Gains with the lowest grade 1: a 2, b 1, c 0, d 0.
GRADES = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 1.0}
LOG2_3 = math.log2(3)


def test_condense_drops_unjudged_products_and_keeps_the_order() -> None:
    assert condense(["x", "b", "y", "a", "c"], GRADES) == ["b", "a", "c"]
    assert condense(["x", "y"], GRADES) == []


def test_dcg_discounts_by_log2_of_rank_plus_one() -> None:
    assert dcg([3, 2, 1]) == pytest.approx(3 + 2 / LOG2_3 + 1 / 2)
    assert dcg([]) == 0


def test_ndcg_by_hand() -> None:
    # condensed: b, a, c -> gains 1, 2, 0; ideal: a, b -> 2, 1
    expected = (1 + 2 / LOG2_3) / (2 + 1 / LOG2_3)
    assert ndcg(["x", "b", "y", "a", "c"], GRADES, lowest=1) == pytest.approx(expected)
    assert expected == pytest.approx(0.859718, abs=1e-6)


def test_ndcg_cuts_the_condensed_list_not_the_raw_one() -> None:
    # cutoff 2 of the condensed c, a, b: gains 0, 2 against the ideal 2, 1
    ranking = ["x", "y", "z", "c", "a", "b"]
    assert ndcg(ranking, GRADES, lowest=1, cutoff=2) == pytest.approx(
        (2 / LOG2_3) / (2 + 1 / LOG2_3)
    )
    assert ndcg(ranking, GRADES, lowest=1, cutoff=2) == pytest.approx(0.479625, abs=1e-6)


def test_ndcg_edges() -> None:
    assert ndcg(["a", "b", "c", "d"], GRADES, lowest=1) == pytest.approx(1.0)
    assert ndcg(["x"], GRADES, lowest=1) == 0.0
    # No judged product has a gain over the lowest grade: nothing to find, scored 0.
    assert ndcg(["c", "d"], {"c": 1.0, "d": 1.0}, lowest=1) == 0.0


def test_hit_looks_for_a_relevant_product_in_the_condensed_top() -> None:
    assert hit(["x", "b", "a"], GRADES, relevant_at=3) == 1.0
    assert hit(["x", "b", "c"], GRADES, relevant_at=3) == 0.0
    assert hit(["b", "c", "a"], GRADES, relevant_at=3, cutoff=2) == 0.0
    assert hit(["b", "c", "a"], GRADES, relevant_at=2, cutoff=2) == 1.0


def test_score_averages_over_every_judged_query() -> None:
    judgments = {"mugs": GRADES, "tea": {"t": 4.0, "u": 2.0}}
    scores = score({"mugs": ["a", "b", "c", "d"]}, judgments, relevant_at=3.5)  # tea: no ranking
    assert scores.ndcg == pytest.approx(0.5)
    assert scores.hit == 0.0  # mugs' best grade, 3, is under 3.5
    scores = score({"mugs": ["b"], "tea": ["u", "t"]}, judgments, relevant_at=3.5)
    # lowest grade 1 overall: mugs b -> 1 / (2 + 1/log2 3); tea u, t -> gains 1, 3 vs 3, 1
    mugs = 1 / (2 + 1 / LOG2_3)
    tea = (1 + 3 / LOG2_3) / (3 + 1 / LOG2_3)
    assert scores.ndcg == pytest.approx((mugs + tea) / 2)
    assert scores.hit == 0.5


def test_judgments_keep_the_higher_grade_and_name_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text('query,product_id,relevance\nred mug,a,2\n"mug, red",b,4\nred mug,a,3.5\n')
    assert load_judgments(str(good)) == {"red mug": {"a": 3.5}, "mug, red": {"b": 4.0}}
    for name, text, message in (
        ("header.csv", "q,p,r\nx,a,1\n", "line 1: the header must be"),
        ("grade.csv", "query,product_id,relevance\nx,a,1\nx,b,high\n", "line 3: relevance 'high'"),
        ("short.csv", "query,product_id,relevance\nx,a\n", "line 2: needs a query"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(EvaluationError, match=message):
            load_judgments(str(tmp_path / name))


# -- a whole run ----------------------------------------------------------------------------------

PRODUCTS = [
    {"id": "mug-red", "name": "Red ceramic mug", "description": "A red mug for coffee"},
    {"id": "mug-blue", "name": "Blue ceramic mug", "description": "A blue mug for tea"},
    {"id": "scarf-red", "name": "Red wool scarf", "description": "Warm and red"},
    {"id": "tea", "name": "Green tea", "description": "Loose leaf tea", "in_stock": False},
    {"id": "coffee", "name": "Coffee beans", "description": "Dark roast coffee beans"},
    {"id": "kettle", "name": "Steel kettle", "description": "Boils water for tea"},
]
JUDGMENTS = """query,product_id,relevance
red mug,mug-red,4
red mug,mug-blue,2
red mug,scarf-red,1
green tea,tea,4
green tea,kettle,2
green tea,coffee,1
"""


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[str, str]:
    products = tmp_path / "products.jsonl"
    products.write_text("".join(json.dumps(p) + "\n" for p in PRODUCTS))
    judgments = tmp_path / "judgments.csv"
    judgments.write_text(JUDGMENTS)
    return str(products), str(judgments)


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_json_report_and_the_namespace_is_gone_afterwards(
    inputs: tuple[str, str],
    redis: "aioredis.Redis",
    capsys: pytest.CaptureFixture[str],
) -> None:
    products, judgments = inputs
    argv = ["evaluate", "search", "--products", products, "--judgments", judgments, "--json"]
    assert await run_cli(*argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["hybrid", "bm25", "vector", "queries", "products"]
    assert (report["queries"], report["products"]) == (2, 6)
    for mode in ("hybrid", "bm25", "vector"):
        assert list(report[mode]) == ["ndcg@10", "hit@10"]
        assert 0 <= report[mode]["ndcg@10"] <= 1
    # Both queries name their best product outright, and the out-of-stock tea is not hidden;
    # only the order of the two one-word matches of "red mug" is BM25's to choose.
    assert report["bm25"]["hit@10"] == 1.0
    assert report["bm25"]["ndcg@10"] > 0.95
    assert await evaluation_namespaces_left(redis) == ([], [])


@pytest.mark.asyncio
async def test_namespace_is_removed_when_the_run_fails_or_is_cancelled(
    inputs: tuple[str, str], redis: "aioredis.Redis", settings: Settings, tmp_path: Path
) -> None:
    products, judgments = inputs
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps(p) + "\n" for p in PRODUCTS) + "{oops\n")

    def run(products: str) -> Coroutine[Any, Any, Evaluation]:
        return evaluate_search(
            settings, products, judgments, relevant_at=3.5, batch_size=2,
            progress=Progress(io.StringIO()),
        )  # fmt: skip

    with pytest.raises(EvaluationError, match=r"broken\.jsonl: line 7: invalid JSON"):
        await run(str(broken))
    assert await evaluation_namespaces_left(redis) == ([], [])

    # Ctrl-C reaches asyncio.run's main task as a cancellation; cancel once indexing is under way.
    task = asyncio.create_task(run(products))
    while not (await evaluation_namespaces_left(redis))[1]:  # noqa: ASYNC110 - polling Redis, no event
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await evaluation_namespaces_left(redis) == ([], [])
