"""Hybrid search fusion as pure logic: hits in, one ranking out."""

import pytest

from recommender.catalog import Product
from recommender.recommending.fusion import Fused, Hit, fuse, name_match, one_side, query_words


def product(product_id: str, name: str) -> Product:
    return Product(id=product_id, name=name, created_at="", updated_at="", version=1)


def ranking(fused: list[Fused]) -> list[tuple[str, str]]:
    return [(item.product.id, item.matched) for item in fused]


def test_query_words_fold_plurals_and_split_letters_from_digits() -> None:
    words = query_words("PS3 Memory Cards cards", last_word_weight=3.0)
    assert words.forms == (
        ("ps", "pss", 1.0),
        ("3", "3s", 1.0),
        ("memory", "memorys", 1.0),
        ("card", "cards", 3.0),  # said twice: the last word's weight wins
    )
    assert words.total == 6.0
    assert query_words("gps bus", 1.0).forms == (("gps", "gpss", 1.0), ("bus", "buss", 1.0))


def test_name_match_is_the_weighted_share_of_query_words_in_the_name() -> None:
    words = query_words("16 gb memory card", last_word_weight=1.0)
    assert name_match(words, "SanDisk 16GB microSDHC Memory Cards") == 1.0
    assert name_match(words, "Memory Foam Pillow") == 0.25
    assert name_match(words, "") == 0.0
    headgear = query_words("martial art headgear", last_word_weight=3.0)
    assert name_match(headgear, "Everlast Black MMA Headgear") == 0.6  # 3 of 5
    assert name_match(headgear, "Zen in the Martial Arts") == 0.4  # 2 of 5
    assert name_match(query_words("x", last_word_weight=0.0), "x") == 0.0  # no weight at all


def test_the_name_match_outweighs_a_blurred_cosine() -> None:
    words = query_words("metal lathe", last_word_weight=3.0)
    bookends, book, drill = (
        product("bookends", "Metal Bookends Pair"),
        product("book", "Metal Lathe for Home Machinists"),
        product("drill", "Screw Lathe Drill Point"),
    )
    lexical = [Hit(book, 26.4), Hit(bookends, 19.5), Hit(drill, 20.2)]
    semantic = [Hit(bookends, 0.74), Hit(book, 0.54), Hit(drill, 0.28)]
    fused = fuse(words, lexical, semantic, depth=3, vector_weight=1.0, name_match_weight=1.0)
    assert ranking(fused) == [
        ("book", "text+vector"),  # 0.54 + 1
        ("drill", "text+vector"),  # 0.28 + 3/4
        ("bookends", "text+vector"),  # 0.74 + 1/4
    ]
    assert fused[0].score == pytest.approx(1.54)
    cosine_only = fuse(words, lexical, semantic, depth=3, vector_weight=1.0, name_match_weight=0)
    assert [item.product.id for item in cosine_only] == ["bookends", "book", "drill"]


def test_a_product_only_bm25_found_gets_the_lowest_cosine_of_a_full_vector_list() -> None:
    words = query_words("teapot", last_word_weight=3.0)
    only_text = product("only-text", "Cast iron kettle")  # BM25 matched its description
    near, far = product("near", "Ceramic jug"), product("far", "Glass jar")
    lexical = [Hit(only_text, 5.0)]
    semantic = [Hit(near, 0.6), Hit(far, 0.4)]
    full = fuse(words, lexical, semantic, depth=2, vector_weight=1.0, name_match_weight=1.0)
    assert ranking(full) == [("near", "vector"), ("only-text", "text"), ("far", "vector")]
    assert full[1].score == pytest.approx(0.4)  # ties with "far": BM25's order goes first
    short = fuse(words, lexical, semantic, depth=3, vector_weight=1.0, name_match_weight=1.0)
    assert ranking(short)[-1] == ("only-text", "text")  # a short list bounds nothing: 0
    assert short[-1].score == 0.0


def test_without_a_query_vector_bm25_order_breaks_ties() -> None:
    words = query_words("lamp", last_word_weight=3.0)
    lexical = [Hit(product(name, f"{name} lamp"), score) for name, score in [("b", 3), ("a", 2)]]
    fused = fuse(words, lexical, [], depth=10, vector_weight=1.0, name_match_weight=1.0)
    assert ranking(fused) == [("b", "text"), ("a", "text")]
    assert [item.score for item in fused] == [1.0, 1.0]


def test_one_side_keeps_its_own_order_and_scales_bm25_to_the_best() -> None:
    hits = [Hit(product("a", "A"), 8.0), Hit(product("b", "B"), 2.0)]
    assert [(f.product.id, f.score, f.matched) for f in one_side(hits, "text")] == [
        ("a", 1.0, "text"),
        ("b", 0.25, "text"),
    ]
    assert [f.score for f in one_side(hits, "vector")] == [8.0, 2.0]
    assert one_side([], "text") == []
