"""Product embeddings: per-field TF-IDF, TruncatedSVD to 384 dimensions, L2 normalisation.

The model is fitted on the catalog's own text with scikit-learn (`fit_pipeline` is the reference
pipeline) and then served by a lean path of its own: the fitted vocabularies, idf vectors and SVD
components become one C-contiguous float32 projection matrix (n_features x dims), and a text's
embedding is the weighted sum of its terms' rows, L2-normalised. That equals scikit-learn's
`Pipeline.transform` to float32 precision without copying the component matrix on every call.

Small catalogs work from the first product: with at most `dims` terms the projection is the
identity (exact, no SVD); with fewer documents than `dims` the SVD keeps one component per
document. Vectors are always zero-padded to exactly `dims`. A text with no known term (empty, or
only words the catalog never used) embeds as the zero vector, which has cosine 0 with everything.

Models serialise with `to_bytes()` / `from_bytes()`: a short header, then msgpack of plain values
(field settings, vocabularies, raw little-endian float arrays with dtype and shape). Nothing is
pickled and loading executes nothing; malformed input raises `ModelFormatError`.
"""

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Meta
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer

DIMS: Final = 384

Field = Literal["name", "description", "category", "brand", "tags"]
Analyzer = Literal["word", "char_wb"]
# Column order of the table the pipeline's first step builds from `ProductText`s.
FIELDS: Final[tuple[Field, ...]] = ("name", "description", "category", "brand", "tags")

