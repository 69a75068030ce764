"""Product CRUD. Every write stores the product and emits its catalog event atomically.

The lists (similar, for you, ...) read their products through each process's cache of the
stored JSON, which follows the catalog's change log (platform.changelog): another process's
write reaches it within `catalog.change_check_seconds`, this process's own at once. Writes and
the consumers read Redis.
"""

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from recommender.catalog.repository import CatalogRepository, Write, decode
from recommender.catalog.schemas import (
    BatchItemResult,
    BatchResult,
    Product,
    ProductCreate,
    ProductFields,
    ProductPage,
    ProductUpdate,
    normalise_category,
)
from recommender.config import CatalogSettings
from recommender.platform.cache import RecentCache
from recommender.platform.changelog import ChangeFollower
from recommender.platform.errors import ConflictError, InvalidInputError, NotFoundError

# Concurrent writers to one product retry their read-modify-write; this many tries is plenty.
_MAX_ATTEMPTS = 20

Change = Callable[[Product | None], Product | None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stored(product_id: str, fields: ProductFields, previous: Product | None) -> Product:
    now = _now()
    return Product(
        id=product_id,
        **{name: getattr(fields, name) for name in ProductFields.__struct_fields__},
        created_at=previous.created_at if previous else now,
        updated_at=now,
        version=previous.version + 1 if previous else 1,
    )


class CatalogService:
    def __init__(self, repository: CatalogRepository, settings: CatalogSettings) -> None:
        self.repository = repository
        self._cached: RecentCache[str, bytes] = RecentCache(settings.product_cache_size)
        self._forgotten = 0  # changes applied: a read that spans one is not kept
        self._changes = ChangeFollower(
            repository.client, repository.epoch_key, repository.changes_key,
            period=settings.change_check_seconds, apply=self._forget_logged,
            clear=self._forget_all,
        )  # fmt: skip

    @property
    def stream(self) -> str:
        """The catalog events stream: {op, id, version} per write."""
        return self.repository.stream

    def product_key(self, product_id: str) -> str:
        """The product's key: the vectors module's guarded write reads its version atomically."""
        return self.repository.product_key(product_id)

    async def get(self, product_id: str, *, cached: bool = False) -> Product:
        """The product; `cached`: from this process's cache (see `get_many`)."""
        (product,) = await self.get_many([product_id], cached=cached)
        if product is None:
            raise NotFoundError(f"product '{product_id}' does not exist")
        return product

    async def count(self) -> int:
        return await self.repository.count()

    async def list_ids(self, after: str | None, limit: int) -> list[str]:
        """Every product's id in order, a page at a time: up to `limit` after `after`."""
        return await self.repository.list_ids("", after, limit)

    async def get_many(self, ids: Sequence[str], *, cached: bool = False) -> list[Product | None]:
        """The products (None for an unknown id); `cached`: from this process's cache."""
        if not cached or self._cached.max_entries == 0:
            return await self.repository.get_many(ids)
        await self._changes.follow()
        stored = {product_id: self._cached.get(product_id) for product_id in ids}
        missing = [product_id for product_id, data in stored.items() if data is None]
        if missing:
            read_at = self._forgotten
            stored.update(zip(missing, await self.repository.read_many(missing), strict=True))
            if read_at == self._forgotten:  # no change came meanwhile: what was read holds
                for product_id in missing:
                    if (data := stored[product_id]) is not None:
                        self._cached.put(product_id, data)
        return [decode(data) if (data := stored[i]) is not None else None for i in ids]

    def _forget(self, ids: Sequence[str]) -> None:
        self._forgotten += 1
        for product_id in ids:
            self._cached.discard(product_id)

    def _forget_logged(self, entries: Sequence[Mapping[bytes, bytes]]) -> bool:
        self._forget([entry[b"product"].decode() for entry in entries])
        return True

    def _forget_all(self) -> None:
        self._forgotten += 1
        self._cached.clear()

    async def create(self, data: ProductCreate) -> Product:
        def create(previous: Product | None) -> Product:
            if previous is not None:
                raise ConflictError(f"product '{data.id}' already exists")
            return _stored(data.id, data, None)

        product, _ = await self._apply(data.id, create)
        return _present(product)

    async def replace(self, product_id: str, data: ProductFields) -> tuple[Product, bool]:
        """Create or replace; True when it was created."""
        product, created = await self._apply(
            product_id, lambda previous: _stored(product_id, data, previous)
        )
        return _present(product), created

    async def update(self, product_id: str, changes: ProductUpdate) -> Product:
        def update(previous: Product | None) -> Product:
            if previous is None:
                raise NotFoundError(f"product '{product_id}' does not exist")
            merged = msgspec.structs.asdict(previous)
            merged.update(
                {
                    name: value
                    for name in ProductUpdate.__struct_fields__
                    if (value := getattr(changes, name)) is not msgspec.UNSET
                }
            )
            try:
                fields = msgspec.convert(
                    {name: merged[name] for name in ProductFields.__struct_fields__},
                    ProductFields,
                )
            except msgspec.ValidationError as error:
                raise InvalidInputError(str(error)) from error
            return _stored(product_id, fields, previous)

        product, _ = await self._apply(product_id, update)
        return _present(product)

    async def delete(self, product_id: str) -> None:
        def delete(previous: Product | None) -> None:
            if previous is None:
                raise NotFoundError(f"product '{product_id}' does not exist")

        await self._apply(product_id, delete)

    async def list(self, category: str, cursor: str | None, limit: int) -> ProductPage:
        try:
            category = normalise_category(category)
        except ValueError as error:
            raise InvalidInputError(str(error)) from error
        ids = await self.repository.list_ids(category, cursor, limit + 1)
        page = ids[:limit]
        products = [p for p in await self.repository.get_many(page) if p is not None]
        return ProductPage(items=products, next_cursor=page[-1] if len(ids) > limit else None)

    async def upsert_batch(self, items: Sequence[Any]) -> BatchResult:
        """Validate each item on its own; store the valid ones; a result per item, in order."""
        results: list[BatchItemResult] = []
        valid: dict[str, tuple[int, ProductCreate]] = {}
        for index, raw in enumerate(items):
            try:
                data = msgspec.convert(raw, ProductCreate)
            except msgspec.ValidationError as error:
                results.append(BatchItemResult(index=index, status="rejected", error=str(error)))
                continue
            if data.id in valid:
                results.append(
                    BatchItemResult(
                        index=index,
                        id=data.id,
                        status="rejected",
                        error=f"id '{data.id}' appears more than once in this batch",
                    )
                )
                continue
            valid[data.id] = (index, data)
        stored = await self._apply_many(
            {product_id: _replace_with(data) for product_id, (_, data) in valid.items()}
        )
        for product_id, (index, _) in valid.items():
            product, created = stored[product_id]
            results.append(
                BatchItemResult(
                    index=index,
                    id=product_id,
                    status="created" if created else "updated",
                    version=_present(product).version,
                )
            )
        results.sort(key=lambda result: result.index)
        counts = dict.fromkeys(("created", "updated", "rejected"), 0)
        for result in results:
            counts[result.status] += 1
        return BatchResult(items=results, **counts)

    async def _apply(self, product_id: str, change: Change) -> tuple[Product | None, bool]:
        return (await self._apply_many({product_id: change}))[product_id]

    async def _apply_many(
        self, changes: dict[str, Change]
    ) -> dict[str, tuple[Product | None, bool]]:
        """Optimistic read-modify-write: re-read and retry the ids another writer changed."""
        outcome: dict[str, tuple[Product | None, bool]] = {}
        todo = dict(changes)
        for attempt in range(_MAX_ATTEMPTS):
            ids = list(todo)
            previous = dict(zip(ids, await self.repository.get_many(ids), strict=True))
            writes = []
            for product_id, change in todo.items():
                before = previous[product_id]
                after = change(before)
                outcome[product_id] = (after, before is None)
                writes.append(
                    Write(
                        id=product_id,
                        expected=before.version if before else 0,
                        product=after,
                        old_category=before.category if before else "",
                    )
                )
            applied = await self.repository.write_many(writes)
            self._forget([write.id for write in writes])  # this process sees its writes at once
            todo = {w.id: todo[w.id] for w, ok in zip(writes, applied, strict=True) if not ok}
            if not todo:
                return outcome
            await asyncio.sleep(0.001 * (attempt + 1))
        raise ConflictError(f"too many concurrent writes to: {', '.join(sorted(todo))}")


def _replace_with(data: ProductCreate) -> Change:
    return lambda previous: _stored(data.id, data, previous)


def _present(product: Product | None) -> Product:
    if product is None:  # only a delete yields None, and deletes do not come here
        raise TypeError("a write that stores a product returned none")
    return product
