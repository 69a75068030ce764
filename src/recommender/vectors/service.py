"""Embedding products into the live index, refitting the model, and vector queries.

Every write reaches the index of the live model and, during a refit, the index being built, so
the swap loses nothing. CPU work runs away from the event loop so it keeps serving: fitting a
catalog of more than a few dozen products in a child process (the fit holds the GIL for seconds
at a time, which stalls the loop even from a thread, and stopping the service kills the child
instead of waiting for the fit); smaller fits, embedding big batches and loading a model in a
worker thread.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import numpy as np
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

from recommender.catalog import CatalogService, Product
from recommender.config import VectorSettings
from recommender.platform.cache import RecentCache
from recommender.platform.changelog import ChangeFollower
from recommender.platform.errors import AppError, StoreUnavailableError
from recommender.platform.processes import run_in_process
from recommender.vectors.index import (
    Filters,
    Neighbour,
    NotLiveError,
    SearchSides,
    VectorIndex,
    vector_change,
)
from recommender.vectors.model import (
    DIMS,
    EmbeddingModel,
    ModelInfo,
    ProductText,
    fit_model_bytes,
)
from recommender.vectors.neighbours import NeighbourCache, NeighbourList
from recommender.vectors.repository import ModelState, ModelStore
from recommender.vectors.table import LiveVectors, VectorTable

log = structlog.get_logger()
_T = TypeVar("_T")

CONTENT_BLENDS = Counter(
    "recommender_content_blends",
    'Products\' nearest to a blend of others ("for you"), by what ranked them: "copy" (this '
    'process\'s copy of every live vector) or "index" (a KNN query).',
    ["ranked_by"],
)
_BLENDS_BY_COPY = CONTENT_BLENDS.labels(ranked_by="copy")
_BLENDS_BY_INDEX = CONTENT_BLENDS.labels(ranked_by="index")

# How long `stop` waits for a cancelled refit before cancelling it again.
_STOP_RETRY_SECONDS = 0.5
# Batches at least this big are embedded in a worker thread; smaller ones are quicker inline.
_THREAD_BATCH = 32
# Catalogs up to this size fit in a worker thread in well under a second; a child process would
# spend seconds on its imports alone.
_THREAD_FIT_TEXTS = 50
# Products' vectors read per round trip when a process loads every live vector (1.5 MB).
_LOAD_PAGE = 1000
# Search queries whose vectors one process keeps (1.5 KB each); a model version never changes,
# so a kept vector never goes stale.
_QUERY_VECTORS = 10_000


class RefitBusyError(AppError):
    status_code = 409
    code = "refit_in_progress"


class ModelNotReadyError(StoreUnavailableError):
    code = "model_not_ready"


class LiveModel(msgspec.Struct, kw_only=True):
    info: ModelInfo | None
    building: int | None
    changes_since_fit: int
    refit_due_at_changes: int


def product_text(product: Product) -> ProductText:
    return ProductText(
        name=product.name,
        description=product.description,
        category=product.category,
        brand=product.brand,
        tags=tuple(product.tags),
    )


@dataclass(frozen=True, slots=True)
class BlendNeighbours:
    """Products near a weighted blend of other products (`VectorService.near_blend`)."""

    # (product id, sum over the blended products but itself of weight x cosine), best first.
    hits: list[tuple[str, float]]
    version: int
    blended: list[str]
    # One row per blended product: its weight x its unit vector.
    rows: np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class _BlendedVectors:
    """Products' vectors weighted and summed, for `VectorService.near_blend`."""

    blended: list[str]  # the products with a vector
    rows: np.ndarray[Any, Any]  # each one's weight x unit vector
    own: dict[str, float]  # each one's weight
    direction: np.ndarray[Any, Any]  # the sum as a unit vector (meaningless if length is 0)
    length: float

    @classmethod
    def of(
        cls, weights: Sequence[tuple[str, float]], matrix: np.ndarray[Any, Any]
    ) -> "_BlendedVectors":
        """Of the products' `weights` and their vectors, `matrix` (zeros: not indexed yet, or
        no known term: nothing to blend)."""
        found = np.any(matrix, axis=1)
        kept = [pair for pair, has in zip(weights, found.tolist(), strict=True) if has]
        rows = matrix[found] * np.array([weight for _, weight in kept], dtype=np.float32)[:, None]
        total = rows.sum(axis=0)
        length = float(np.linalg.norm(total)) if kept else 0.0
        direction = total / length if length else total
        return cls([product_id for product_id, _ in kept], rows, dict(kept), direction, length)

    def neighbours(self, version: int, nearest: Sequence[tuple[str, float]]) -> BlendNeighbours:
        """The blend's neighbours from the products `nearest` its direction, by cosine."""
        hits = [(product_id, cosine * self.length - self.own.get(product_id, 0.0))
                for product_id, cosine in nearest]  # fmt: skip
        hits.sort(key=lambda hit: -hit[1])
        return BlendNeighbours(hits, version, self.blended, self.rows)


