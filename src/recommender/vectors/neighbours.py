"""Each process's cache of products' nearest products, patched by each vector change it reaches.

A list of a product's `depth` nearest can change after product X's vector changes only if X was
in it or now belongs in it: the cosine of X's old or new vector with the product's reaches the
list's last score. So every cached list keeps its product's vector and that score, and one matrix
product finds the lists a change reaches. Those it enters or moves within are patched in place:
X takes its place by its new cosine and the last falls off, which is what the index would now
answer. Only a list that X leaves is dropped, as its next nearest is unknown, and so is one where
X lands within float noise of the last score. A list shorter than its depth holds everything
there is, so any new vector joins it and any removal just leaves it.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recommender.vectors.index import VectorChange
from recommender.vectors.model import DIMS

# RediSearch computes the cosine apart from us, in float32: a change within this of a list's last
# score drops the list, so that float noise can only cost a query, never keep a stale list.
_MARGIN = 1e-4
_FIRST_ROWS = 1024
Vector = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True, slots=True)
class NeighbourList:
    version: int  # the model version whose index gave the list
    depth: int  # how many were asked for: a shorter list is all there is
    embedded: bool  # False: the product has no vector (yet), so no neighbours either
    # Plain tuples of strings and floats, which the garbage collector stops tracking: a full
    # cache as tuples of Neighbour was a million tracked objects, each full collection walking them.
    ids: tuple[str, ...]
    scores: tuple[float, ...]


class NeighbourCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._lists: list[NeighbourList | None] = []  # by slot
        self._owners: list[str | None] = []  # by slot
        self._free: list[int] = []
        self._vectors: Vector = np.zeros((0, DIMS), dtype=np.float32)
        self._floors = np.zeros(0, dtype=np.float32)
        self._changes = 0  # changes applied (and clears): a list computed across one is not kept

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def changes_applied(self) -> int:
        return self._changes

    def get(self, product_id: str, depth: int) -> NeighbourList | None:
        slot = self._slots.get(product_id)
        if slot is None:
            return None
        found = self._lists[slot]
        if found is None or found.depth < depth:
            return None
        self._slots.move_to_end(product_id)
        return found

    def put(
        self, product_id: str, vector: Vector | None, found: NeighbourList, computed_at: int
    ) -> None:
        """Keep a list computed when `changes_applied` was `computed_at`, unless a change came
        since: it may predate that change, which was applied to the lists already kept."""
        if computed_at != self._changes or self.capacity == 0:
            return
        self._drop(product_id)
        while len(self._slots) >= self.capacity:
            self._drop(next(iter(self._slots)))
        slot = self._take_slot()
        self._slots[product_id] = slot
        self._lists[slot] = found
        self._owners[slot] = product_id
        if vector is not None and found.embedded and np.any(vector):
            self._vectors[slot] = vector
            self._floors[slot] = _floor(found)
        # else no vector, so no neighbours: only the product's own change can alter that

    def vectors(self, version: int, product_ids: Sequence[str]) -> tuple[Vector, list[int]]:
        """The products' vectors in that version as rows (zeros for one with no vector), from
        the lists kept; and the rows of the products with no list of that version kept."""
        matrix = np.zeros((len(product_ids), DIMS), dtype=np.float32)
        missing = []
        for row, product_id in enumerate(product_ids):
            slot = self._slots.get(product_id)
            found = None if slot is None else self._lists[slot]
            if found is None or found.version != version:
                missing.append(row)
            else:
                matrix[row] = self._vectors[slot]
        return matrix, missing

    def apply(self, changes: Sequence[VectorChange]) -> None:
        """Patch the lists these changes reach, in order; drop those a change leaves unknown,
        and the changed products' own lists."""
        self._changes += 1
        for change in changes:
            self._drop(change.product_id)
        vectors = [v for c in changes for v in (c.old, c.new) if v is not None]
        if not vectors or not self._slots:
            return
        rows = len(self._lists)
        cosines = iter((self._vectors[:rows] @ np.stack(vectors).T).T)
        for change in changes:
            old = next(cosines) if change.old is not None else None
            new = next(cosines) if change.new is not None else None
            reach = new if old is None else old if new is None else np.maximum(old, new)
            if reach is None:  # no vector before or after: in no list
                continue
            for slot in np.flatnonzero(reach >= self._floors[:rows]):
                self._patch(int(slot), change.product_id, None if new is None else float(new[slot]))

    def _patch(self, slot: int, product_id: str, score: float | None) -> None:
        """Apply one product's new cosine (None: no vector now) to the list in `slot`."""
        found, owner = self._lists[slot], self._owners[slot]
        if found is None or owner is None:
            return
        pairs = [(other, s) for other, s in zip(found.ids, found.scores, strict=True)
                 if other != product_id]  # fmt: skip
        was_listed = len(pairs) < len(found.ids)
        if len(found.ids) >= found.depth:  # full: the nearest past its last one are unknown
            last = found.scores[-1]
            if score is None or score < last - _MARGIN:
                if was_listed:  # it left: the next nearest would take its place
                    self._drop(owner)
                return
            if score < last + _MARGIN:  # in or out within float noise: ask the index
                self._drop(owner)
                return
        if score is not None:
            pairs.append((product_id, score))
            pairs.sort(key=lambda pair: -pair[1])
        elif not was_listed:
            return
        del pairs[found.depth :]
        patched = NeighbourList(
            found.version, found.depth, True, tuple(p for p, _ in pairs), tuple(s for _, s in pairs)
        )
        self._lists[slot] = patched
        self._floors[slot] = _floor(patched)

    def clear(self) -> None:
        self._changes += 1
        for product_id in list(self._slots):
            self._drop(product_id)

    def _drop(self, product_id: str) -> None:
        slot = self._slots.pop(product_id, None)
        if slot is None:
            return
        self._lists[slot] = None
        self._owners[slot] = None
        self._vectors[slot] = 0.0
        self._floors[slot] = np.inf  # an empty slot is reached by nothing
        self._free.append(slot)

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        slot = len(self._lists)
        if slot == len(self._floors):  # grow by doubling, up to the capacity
            size = min(max(_FIRST_ROWS, 2 * slot), self.capacity)
            vectors = np.zeros((size, DIMS), dtype=np.float32)
            vectors[:slot] = self._vectors
            floors = np.full(size, np.inf, dtype=np.float32)
            floors[:slot] = self._floors
            self._vectors, self._floors = vectors, floors
        self._lists.append(None)
        self._owners.append(None)
        return slot


def _floor(found: NeighbourList) -> float:
    """The least cosine by which a change can reach a list."""
    if len(found.ids) < found.depth:
        return -np.inf  # all there is: any new vector joins it
    return found.scores[-1] - _MARGIN  # full: only one as near as its last enters or leaves
