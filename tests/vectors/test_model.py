"""The embedding model on its own: shapes, tiny catalogs, the fast path, serialisation."""

import pickle
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from recommender.vectors.model import (
    DIMS,
    EmbeddingModel,
    FieldSpec,
    ModelConfig,
    ModelFormatError,
    ProductText,
    fit_model,
    fit_pipeline,
)

KINDS = {
    "Home > Kitchen > Mugs": ("mug", ("ceramic", "coffee", "tea", "stoneware", "handle", "glaze")),
    "Shoes > Running": (
        "running shoe",
        ("cushioned", "sole", "marathon", "mesh", "laces", "trail"),
    ),
    "Electronics > Phones": (
        "smartphone",
        ("camera", "battery", "screen", "android", "charger", "5g"),
    ),
    "Garden > Tools": ("garden spade", ("steel", "blade", "digging", "soil", "ash", "grip")),
    "Toys > Puzzles": ("jigsaw puzzle", ("pieces", "cardboard", "picture", "family", "box", "map")),
}
COLOURS = ("red", "blue", "green", "black", "white", "yellow")
BRANDS = ("Acme", "Northwind", "Globex", "Initech")
UNSEEN = [
    ProductText("Stoneware coffee mug", "A glazed mug for tea or coffee."),
    ProductText("Trail running shoe", "Cushioned mesh shoe", "Shoes > Running", tags=("sport",)),
    ProductText("Zyxwv qwerty", "words the catalog never saw"),
    ProductText(""),
]


def catalog() -> list[ProductText]:
    """120 products in five kinds: enough terms (> 384) for the SVD path, 120 components."""
    texts = []
    for number, (category, (noun, words)) in enumerate(KINDS.items()):
        for c, colour in enumerate(COLOURS):
            for b, brand in enumerate(BRANDS):
                extra = " and ".join(words[(c + b * i) % len(words)] for i in (1, 2, 3))
                texts.append(
                    ProductText(
                        name=f"{brand} {colour} {noun} {number}{c}{b}",
                        description=f"A {colour} {noun} with {extra}. A fine {words[0]} {noun}.",
                        category=category,
                        brand=brand,
                        tags=(colour, words[c]),
                    )
                )
    return texts


@pytest.fixture(scope="module")
def texts() -> list[ProductText]:
    return catalog()


@pytest.fixture(scope="module")
def pipeline(texts: list[ProductText]) -> Pipeline:
    return fit_pipeline(texts)


@pytest.fixture(scope="module")
def model(pipeline: Pipeline, texts: list[ProductText]) -> EmbeddingModel:
    return EmbeddingModel.from_pipeline(pipeline, version=7, documents=len(texts))


@pytest.fixture(scope="module")
def tiny() -> EmbeddingModel:
    return fit_model([ProductText("Red wool scarf", "Warm and soft", "Fashion > Scarves")], 1)


def cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(a @ b)  # the vectors are unit length


def test_unit_float32_rows_of_384(model: EmbeddingModel, texts: list[ProductText]) -> None:
    vectors = model.embed(texts)
    assert vectors.shape == (len(texts), DIMS)
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert model.embed([]).shape == (0, DIMS)
    query = model.embed_query("coffee mug")
    assert query.shape == (DIMS,)
    assert query.dtype == np.float32


def test_info_describes_the_fit(model: EmbeddingModel, texts: list[ProductText]) -> None:
    info = model.info
    assert (info.version, info.documents, info.dims) == (7, len(texts), DIMS)
    assert info.vocabulary_size > DIMS
    assert info.components == len(texts)  # fewer documents than dims: one component each
    assert 0 < info.explained_variance_ratio <= 1
    assert datetime.fromisoformat(info.fitted_at).utcoffset() is not None
    assert msgspec.json.decode(msgspec.json.encode(info), type=type(info)) == info


