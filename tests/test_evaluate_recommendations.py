"""`recommender evaluate recommendations`: metrics, split and baselines by hand, then a run."""

import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from conftest import evaluation_namespaces_left, run_cli
from recommender.config import Settings
from recommender.evaluation import (
    EvaluationError,
    ItemKnn,
    Purchase,
    binary_ndcg,
    evaluate_recommendations,
    hit_rate,
    load_events,
    own_frequency,
    popular_products,
    recall,
    score_baselines,
    score_rankings,
    split_events,
    top,
)
from recommender.importing import Progress
from recommender.tracking import Event, Shopper

LOG2_3 = math.log2(3)
CUTOFF = datetime(2024, 3, 10, tzinfo=UTC)


def user(name: str) -> Shopper:
    return Shopper("user", name)


def test_metrics_by_hand() -> None:
    ranking = ["x", "a", "y", "b"]
    truth = {"a", "b", "c"}
    assert hit_rate(ranking, truth) == 1.0
    assert hit_rate(ranking, truth, cutoff=1) == 0.0
    assert recall(ranking, truth) == pytest.approx(2 / 3)
    # gains 0 1 0 1 against the ideal 1 1 1
    expected = (1 / LOG2_3 + 1 / math.log2(5)) / (1 + 1 / LOG2_3 + 1 / 2)
    assert binary_ndcg(ranking, truth) == pytest.approx(expected)
    assert expected == pytest.approx(0.498189, abs=1e-6)
    # The ideal never has more than `cutoff` ones.
    assert binary_ndcg(["a"], {"a", "b", "c"}, cutoff=1) == 1.0


def test_scores_average_over_the_truth_and_a_missing_list_counts_zero() -> None:
    truths = {user("u1"): frozenset({"a"}), user("u2"): frozenset({"b", "c"})}
    scores = score_rankings({user("u1"): ["a"], user("stranger"): ["b"]}, truths)
    assert (scores.hr, scores.recall, scores.ndcg) == (0.5, 0.5, 0.5)
    assert score_rankings({}, {}).ndcg == 0.0


def event(kind: str, who: str, product: str, day: float, order: str = "") -> Event:
    when = datetime(2024, 3, 1, tzinfo=UTC).timestamp() + (day - 1) * 86400
    return Event(
        type=kind,  # type: ignore[arg-type]
        user_id=who,
        product_id=product,
        order_id=order or None,
        timestamp=datetime.fromtimestamp(when, UTC),
    )


def purchases(who: str, day: float, order: str, *products: str) -> list[Event]:
    return [event("purchase", who, product, day, order) for product in products]


# Campers buy tent, bag and mat together; "regular" buys mugs; after the cutoff (day 10),
# "newcomer" comes back for a bag and a mat, "regular" for a mug, "viewer" for a lamp.
HISTORY = [
    *purchases("camper1", 1, "c1", "tent", "bag", "mat"),
    *purchases("camper2", 2, "c2", "tent", "bag", "mat"),
    *purchases("camper3", 3, "c3", "tent", "bag"),
    *purchases("regular", 1, "r1", "mug"),
    *purchases("regular", 5, "r2", "mug", "kettle"),
    *purchases("newcomer", 6, "n1", "tent"),
    event("view", "viewer", "lamp", 7),
    *purchases("newcomer", 15, "n3", "stove"),
    *purchases("newcomer", 12.5, "n2", "mat"),
    *purchases("newcomer", 12, "n2", "bag"),  # the order's first line: n2 is the first order
    *purchases("regular", 11, "r3", "mug"),
    *purchases("viewer", 11, "v1", "lamp"),
    *purchases("ghost", 11, "g1", "tent"),  # no history before the cutoff: not evaluated
]


def test_split_takes_each_users_first_order_after_the_cutoff() -> None:
    split = split_events(HISTORY, CUTOFF)
    assert split.truth == {
        user("newcomer"): {"bag", "mat"},
        user("regular"): {"mug"},
        user("viewer"): {"lamp"},
    }
    assert split.new_products() == {user("newcomer"): {"bag", "mat"}, user("viewer"): {"lamp"}}
    assert [p.product for p in split.history[user("regular")]] == ["mug", "mug", "kettle"]
    assert split.bought(user("viewer")) == frozenset()


def test_orders_on_the_same_first_instant_go_by_order_id() -> None:
    later = [*purchases("u", 1, "o1", "a"), *purchases("u", 12, "z9", "b"),
             *purchases("u", 12, "a1", "c")]  # fmt: skip
    assert split_events(later, CUTOFF).truth == {user("u"): {"c"}}


def test_popularity_counts_purchases_in_the_window_ties_by_id() -> None:
    history = {
        user("u1"): [Purchase("b", 10.0), Purchase("a", 10.0)],
        user("u2"): [Purchase("c", 1.0), Purchase("c", 2.0), Purchase("a", 9.0)],
    }
    assert popular_products(history, since=5.0) == ["a", "b"]
    assert popular_products(history, since=0.0) == ["a", "c", "b"]


def test_own_frequency_ranks_by_count_then_recency() -> None:
    mine = [Purchase("a", 1.0), Purchase("b", 1.0), Purchase("c", 5.0),
            Purchase("b", 6.0), Purchase("a", 2.0)]  # fmt: skip
    assert own_frequency(mine) == ["b", "a", "c"]