NgramSize = Annotated[int, Meta(ge=1, le=8)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
Vectors = npt.NDArray[np.float32]

# Vectorizer settings shared by every field; they belong to the format, not to a model's state.
_WORD_REGEX: Final = r"(?u)\b\w\w+\b"
_STRIP_ACCENTS: Final = "unicode"
_TAG_SEPARATOR: Final = ", "
_SVD_ITERATIONS: Final = 5
_MAGIC: Final = b"RECEMB"
_FORMAT_VERSION: Final = 1
_HEADER: Final = _MAGIC + bytes([_FORMAT_VERSION])


class ModelFormatError(ValueError):
    """Bytes given to `EmbeddingModel.from_bytes` are not a valid serialised model."""


class _NoTermsError(ValueError):
    """No field of any text has a term, so there is nothing to fit."""


class ProductText(msgspec.Struct, frozen=True):
    """The text of one product, the model's input. `category` is a path like "Home > Mugs"."""

    name: str
    description: str = ""
    category: str = ""
    brand: str = ""
    tags: tuple[str, ...] = ()


class FieldSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How one text field becomes a block of TF-IDF features.

    Each block is L2-normalised on its own and then multiplied by `weight`, so weights set the
    fields' relative pull on the similarity. `max_features` keeps the most frequent terms (a fit
    setting); it bounds the projection, 1.5 KB per term.
    """

    field: Field
    weight: Annotated[float, Meta(gt=0, le=100)]
    analyzer: Analyzer = "word"
    ngram_range: tuple[NgramSize, NgramSize] = (1, 2)
    sublinear_tf: bool = True
    max_features: Annotated[int, Meta(ge=1)] | None = None

    @property
    def key(self) -> str:
        return f"{self.field}_{self.analyzer}"


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fields: tuple[FieldSpec, ...]


# Tuned with `python -m benchmarks.embedding` on the CrowdFlower search data, where character
# n-grams of the name (plurals, compounds, model numbers) add ~0.01 NDCG@10 and larger vocabularies
# add nothing. That data has no category, brand or tags: their settings are judgement.
DEFAULT_CONFIG: Final = ModelConfig(
    fields=(
        FieldSpec("name", 1.0, max_features=20_000),
        FieldSpec("name", 1.0, analyzer="char_wb", ngram_range=(2, 4), max_features=20_000),
        FieldSpec("description", 0.5, max_features=10_000),
        FieldSpec("category", 0.5, max_features=2_000),
        FieldSpec("brand", 0.5, max_features=5_000),
        FieldSpec("tags", 0.5, max_features=5_000),
    )
)


class ModelInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    # ISO 8601, UTC.
    fitted_at: str
    documents: NonNegativeInt
    vocabulary_size: NonNegativeInt
    # Real components before zero-padding to `dims`: the vocabulary size when no SVD was needed.
    components: NonNegativeInt
    # Share of the TF-IDF variance the components keep (1.0 for the exact identity projection).
    explained_variance_ratio: float
    dims: Annotated[int, Meta(ge=1)] = DIMS


class _Array(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dtype: str
    shape: tuple[NonNegativeInt, ...]
    data: bytes


class _FieldState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    spec: FieldSpec
    # Terms in feature order.
    vocabulary: list[str]
    idf: _Array


class _State(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    info: ModelInfo
    fields: list[_FieldState]
    projection: _Array


@dataclass(frozen=True, slots=True)
class _Block:
    """One field's fitted vectorizer, reduced to what embedding needs."""

    spec: FieldSpec
    terms: list[str]
    idf: npt.NDArray[np.float64]
    # Row of this block's first term in the projection.
    offset: int
    vocabulary: dict[str, int]
    analyze: Callable[[str], list[str]]

    @classmethod
    def create(
        cls, spec: FieldSpec, terms: list[str], idf: npt.NDArray[np.float64], offset: int
    ) -> Self:
        vocabulary = {term: index for index, term in enumerate(terms)}
        analyze = _vectorizer(spec).build_analyzer()
        return cls(spec, terms, idf, offset, vocabulary, analyze)

    def weigh(
        self, docs: Sequence[str]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """(row, feature, value) of every known term, as TfidfVectorizer times the weight."""
        features: list[int] = []
        counts: list[int] = []
        lengths: list[int] = []
        for doc in docs:
            counter: dict[int, int] = {}
            for term in self.analyze(doc):
                feature = self.vocabulary.get(term)
                if feature is not None:
                    counter[feature] = counter.get(feature, 0) + 1
            features.extend(counter)
            counts.extend(counter.values())
            lengths.append(len(counter))
        rows = np.repeat(np.arange(len(docs), dtype=np.intp), lengths)
        index = np.asarray(features, dtype=np.intp)
        values = np.asarray(counts, dtype=np.float64)
        if self.spec.sublinear_tf:
            values = np.log(values) + 1.0
        values *= self.idf[index]
        norms = np.sqrt(np.bincount(rows, weights=values * values, minlength=len(docs)))
        values *= self.spec.weight / norms[rows]
        return rows, index + self.offset, values


class EmbeddingModel:
    """A fitted, immutable embedding model; `embed` and `embed_query` are thread-safe."""

    def __init__(self, info: ModelInfo, blocks: list[_Block], projection: Vectors) -> None:
        projection.flags.writeable = False
        self._info = info
        self._blocks = blocks
        self._projection = projection

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def dims(self) -> int:
        return self._info.dims

    def embed(self, texts: Sequence[ProductText]) -> Vectors:
        """Unit vectors (len(texts), dims), float32; a text with no known term gets a zero row."""
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        if not texts or not self._blocks:
            return out
        parts = [
            block.weigh([_field_text(text, block.spec.field) for text in texts])
            for block in self._blocks
        ]
        rows = np.concatenate([part[0] for part in parts])
        order = np.argsort(rows, kind="stable")
        features = np.concatenate([part[1] for part in parts])[order]
        values = np.concatenate([part[2] for part in parts])[order].astype(np.float32)
        bounds = np.searchsorted(rows[order], np.arange(len(texts) + 1))
        for row, (start, end) in enumerate(itertools.pairwise(bounds)):
            if start < end:
                # Sum of the weighted projection rows of the text's terms: sparse @ dense.
                out[row] = values[start:end] @ self._projection[features[start:end]]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def knows_word(self, word: str) -> bool:
        """Whether the word is a term of the catalog text the model was fitted on."""
        return any(
            word in block.vocabulary for block in self._blocks if block.spec.analyzer == "word"
        )

    def embed_query(self, query: str) -> Vectors:
        """A search query's unit vector, shape (dims,), float32: the query text in every field.

        Every field sees the query, as its name would be seen, so "acme mugs" finds products
        whose brand is Acme or whose category is Mugs; the field weights still rank name
        matches highest. A query with no known term gives the zero vector.
        """
        text = ProductText(query, query, query, query, (query,))
        return self.embed([text]).reshape(self.dims)

    @classmethod
    def from_pipeline(
        cls, pipeline: Pipeline, *, version: int, documents: int, dims: int = DIMS
    ) -> Self:
        """Take over a pipeline from `fit_pipeline` (ValueError for any other pipeline)."""
        tfidf = pipeline.named_steps["tfidf"]
        svd = pipeline.named_steps["svd"]
        blocks: list[_Block] = []
        offset = 0
        for key, vectorizer, column in tfidf.transformers_:
            if vectorizer == "drop":
                continue
            spec = _spec_of(vectorizer, FIELDS[column], tfidf.transformer_weights[key])
            terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
            blocks.append(_Block.create(spec, terms, vectorizer.idf_, offset))
            offset += len(terms)
        identity = svd == "passthrough"
        components = offset if identity else svd.components_.shape[0]
        if components > dims:
            raise ValueError(f"the pipeline has {components} components, more than {dims} dims")
        projection = np.zeros((offset, dims), dtype=np.float32)
        if identity:
            projection[:, :offset] = np.eye(offset, dtype=np.float32)
            explained = 1.0
        else:
            projection[:, :components] = svd.components_.T
            # NaN when a single document has no variance; its one component keeps it all.
            explained = float(np.nan_to_num(svd.explained_variance_ratio_.sum(), nan=1.0))
        info = ModelInfo(version, _now(), documents, offset, components, explained, dims)
        return cls(info, blocks, projection)

    def to_bytes(self) -> bytes:
        state = _State(
            info=self._info,
            fields=[
                _FieldState(block.spec, block.terms, _encode_array(block.idf))
                for block in self._blocks
            ],
            projection=_encode_array(self._projection),
        )
        return _HEADER + msgspec.msgpack.encode(state)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Load a model from `to_bytes` output; ModelFormatError if it is not a valid one."""
        view = memoryview(data)
        header = bytes(view[: len(_HEADER)])
        if len(header) < len(_HEADER) or not header.startswith(_MAGIC):
            raise ModelFormatError("not a serialised embedding model (unknown header)")
        if header != _HEADER:
            raise ModelFormatError(
                f"embedding model format {header[-1]} is not supported (expected {_FORMAT_VERSION})"
            )
        try:
            state = msgspec.msgpack.decode(view[len(_HEADER) :], type=_State)
        except msgspec.DecodeError as error:  # ValidationError included
            raise ModelFormatError(f"malformed embedding model: {error}") from error
        return cls._from_state(state)

    @classmethod
    def _from_state(cls, state: _State) -> Self:
        info = state.info
        keys = [field.spec.key for field in state.fields]
        if len(set(keys)) != len(keys):
            raise ModelFormatError(f"malformed embedding model: repeated fields {keys}")
        blocks: list[_Block] = []
        offset = 0
        for field in state.fields:
            terms = field.vocabulary
            if len(set(terms)) != len(terms):
                raise ModelFormatError(f"malformed embedding model: {field.spec.key} repeats terms")
            idf = _decode_array(field.idf, "<f8", (len(terms),), f"{field.spec.key} idf")
            if not np.all(idf > 0):
                raise ModelFormatError(f"malformed embedding model: {field.spec.key} idf <= 0")
            blocks.append(_Block.create(field.spec, terms, idf.astype(np.float64), offset))
            offset += len(terms)
        if info.vocabulary_size != offset or info.components > min(info.dims, offset):
            raise ModelFormatError(
                f"malformed embedding model: info {info} does not match {offset} terms"
            )
        projection = _decode_array(state.projection, "<f4", (offset, info.dims), "projection")
        return cls(info, blocks, np.ascontiguousarray(projection, dtype=np.float32))


def fit_pipeline(
    texts: Sequence[ProductText],
    dims: int = DIMS,
    random_state: int = 0,
    *,
    config: ModelConfig = DEFAULT_CONFIG,
) -> Pipeline:
    """Fit scikit-learn's reference pipeline: ProductTexts in, (n, k <= dims) unit rows out.

    Rows stay sparse when no SVD was needed. Fields with no term in any text are left out;
    ValueError if no field has any term.
    """
    if dims < 1:
        raise ValueError(f"dims must be at least 1, not {dims}")
    keys = [spec.key for spec in config.fields]
    if len(set(keys)) != len(keys):
        raise ValueError(f"each field and analyzer may appear once: {keys}")
    table = _table(texts)
    specs = [spec for spec in config.fields if _has_terms(spec, table[:, FIELDS.index(spec.field)])]
    if not specs:
        raise _NoTermsError("no field of any text has a term to learn from")
    tfidf = ColumnTransformer(
        [(spec.key, _vectorizer(spec), FIELDS.index(spec.field)) for spec in specs],
        transformer_weights={spec.key: spec.weight for spec in specs},
        sparse_threshold=1.0,
    )
    features = tfidf.fit_transform(table)
    svd: Any = "passthrough"
    if features.shape[1] > dims:
        # n documents span at most n dimensions: more components would only add noise.
        svd = TruncatedSVD(min(dims, len(texts)), n_iter=_SVD_ITERATIONS, random_state=random_state)
        with np.errstate(divide="ignore", invalid="ignore"):  # a single document has no variance
            features = svd.fit_transform(features)
    columns = FunctionTransformer(_table).fit(texts)
    normalizer = Normalizer().fit(features)
    return Pipeline([("columns", columns), ("tfidf", tfidf), ("svd", svd), ("l2", normalizer)])


def fit_model(
    texts: Sequence[ProductText],
    version: int,
    dims: int = DIMS,
    random_state: int = 0,
    *,
    config: ModelConfig = DEFAULT_CONFIG,
) -> EmbeddingModel:
    """Fit the embedding model on the catalog's texts (synchronous: seconds of CPU for a big one).

    A catalog without any text (or without products) gives a model that embeds everything as 0.
    """
    try:
        pipeline = fit_pipeline(texts, dims, random_state, config=config)
    except _NoTermsError:
        info = ModelInfo(version, _now(), len(texts), 0, 0, 1.0, dims)
        return EmbeddingModel(info, [], np.zeros((0, dims), dtype=np.float32))
    return EmbeddingModel.from_pipeline(pipeline, version=version, documents=len(texts), dims=dims)


def fit_model_bytes(texts: Sequence[ProductText], version: int) -> bytes:
    """`fit_model(texts, version).to_bytes()`: a fit whose answer can leave a worker process."""
    return fit_model(texts, version).to_bytes()


def _field_text(text: ProductText, field: Field) -> str:
    if field == "tags":
        return _TAG_SEPARATOR.join(text.tags)
    value: str = getattr(text, field)
    return value


def _table(texts: Sequence[ProductText]) -> npt.NDArray[np.object_]:
    """The (n, len(FIELDS)) string table the ColumnTransformer selects fields from."""
    table = np.empty((len(texts), len(FIELDS)), dtype=object)
    for row, text in enumerate(texts):
        table[row] = [_field_text(text, field) for field in FIELDS]
    return table


def _vectorizer(spec: FieldSpec) -> TfidfVectorizer:
    return TfidfVectorizer(
        analyzer=spec.analyzer,
        ngram_range=spec.ngram_range,
        sublinear_tf=spec.sublinear_tf,
        max_features=spec.max_features,
        token_pattern=_WORD_REGEX,
        strip_accents=_STRIP_ACCENTS,
        lowercase=True,
        dtype=np.float64,
    )


def _spec_of(vectorizer: TfidfVectorizer, field: Field, weight: float) -> FieldSpec:
    """The FieldSpec a vectorizer was built from; ValueError if it has other settings."""
    spec = FieldSpec(
        field,
        weight,
        analyzer=vectorizer.analyzer,
        ngram_range=tuple(vectorizer.ngram_range),
        sublinear_tf=vectorizer.sublinear_tf,
        max_features=vectorizer.max_features,
    )
    if vectorizer.get_params() != _vectorizer(spec).get_params():
        raise ValueError(f"the {field} vectorizer was not built by fit_pipeline")
    return spec


def _has_terms(spec: FieldSpec, docs: npt.NDArray[np.object_]) -> bool:
    analyze = _vectorizer(spec).build_analyzer()
    return any(analyze(doc) for doc in docs)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _encode_array(array: npt.NDArray[Any]) -> _Array:
    little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return _Array(little_endian.dtype.str, array.shape, little_endian.tobytes())


def _decode_array(array: _Array, dtype: str, shape: tuple[int, ...], what: str) -> npt.NDArray[Any]:
    """A read-only view of the array's bytes, after checking dtype, shape, length and values."""
    if array.dtype != dtype or array.shape != shape:
        raise ModelFormatError(
            f"malformed embedding model: {what} is {array.dtype} {array.shape}, "
            f"expected {dtype} {shape}"
        )
    if len(array.data) != math.prod(shape) * np.dtype(dtype).itemsize:
        raise ModelFormatError(f"malformed embedding model: {what} has {len(array.data)} bytes")
    values = np.frombuffer(array.data, dtype=dtype).reshape(shape)
    if not np.isfinite(values).all():
        raise ModelFormatError(f"malformed embedding model: {what} is not finite")
    return values