class VectorService:
    def __init__(
        self,
        catalog: CatalogService,
        store: ModelStore,
        index: VectorIndex,
        settings: VectorSettings,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.index = index
        self.settings = settings
        self._models: dict[int, EmbeddingModel] = {}
        self._model_loading = asyncio.Lock()
        self._refit_task: asyncio.Task[Any] | None = None
        self._stopped = False
        self._neighbour_cache = NeighbourCache(settings.neighbour_cache_size)
        self._live_vectors = LiveVectors(self._load_live_vectors)
        self._vector_changes = ChangeFollower(
            index.client, index.epoch_key, index.changes_key,
            period=settings.neighbour_epoch_check_seconds,
            apply=self._apply_vector_changes, clear=self._clear_vector_copies,
        )  # fmt: skip
        self._live_version: int | None = None  # the one last seen live, tried first
        self._query_vectors: RecentCache[tuple[int, str], np.ndarray[Any, Any]] = RecentCache(
            _QUERY_VECTORS
        )

    # -- models -----------------------------------------------------------------------------------

    async def model(self, version: int) -> EmbeddingModel:
        """A model version, loaded once per process."""
        model = self._models.get(version)
        if model is not None:
            return model
        # One load at a time: requests arriving together after a start or a swap would each
        # decode the model, holding the event loop's GIL long enough to time out the others.
        async with self._model_loading:
            model = self._models.get(version)
            if model is None:
                data = await self.store.load(version)
                if data is None:
                    raise ModelNotReadyError(f"embedding model version {version} is not stored")
                model = await asyncio.to_thread(EmbeddingModel.from_bytes, data)
                self._models = {v: m for v, m in self._models.items() if v > version - 2}
                self._models[version] = model
        return model

    async def live_model(self) -> tuple[int, EmbeddingModel]:
        state = await self.store.state()
        if state.live is None:
            raise ModelNotReadyError("no embedding model yet: add products first")
        return state.live, await self.model(state.live)

    async def _at_live(self, read: Callable[[int], Awaitable[_T]]) -> tuple[int, _T] | None:
        """`read` of the live version's documents, and that version (None: no model yet).

        The version last seen live is read first and the read's script checks it in the same
        step, so no round trip of its own learns it; after a swap the read runs again at the
        version the check found.
        """
        version = self._live_version
        if version is None:
            version = (await self.store.state()).live
        while version is not None:
            try:
                found = await read(version)
            except NotLiveError as error:
                version = error.live
                continue
            self._live_version = version
            return version, found
        return None

    def query_vector(self, version: int, model: EmbeddingModel, query: str) -> np.ndarray[Any, Any]:
        """The query's vector under that model version, each query embedded once per process."""
        vector = self._query_vectors.get((version, query))
        if vector is None:
            vector = model.embed_query(query)
            self._query_vectors.put((version, query), vector)
        return vector

    async def describe(self) -> LiveModel:
        state = await self.store.state()
        info = (await self.model(state.live)).info if state.live is not None else None
        return LiveModel(
            info=info,
            building=state.building,
            changes_since_fit=state.changes,
            refit_due_at_changes=self._refit_threshold(state),
        )

    async def embed(
        self, model: EmbeddingModel, products: Sequence[Product]
    ) -> np.ndarray[Any, Any]:
        texts = [product_text(product) for product in products]
        if len(texts) >= _THREAD_BATCH:
            return await asyncio.to_thread(model.embed, texts)
        return model.embed(texts)

    # -- the indexer (called by the consumer) -----------------------------------------------------

    async def index_products(self, ids: Sequence[str]) -> None:
        """Bring the vector documents of these products in line with the catalog."""
        ids = list(dict.fromkeys(ids))
        state = await self.store.state()
        if not state.versions:
            # The first products: a refit fits on the whole catalog, these included, and
            # back-fills them; it runs beside the consumer, which must not hold entries for it.
            self.start_refit(reason="first products")
            return
        products = await self.catalog.get_many(ids)
        present = [p for p in products if p is not None]
        gone = [i for i, p in zip(ids, products, strict=True) if p is None]
        for version in state.versions:
            await self._write(version, present, live=version == state.live)
            await self.index.delete(version, gone, live=version == state.live)
        await self.store.count_changes(len(ids))
        if self._refit_due(state, len(ids)):
            self.start_refit(reason="catalog changed")

    async def _write(self, version: int, products: Sequence[Product], live: bool) -> None:
        if not products:
            return
        vectors = await self.embed(await self.model(version), products)
        await self.index.write(version, self.catalog.product_key, products, vectors, live)

    def _refit_threshold(self, state: ModelState) -> int:
        return max(1, int(state.documents * self.settings.refit_change_fraction))

    def _refit_due(self, state: ModelState, new_changes: int) -> bool:
        waited = time.time() - state.fitted_at >= self.settings.refit_min_interval_seconds
        changed = state.changes + new_changes >= self._refit_threshold(state)
        return state.building is None and waited and changed

    # -- refit ------------------------------------------------------------------------------------

    async def refit_when_due(self, check_seconds: float) -> None:
        """Runs for the app's life: a catalog that changed and then went quiet still gets refit."""
        this = asyncio.current_task()
        # Until cancelled, even by a cancel a Redis call absorbed (seen: a test's watcher then
        # looped on and its await of it hung): the task still counts the request.
        while this is None or not this.cancelling():
            await asyncio.sleep(check_seconds)
            try:
                state = await self.store.state()
                if state.building is not None and not await self.store.locked():
                    # The process building it died and its lease lapsed: start over.
                    self.start_refit(reason="the last refit died")
                elif state.live is None and state.building is None:
                    if await self.catalog.count():  # the first refit failed or never ran
                        self.start_refit(reason="no model yet")
                elif self._refit_due(state, 0):
                    self.start_refit(reason="catalog changed")
            except RedisError as error:
                log.warning("refit_check_failed", error=str(error))
        raise asyncio.CancelledError

    def start_refit(self, reason: str) -> None:
        """Refit in the background of this process, unless one is already running here."""
        if self._stopped:
            return
        if self._refit_task is None or self._refit_task.done():
            self._refit_task = asyncio.create_task(self._refit_logged(reason), name="refit")

    async def _refit_logged(self, reason: str) -> None:
        try:
            await self.refit(reason)
        except RefitBusyError:
            log.info("refit_skipped", reason="another process is refitting")
        except Exception:
            log.exception("refit_failed", reason=reason)

    async def settle(self) -> None:
        """Wait for this process's background refit, if one is running."""
        if self._refit_task is not None:
            with contextlib.suppress(Exception):
                await self._refit_task

    async def stop(self) -> None:
        """Cancel this process's refit and start none after; the next one redoes it."""
        self._stopped = True
        task = self._refit_task
        # Cancelled again until it ends: a cancel landing inside a Redis call can be absorbed
        # there (seen under the SIGTERM drill: the refit then ran its whole 65 s to the end).
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_STOP_RETRY_SECONDS)
        await self._live_vectors.stop()

    async def refit(self, reason: str) -> ModelInfo:
        """Fit the next model on the whole catalog, build its index beside the live one, swap.

        Writes arriving meanwhile go to both indexes (the consumer reads `building`), and a last
        pass re-embeds anything whose version moved during the back-fill, so nothing is lost.
        """
        version = await self.store.acquire(self.settings.refit_lock_seconds)
        if version is None:
            raise RefitBusyError("a refit is already running")
        lease = asyncio.create_task(self._renew_lock(version), name="refit-lock")
        started = time.perf_counter()
        state = await self.store.state()
        previous = state.live
        try:
            if state.building is not None:  # we hold the lock: whoever built it has died
                log.warning("refit_dropping_dead_build", version=state.building)
                await self.index.drop(state.building)
                await self.store.delete(state.building)
            products = [p async for p in self._all_products()]
            log.info("refit_started", version=version, reason=reason, documents=len(products))
            data = await self._fit([product_text(product) for product in products], version)
            model = await asyncio.to_thread(EmbeddingModel.from_bytes, data)
            await self.store.save(version, data)
            self._models[version] = model
            await self.index.create(version)
            await self.store.mark_building(version)
            await self._backfill(version, model, products)
            await self._catch_up(version)
            if not await self.store.publish(version, len(products), time.time()):
                raise RefitBusyError("the refit lock expired before the swap; nothing changed")
            await self.index.point_alias(version)
        except BaseException as error:
            await self.index.drop(version)
            await self.store.abandon(version)
            if isinstance(error, asyncio.CancelledError):  # stopped: the next refit starts over
                log.info("refit_abandoned", version=version, reason=reason)
            raise
        finally:
            lease.cancel()
            await self.store.release(version)
        if previous is not None:
            await self.index.drop(previous)
            await self.store.delete(previous)
        log.info(
            "refit_finished",
            version=version,
            documents=len(products),
            components=model.info.components,
            seconds=round(time.perf_counter() - started, 2),
        )
        return model.info

    async def _fit(self, texts: Sequence[ProductText], version: int) -> bytes:
        """The model fitted on `texts`, serialised; cancelling the caller abandons the fit."""
        if len(texts) <= _THREAD_FIT_TEXTS:
            return await asyncio.to_thread(fit_model_bytes, texts, version)
        return await run_in_process(fit_model_bytes, texts, version)

    async def _renew_lock(self, version: int) -> None:
        """Keep the refit lock while the refit runs, so a process that dies lets it lapse soon."""
        seconds = self.settings.refit_lock_seconds
        while True:
            await asyncio.sleep(seconds / 3)
            try:
                if not await self.store.renew(version, seconds):
                    log.warning("refit_lock_lost", version=version)  # the swap will be refused
                    return
            except RedisError as error:
                log.warning("refit_lock_renewal_failed", version=version, error=str(error))

    async def _all_products(self) -> AsyncIterator[Product]:
        cursor: str | None = None
        while True:
            page = await self.catalog.list("", cursor, 1000)
            for product in page.items:
                yield product
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def _backfill(
        self, version: int, model: EmbeddingModel, products: Sequence[Product]
    ) -> None:
        size = self.settings.backfill_batch_size
        for start in range(0, len(products), size):
            batch = products[start : start + size]
            vectors = await self.embed(model, batch)
            await self.index.write(version, self.catalog.product_key, batch, vectors, live=False)
            if (start // size) % 20 == 0:
                log.info("refit_progress", version=version, done=start + len(batch),
                         total=len(products))  # fmt: skip

    async def _catch_up(self, version: int) -> None:
        """Re-embed what changed after the back-fill read it (a consumer may not have known)."""
        products = [p async for p in self._all_products()]
        indexed = await self.index.indexed_versions(version, [p.id for p in products])
        stale = [p for p, seen in zip(products, indexed, strict=True) if seen != p.version]
        if stale:
            log.info("refit_catch_up", version=version, products=len(stale))
            size = self.settings.backfill_batch_size
            for start in range(0, len(stale), size):
                await self._write(version, stale[start : start + size], live=False)
        removed = await self.index.remove_others(version, {p.id for p in products})
        if removed:
            log.info("refit_catch_up_removed", version=version, products=removed)

    # -- queries ----------------------------------------------------------------------------------

    async def stored_vector(self, product_id: str) -> tuple[int, np.ndarray[Any, Any] | None]:
        """The live version and the product's vector in it (None if not embedded yet)."""
        found = await self._at_live(
            lambda version: self.index.vector(version, product_id, state_key=self.store.state_key)
        )
        return (0, None) if found is None else found

    async def neighbours(self, product_id: str, k: int) -> list[tuple[str, float]] | None:
        """The product's k nearest products by content (id, score), unfiltered; None if not
        embedded yet.

        From this process's cache unless a change of the live vectors may have altered them,
        else by KNN.
        """
        await self._vector_changes.follow()
        found = self._neighbour_cache.get(product_id, k)
        if found is None:
            computed_at = self._neighbour_cache.changes_applied
            depth = max(k, self.settings.neighbour_cache_depth)
            vector, found = await self._nearest_to(product_id, depth)
            self._neighbour_cache.put(product_id, vector, found, computed_at)
        if not found.embedded:
            return None
        # Plain pairs: a list is 50 of them on most requests, and a Neighbour costs ten times more.
        return list(zip(found.ids[:k], found.scores[:k], strict=True))

    def _apply_vector_changes(self, entries: Sequence[Mapping[bytes, bytes]]) -> bool:
        changes = [vector_change(entry) for entry in entries]
        found = [change for change in changes if change is not None]
        if len(found) < len(changes):  # a swap: every vector may have changed
            return False
        self._neighbour_cache.apply(found)
        self._live_vectors.apply(found)
        return True

    def _clear_vector_copies(self) -> None:
        self._neighbour_cache.clear()
        self._live_vectors.clear()

    async def every_vector(self) -> VectorTable | None:
        """This process's copy of every live vector, loaded first if it is not (None: the
        catalog is too big to hold, there is no model yet, or the load failed)."""
        await self._vector_changes.follow()
        if not self.settings.live_vectors_max_products:
            return None
        return await self._live_vectors.loaded()

    def _vector_table(self) -> VectorTable | None:
        """Every live vector, once loaded, while the catalog is small enough to rank whole."""
        return self._live_vectors.current() if self.settings.live_vectors_max_products else None

    async def _load_live_vectors(self) -> VectorTable | None:
        """Every vector of the live version (None: no model yet, or too many products)."""
        if await self.catalog.count() > self.settings.live_vectors_max_products:
            return None
        version = (await self.store.state()).live
        if version is None:
            return None
        ids: list[str] = []
        rows = [np.zeros((0, DIMS), dtype=np.float32)]
        after = None
        while page := await self.catalog.list_ids(after, _LOAD_PAGE):
            # Checked live on each read: a swap meanwhile fails the load, and its log entry
            # has the next caller load the new version.
            matrix, _ = await self.index.vectors(version, page, state_key=self.store.state_key)
            embedded = np.any(matrix, axis=1)
            ids += [pid for pid, has in zip(page, embedded.tolist(), strict=True) if has]
            rows.append(matrix[embedded])
            after = page[-1]
        return VectorTable(version, ids, np.concatenate(rows))

    async def _nearest_to(
        self, product_id: str, depth: int
    ) -> tuple[np.ndarray[Any, Any] | None, NeighbourList]:
        """The product's vector and its `depth` nearest (none for a vector of zeros)."""
        version, vector = await self.stored_vector(product_id)
        if vector is None or not np.any(vector):
            return vector, NeighbourList(version, depth, vector is not None, (), ())
        everything_else = Filters(in_stock=None, exclude=(product_id,))
        nearest = await self.index.knn_ids(vector, depth, everything_else, self.index.name(version))
        ids = tuple(n.product_id for n in nearest)
        return vector, NeighbourList(version, depth, True, ids, tuple(n.score for n in nearest))

    async def _vectors(
        self, version: int, ids: Sequence[str], *, state_key: str = ""
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The products' vectors in that version as rows (zeros for one without): from this
        process's copy of every live vector if it is of that version, else those kept beside
        its neighbour lists, and the rest read (with the model state's key: only while
        `version` is live, else NotLiveError). What is kept is as current as the change log."""
        await self._vector_changes.follow()
        table = self._vector_table()
        if table is not None and table.version == version:
            return table.rows(ids)
        matrix, missing = self._neighbour_cache.vectors(version, ids)
        if missing:
            read, _ = await self.index.vectors(
                version, [ids[row] for row in missing], state_key=state_key
            )
            matrix[missing] = read
        return matrix

    async def near_blend(self, weights: Sequence[tuple[str, float]], k: int) -> BlendNeighbours:
        """The k products nearest the weighted sum of the given products' vectors.

        A product's score is the sum of weight x cosine to each given product but itself: what
        every given product's own neighbours would add up to, from one query instead of one
        per product (the vectors are unit length, so the sum is a dot product with the blend).
        """
        if weights:
            await self._vector_changes.follow()
            table = self._vector_table()
            if table is not None:  # exact, in this process; the copy follows swaps itself
                _BLENDS_BY_COPY.inc()
                blend = _BlendedVectors.of(weights, table.rows([pid for pid, _ in weights]))
                nearest = table.nearest(blend.direction, k) if blend.length else []
                return blend.neighbours(table.version, nearest)
            _BLENDS_BY_INDEX.inc()
            found = await self._at_live(lambda version: self._near_blend_at(version, weights, k))
            if found is not None:
                return found[1]
        return BlendNeighbours([], 0, [], np.zeros((0, 0), dtype=np.float32))  # none, or no model

    async def _near_blend_at(
        self, version: int, weights: Sequence[tuple[str, float]], k: int
    ) -> BlendNeighbours:
        """`near_blend` in that version's index, while it is live (else NotLiveError)."""
        ids = [product_id for product_id, _ in weights]
        matrix = await self._vectors(version, ids, state_key=self.store.state_key)
        blend = _BlendedVectors.of(weights, matrix)
        # The query checks the version itself: no read may have (every vector was kept).
        nearest = await self.index.knn_ids(
            blend.direction, k, Filters(), self.index.name(version),
            live=(self.store.state_key, version),
        ) if blend.length else []  # fmt: skip
        return blend.neighbours(version, nearest)

    async def strongest_blended(
        self, near: BlendNeighbours, product_ids: Sequence[str]
    ) -> dict[str, str]:
        """For each product, the blended product whose weight x cosine adds most to its score."""
        if not near.blended or not product_ids:
            return {}
        matrix = await self._vectors(near.version, product_ids)
        shares = matrix @ near.rows.T  # a row per product, a column per blended product
        columns = {blended: column for column, blended in enumerate(near.blended)}
        for row, product_id in enumerate(product_ids):
            if (own := columns.get(product_id)) is not None:
                shares[row, own] = -np.inf  # never its own reason
        best = shares.argmax(axis=1)
        return {
            product_id: near.blended[column]
            for product_id, column, has_vector, row in zip(
                product_ids, best, np.any(matrix, axis=1).tolist(), shares, strict=True
            )
            if has_vector and np.isfinite(row[column])
        }

    async def nearest_ids(
        self, version: int, vector: np.ndarray[Any, Any], k: int, filters: Filters
    ) -> list[Neighbour]:
        return await self.index.knn_ids(vector, k, filters, self.index.name(version))

    async def search(
        self, query: str, terms: Sequence[str], semantic: bool, k: int, filters: Filters
    ) -> tuple[int, EmbeddingModel, SearchSides]:
        """BM25 hits for the terms (none: no BM25) and, if `semantic`, the query's nearest, in
        the live index; with the live version and its model."""

        async def sides(version: int) -> tuple[EmbeddingModel, SearchSides]:
            model = await self.model(version)
            vector = self.query_vector(version, model, query) if semantic else None
            return model, await self.index.search(
                version,
                terms,
                vector if vector is not None and np.any(vector) else None,  # no known term
                k,
                filters,
                state_key=self.store.state_key,
            )

        found = await self._at_live(sides)
        if found is None:
            raise ModelNotReadyError("no embedding model yet: add products first")
        version, (model, searched) = found
        return version, model, searched

    async def spellcheck(self, version: int, terms: Sequence[str]) -> dict[str, str]:
        return await self.index.spellcheck(terms, self.index.name(version))

    async def complete(self, version: int, terms: Sequence[str], k: int) -> list[tuple[str, str]]:
        return await self.index.complete(terms, k, self.index.name(version))