@pytest.mark.parametrize(
    "texts",
    [
        [ProductText("Red wool scarf")],
        [
            ProductText("Red wool scarf", "Warm", "Fashion > Scarves", "Acme", ("winter",)),
            ProductText("Blue cotton shirt", "Light", "Fashion > Shirts", "Acme", ("summer",)),
            ProductText("Ceramic coffee mug", "", "Home > Mugs", "Globex"),
        ],
    ],
    ids=["one product", "three products"],
)
def test_tiny_catalogs_use_the_exact_identity_projection(texts: list[ProductText]) -> None:
    model = fit_model(texts, version=1)
    vectors = model.embed(texts)
    assert vectors.shape == (len(texts), DIMS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert model.info.components == model.info.vocabulary_size <= DIMS
    assert model.info.explained_variance_ratio == 1.0
    assert cosine(model.embed_query("scarf"), vectors[0]) > 0


def test_few_long_documents_get_one_component_each() -> None:
    texts = [
        ProductText(name, " ".join(f"w{p}x{i}" for i in range(300)))
        for p, name in enumerate(("Mug", "Box", "Pen"))  # no term or character n-gram in common
    ]
    model = fit_model(texts, version=1)
    vectors = model.embed(texts)
    assert model.info.vocabulary_size > DIMS
    assert model.info.components == 3
    assert vectors.shape == (3, DIMS)
    assert not vectors[:, 3:].any()  # zero padding beyond the real components
    assert np.allclose(vectors @ vectors.T, np.eye(3), atol=1e-5)  # disjoint texts stay apart


def test_single_long_document_fits_one_component() -> None:
    text = ProductText("Encyclopedia", " ".join(f"term{i}" for i in range(500)))
    model = fit_model([text], version=1)
    assert (model.info.components, model.info.explained_variance_ratio) == (1, 1.0)
    assert np.isclose(np.linalg.norm(model.embed([text])), 1.0)


def test_similar_texts_are_closer_than_unrelated_ones(model: EmbeddingModel) -> None:
    mug, other_mug, shoe = model.embed(
        [
            ProductText("Stoneware coffee mug", "A glazed ceramic mug"),
            ProductText("Ceramic tea mug", "A mug with a handle"),
            ProductText("Cushioned running shoe", "Mesh marathon shoe"),
        ]
    )
    assert cosine(mug, other_mug) > cosine(mug, shoe) + 0.2


def test_queries_find_names_brands_and_categories(
    model: EmbeddingModel, texts: list[ProductText]
) -> None:
    vectors = model.embed(texts)

    def top(query: str, k: int) -> list[ProductText]:
        return [texts[i] for i in np.argsort(-(vectors @ model.embed_query(query)))[:k]]

    assert all("mug" in text.name for text in top("coffee mug", 10))
    assert all(text.brand == "Globex" for text in top("globex", 10))
    assert all(text.category == "Garden > Tools" for text in top("garden tools", 10))


def test_knows_the_words_of_the_catalog_only(model: EmbeddingModel) -> None:
    assert model.knows_word("mug")
    assert model.knows_word("globex")  # a brand
    assert not model.knows_word("mgu")  # a typo: search asks RediSearch for a correction
    assert not model.knows_word("ug")  # only character n-grams have it


@pytest.mark.parametrize("svd", [True, False], ids=["svd", "identity"])
def test_fast_path_equals_the_sklearn_pipeline(svd: bool, texts: list[ProductText]) -> None:
    catalog = texts if svd else texts[:2]
    pipeline = fit_pipeline(catalog)
    model = EmbeddingModel.from_pipeline(pipeline, version=1, documents=len(catalog))
    assert (pipeline.named_steps["svd"] != "passthrough") is svd
    for batch in (catalog, UNSEEN, [catalog[0]]):
        reference = pipeline.transform(batch)
        if not svd:
            reference = reference.toarray()  # without SVD, scikit-learn keeps the rows sparse
        vectors = model.embed(batch)
        assert np.allclose(vectors[:, : reference.shape[1]], reference, atol=1e-5)
        assert not vectors[:, reference.shape[1] :].any()


def test_from_pipeline_rejects_vectorizers_it_cannot_reproduce(texts: list[ProductText]) -> None:
    pipeline = fit_pipeline(texts[:10])
    pipeline.named_steps["tfidf"].transformers_[0][1].set_params(lowercase=False)
    with pytest.raises(ValueError, match="not built by fit_pipeline"):
        EmbeddingModel.from_pipeline(pipeline, version=1, documents=10)


def test_fit_rejects_bad_arguments(texts: list[ProductText]) -> None:
    with pytest.raises(ValueError, match="dims"):
        fit_model(texts, version=1, dims=0)
    twice = ModelConfig((FieldSpec("name", 1.0), FieldSpec("name", 2.0)))
    with pytest.raises(ValueError, match="once"):
        fit_model(texts, version=1, config=twice)


def test_other_dims_and_configs(texts: list[ProductText]) -> None:
    config = ModelConfig((FieldSpec("name", 1.0, ngram_range=(1, 1)),))
    model = fit_model(texts, version=1, dims=16, config=config)
    assert model.embed(texts).shape == (len(texts), 16)
    assert model.info.components == 16
    assert EmbeddingModel.from_bytes(model.to_bytes()).dims == 16


def test_empty_text_embeds_as_zeros(model: EmbeddingModel, tiny: EmbeddingModel) -> None:
    for fitted in (model, tiny):
        vectors = fitted.embed([ProductText(""), ProductText("   ", tags=("",))])
        assert vectors.shape == (2, DIMS)
        assert not vectors.any()
        assert not fitted.embed_query("").any()
        assert not fitted.embed_query("zyxwv").any()  # only unknown words


@pytest.mark.parametrize("texts", [[], [ProductText(""), ProductText("  ", "!")]])
def test_a_catalog_without_text_gives_a_zero_model(texts: list[ProductText]) -> None:
    model = fit_model(texts, version=3)
    assert (model.info.documents, model.info.vocabulary_size, model.info.components) == (
        len(texts),
        0,
        0,
    )
    assert not model.embed([ProductText("Red wool scarf")]).any()
    restored = EmbeddingModel.from_bytes(model.to_bytes())
    assert restored.info == model.info
    assert restored.embed([ProductText("x")]).shape == (1, DIMS)


@pytest.mark.parametrize("name", ["model", "tiny"])
def test_round_trip_through_bytes_is_exact(
    name: str, request: pytest.FixtureRequest, texts: list[ProductText]
) -> None:
    model: EmbeddingModel = request.getfixturevalue(name)
    restored = EmbeddingModel.from_bytes(model.to_bytes())
    assert restored.info == model.info
    batch = [*texts, *UNSEEN]
    assert np.array_equal(restored.embed(batch), model.embed(batch))
    assert np.array_equal(restored.embed_query("red mug"), model.embed_query("red mug"))
    assert restored.to_bytes() == model.to_bytes()


def _edit(blob: bytes, change: Any) -> bytes:
    """Decode the payload as plain msgpack, let `change` edit it, encode it again."""
    header, state = blob[:7], msgspec.msgpack.decode(blob[7:])
    change(state)
    return header + msgspec.msgpack.encode(state)


def _set(path: str, value: Any) -> Any:
    *parents, last = path.split(".")

    def change(state: Any) -> None:
        for key in parents:
            state = state[int(key) if key.isdigit() else key]
        state[int(last) if last.isdigit() else last] = value

    return change


_WORDS = ModelConfig((FieldSpec("name", 1.0),))
MALFORMED = {
    "empty": lambda blob: b"",
    "not a model": lambda blob: b'{"vocabulary": []}',
    "header only": lambda blob: blob[:6],
    "newer format": lambda blob: blob[:6] + b"\x02" + blob[7:],
    "truncated": lambda blob: blob[: len(blob) // 2],
    "not msgpack": lambda blob: blob[:7] + b"\xc1\xc1",
    "wrong type": lambda blob: blob[:7] + msgspec.msgpack.encode([1, 2, 3]),
    "unknown key": lambda blob: _edit(blob, _set("extra", 1)),
    "unknown analyzer": lambda blob: _edit(blob, _set("fields.0.spec.analyzer", "python")),
    "object dtype": lambda blob: _edit(blob, _set("projection.dtype", "|O")),
    "wrong shape": lambda blob: _edit(blob, _set("projection.shape", [3, 383])),
    "short data": lambda blob: _edit(blob, _set("fields.0.idf.data", b"\x00" * 8)),
    "huge shape": lambda blob: _edit(blob, _set("projection.shape", [10**12, 384])),
    "nan idf": lambda blob: _edit(blob, _set("fields.0.idf.data", np.full(3, np.nan).tobytes())),
    "repeated term": lambda blob: _edit(blob, _set("fields.0.vocabulary.1", "red")),
    "wrong size": lambda blob: _edit(blob, _set("info.vocabulary_size", 99)),
    "negative count": lambda blob: _edit(blob, _set("info.documents", -1)),
}


@pytest.mark.parametrize("corrupt", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bytes_raise_model_format_error(corrupt: Any) -> None:
    # One field, vocabulary ["red", "red wool", "wool"]: the edits above know this layout.
    blob = fit_model([ProductText("Red wool")], version=1, config=_WORDS).to_bytes()
    with pytest.raises(ModelFormatError):
        EmbeddingModel.from_bytes(corrupt(blob))


_EXECUTED: list[str] = []


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_EXECUTED.append, ("unpickled",))


def test_serialisation_is_pickle_free(
    tiny: EmbeddingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = tiny.to_bytes()
    assert blob.startswith(b"RECEMB")
    assert not blob.startswith(b"\x80")  # the pickle protocol opcode

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    assert EmbeddingModel.from_bytes(blob).info == tiny.info
    monkeypatch.undo()
    payload = pickle.dumps(_Payload())
    for data in (payload, blob[:7] + payload):
        with pytest.raises(ModelFormatError):
            EmbeddingModel.from_bytes(data)
    assert not _EXECUTED