def test_item_knn_sums_cosine_similarities_by_hand() -> None:
    # Product columns over the shoppers: a (1,1,0), b (1,1,0), c (0,1,1), d (0,0,1).
    knn = ItemKnn([{"a", "b"}, {"a", "b", "c"}, {"c", "d"}])
    assert knn.rank({"a"}, 10) == ["b", "c"]  # cos 1 and 1/2; d shares no shopper with a
    # b: 1 + 1/2, d: 1/sqrt(2), a and c 1/2 each (through each other: never themselves)
    assert knn.rank({"a", "c"}, 10) == ["b", "d", "a", "c"]
    assert knn.rank({"a", "c"}, 10, leave_out={"a", "c"}) == ["b", "d"]
    assert knn.rank({"unknown"}, 10) == []
    assert top(["a", "b", "c"], 2, leave_out={"a"}) == ["b", "c"]


def test_baselines_by_hand() -> None:
    baselines = score_baselines(split_events(HISTORY, CUTOFF), CUTOFF)
    # popular: tent 4, bag 3, mat 2, mug 2, kettle 1. All: newcomer finds bag and mat at 2 and
    # 3, regular the mug at 4, viewer nothing; discovery: newcomer (tent left out) at 1 and 2.
    popular = baselines.popular
    newcomer = (1 / LOG2_3 + 1 / 2) / (1 + 1 / LOG2_3)
    assert popular.all.ndcg == pytest.approx((newcomer + 1 / math.log2(5)) / 3)
    assert (popular.all.hr, popular.all.recall) == pytest.approx((2 / 3, 2 / 3))
    assert (popular.discovery.hr, popular.discovery.ndcg) == (0.5, 0.5)
    # own frequency: only regular's mug comes back; nothing is new in one's own purchases.
    own = baselines.own_frequency
    assert (own.all.hr, own.all.ndcg) == pytest.approx((1 / 3, 1 / 3))
    assert (own.discovery.hr, own.discovery.ndcg) == (0.0, 0.0)
    # item-kNN: tent leads newcomer to bag and mat; regular's list is kettle, mug (a tie).
    knn = baselines.item_knn
    assert knn.all.ndcg == pytest.approx((1 + 1 / LOG2_3) / 3)
    assert (knn.discovery.hr, knn.discovery.ndcg) == (0.5, 0.5)


def test_load_events_leaves_out_invalid_and_undated_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "timestamp,user_id,type,product_id\n"
        "2024-03-01T10:00:00Z,u1,view,mug\n"
        ",u1,view,mug\n"
        "2024-03-01T10:00:00Z,u1,teleport,mug\n"
    )
    events, left_out = load_events(str(path))
    assert [(item.line, e.product_id) for item, e in events] == [(2, "mug")]
    assert [r.line for r in left_out] == [3, 4]
    assert left_out[0].reason.startswith("timestamp: needed")
    assert "teleport" in left_out[1].reason


# -- a whole run ----------------------------------------------------------------------------------

PRODUCTS = [
    {"id": "tent", "name": "Two person camping tent"},
    {"id": "bag", "name": "Down sleeping bag"},
    {"id": "mat", "name": "Inflatable sleeping mat"},
    {"id": "stove", "name": "Camping gas stove"},
    {"id": "mug", "name": "White ceramic coffee mug"},
    {"id": "kettle", "name": "Electric kettle"},
    {"id": "lamp", "name": "Brass desk lamp", "in_stock": False},
]


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[str, str]:
    products = tmp_path / "products.jsonl"
    products.write_text("".join(json.dumps(p) + "\n" for p in PRODUCTS))
    events = tmp_path / "events.csv"
    rows = [
        f"{e.timestamp.isoformat() if e.timestamp else ''},{e.user_id},{e.type},"
        f"{e.product_id},{e.order_id or ''}"
        for e in HISTORY
    ]
    events.write_text("timestamp,user_id,type,product_id,order_id\n" + "\n".join(rows) + "\n")
    return str(products), str(events)


@pytest.mark.asyncio
@pytest.mark.usefixtures("cli_env")
async def test_json_report_and_the_namespace_is_gone_afterwards(
    inputs: tuple[str, str],
    redis: "aioredis.Redis",
    capsys: pytest.CaptureFixture[str],
) -> None:
    products, events = inputs
    argv = ["evaluate", "recommendations", "--products", products, "--events", events,
            "--cutoff", "2024-03-10", "--json"]  # fmt: skip
    assert await run_cli(*argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["for_you", "baselines", "users"]
    assert report["users"] == 3
    assert list(report["baselines"]) == ["popular", "own_frequency", "item_knn"]
    for views in (report["for_you"], *report["baselines"].values()):
        assert list(views) == ["discovery", "all"]
        for scores in views.values():
            assert list(scores) == ["hr@10", "recall@10", "ndcg@10"]
    assert report["baselines"]["own_frequency"]["all"]["ndcg@10"] == pytest.approx(1 / 3)
    # The tent's co-purchases bring newcomer's bag and mat; buy-again brings regular's mug.
    assert report["for_you"]["discovery"]["hr@10"] >= 0.5
    assert report["for_you"]["all"]["hr@10"] >= 2 / 3
    assert await evaluation_namespaces_left(redis) == ([], [])


@pytest.mark.asyncio
async def test_readable_report_and_a_split_without_users_fails(
    inputs: tuple[str, str], redis: "aioredis.Redis", settings: Settings
) -> None:
    products, events = inputs
    progress = io.StringIO()
    result = await evaluate_recommendations(
        settings, products, events, cutoff=CUTOFF, batch_size=3, progress=Progress(progress)
    )
    text = result.render()
    assert "3 users (2 in the discovery view)" in text
    assert text.splitlines()[5].startswith("popular ")
    assert "for you" in text
    assert result.history_events == 13
    assert await evaluation_namespaces_left(redis) == ([], [])
    with pytest.raises(EvaluationError, match="no user has events before 2020-01-01"):
        await evaluate_recommendations(
            settings, products, events, cutoff=datetime(2020, 1, 1, tzinfo=UTC), batch_size=3,
            progress=Progress(progress),
        )  # fmt: skip
