"""Each process's copy of every live vector, for a catalog small enough to rank whole.

Ranking a few thousand vectors is one matrix-vector product in this process, and exact. It is
bound by memory: on the 2-core machine 0.65 ms at 3.6k products with the matrix out of the CPU's
caches (0.13 ms in them), 1.45 ms at 10k (0.9 ms). The HNSW KNN 300 that "for you" asks instead
costs Redis about 1.3 ms at 3.6k (benchmarks/for_you_cost), and this process the parsing of its
300 hits. So up to about 10k the copy costs at most as much CPU, and none of the one Redis every
process shares.
The copy is loaded in the background on first use (callers query the index meanwhile) and then
follows the vector change log as the neighbour cache does: each change is applied to it, and a
swap or a gap in the log drops it, for the next caller to load again.
"""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import structlog
from redis.exceptions import RedisError

from recommender.vectors.index import NotLiveError, VectorChange
from recommender.vectors.model import DIMS

log = structlog.get_logger()

Vector = np.ndarray[Any, np.dtype[np.float32]]
# After a load that failed or found nothing to hold (no model yet, too many products), callers
# query the index this long before a load is tried again.
RETRY_SECONDS = 5.0


class VectorTable:
    """One model version's vectors as rows of one matrix, each product's found by its id."""

    def __init__(self, version: int, ids: Sequence[str], vectors: Vector) -> None:
        self.version = version
        self._ids: list[str | None] = list(ids)  # by row; None: a free row, all zeros
        self._rows = {product_id: row for row, product_id in enumerate(ids)}
        self._matrix = np.array(vectors, dtype=np.float32).reshape(len(ids), DIMS)
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._rows)

    def apply(self, changes: Sequence[VectorChange]) -> None:
        for change in changes:
            row = self._rows.get(change.product_id)
            if change.new is None:
                if row is not None:
                    del self._rows[change.product_id]
                    self._ids[row] = None
                    self._matrix[row] = 0.0
                    self._free.append(row)
                continue
            if row is None:
                row = self._take_row()
                self._rows[change.product_id] = row
                self._ids[row] = change.product_id
            self._matrix[row] = change.new

    def rows(self, product_ids: Sequence[str]) -> Vector:
        """The products' vectors as rows (zeros for one with no vector)."""
        found = [(at, row) for at, product_id in enumerate(product_ids)
                 if (row := self._rows.get(product_id)) is not None]  # fmt: skip
        matrix = np.zeros((len(product_ids), DIMS), dtype=np.float32)
        if found:
            at, rows = zip(*found, strict=True)
            matrix[list(at)] = self._matrix[list(rows)]
        return matrix

    def nearest(self, query: Vector, k: int) -> list[tuple[str, float]]:
        """The k products of highest cosine with a unit `query`, highest first."""
        k = min(k, len(self._rows))
        if k <= 0:
            return []
        used = len(self._ids)
        cosines = self._matrix[:used] @ query
        if self._free:
            cosines[self._free] = -np.inf
        top = np.argpartition(-cosines, k - 1)[:k]
        top = top[np.argsort(-cosines[top], kind="stable")]
        ids = self._ids
        scores = cosines[top].tolist()
        return [(ids[row] or "", score) for row, score in zip(top.tolist(), scores, strict=True)]

    def _take_row(self) -> int:
        if self._free:
            return self._free.pop()
        row = len(self._ids)
        if row == len(self._matrix):  # grow by half: a copy is a few MB, and held per process
            grown = np.zeros((row + row // 2 + 64, DIMS), dtype=np.float32)
            grown[:row] = self._matrix
            self._matrix = grown
        self._ids.append(None)
        return row


class LiveVectors:
    """The live version's `VectorTable`, loaded by `load` (None: nothing to hold) and kept as
    current as the change log this process follows."""

    def __init__(self, load: Callable[[], Awaitable[VectorTable | None]]) -> None:
        self._load = load
        self._table: VectorTable | None = None
        self._loading: asyncio.Task[None] | None = None
        self._pending: list[VectorChange] = []  # applied while loading, for the loaded table
        self._next_load = -math.inf

    def current(self) -> VectorTable | None:
        """The table, or None (query the index) while it loads, and then a load starts."""
        if self._table is None and self._loading is None and time.monotonic() >= self._next_load:
            self._loading = asyncio.create_task(self._load_table())
        return self._table

    async def loaded(self) -> VectorTable | None:
        """The table once a load begun now (or before) has ended (None: it held nothing, or
        was cleared meanwhile)."""
        self.current()
        while (loading := self._loading) is not None:
            await asyncio.wait({loading})
        return self._table

    def apply(self, changes: Sequence[VectorChange]) -> None:
        if self._table is not None:
            self._table.apply(changes)
        elif self._loading is not None:  # the load may have read a product before its change
            self._pending += changes

    def clear(self) -> None:
        """Drop the table, and a load in flight: it may hold vectors of before the swap or gap."""
        if self._loading is not None:
            self._loading.cancel()
            self._loading = None
        self._table = None
        self._pending = []
        self._next_load = -math.inf

    async def stop(self) -> None:
        if (loading := self._loading) is not None:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)

    async def _load_table(self) -> None:
        started = time.monotonic()
        loading = asyncio.current_task()
        table = None
        try:
            table = await self._load()
        except (RedisError, NotLiveError) as error:  # the index answers; a later caller retries
            log.warning("live_vectors_load_failed", error=repr(error))
        finally:
            if self._loading is loading:  # else cleared meanwhile: what it read may predate that
                self._loading = None
                self._install(table, time.monotonic() - started)

    def _install(self, table: VectorTable | None, seconds: float) -> None:
        pending, self._pending = self._pending, []
        if table is None:
            self._next_load = time.monotonic() + RETRY_SECONDS
            return
        table.apply(pending)
        self._table = table
        log.info("live_vectors_loaded", version=table.version, products=len(table),
                 seconds=round(seconds, 3))  # fmt: skip
